"""File formats: atomic writes, images, type info, instance exports, slides."""
