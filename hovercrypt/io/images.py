"""Reading images and label maps with clear errors for bad input.

Histology images arrive as 8-bit RGB, but also as grey, RGBA, palette or
16-bit files. All are converted to uint8 RGB here, once, so the rest of the
pipeline sees a single format. Label maps must be integer: a label map saved
as JPEG or float is a common mistake and gets an error naming the file.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from hovercrypt.errors import InputError
from hovercrypt.io.atomic import atomic_write

TIFF_EXTS = (".tif", ".tiff")
IMAGE_EXTS = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp")


def _read_array(path: Path, keep_palette: bool = False) -> np.ndarray:
    """Pixels of ``path``. ``keep_palette``: an indexed ("P") PNG gives its indices (label maps are
    often saved that way), not the colours they stand for (what an image needs)."""
    if not path.is_file():
        raise InputError(f"{path}: file not found")
    try:
        if path.suffix.lower() in TIFF_EXTS:
            import tifffile

            return np.asarray(tifffile.imread(path))
        with Image.open(path) as im:
            if im.mode == "P" and not keep_palette:
                im = im.convert("RGBA") if "transparency" in im.info else im.convert("RGB")
            return np.asarray(im)
    except InputError:
        raise
    except Exception as e:  # PIL/tifffile raise many types for corrupt files
        raise InputError(f"{path}: cannot be read as an image ({type(e).__name__}: {e})") from e


def to_rgb_uint8(arr: np.ndarray, source: str = "<array>") -> np.ndarray:
    """Convert grey / grey+alpha / RGB / RGBA, 8- or 16-bit or float, to uint8 RGB."""
    if arr.ndim == 3 and arr.shape[0] in (3, 4) and arr.shape[2] not in (3, 4):
        arr = np.moveaxis(arr, 0, -1)  # planar TIFF
    if arr.ndim == 2:
        arr = arr[..., None]
    if arr.ndim != 3 or arr.shape[2] not in (1, 2, 3, 4):
        raise InputError(f"{source}: expected a 2-D grey or RGB(A) image, got shape {arr.shape}")
    if arr.dtype == np.uint8:
        pass
    elif arr.dtype == np.uint16:
        arr = (arr.astype(np.uint32) * 255 + 32767) // 65535
    elif arr.dtype == bool:
        arr = arr.astype(np.uint8) * 255
    elif np.issubdtype(arr.dtype, np.floating):
        hi = 1.0 if float(np.nanmax(arr)) <= 1.0 else 255.0
        arr = np.clip(np.nan_to_num(arr) / hi * 255.0 + 0.5, 0, 255)
    else:
        raise InputError(f"{source}: unsupported image dtype {arr.dtype}")
    arr = arr.astype(np.uint8)
    c = arr.shape[2]
    if c in (1, 2):
        arr = np.repeat(arr[..., :1], 3, axis=2)
    elif c == 4:
        # composite over white: transparent background is glass, not black tissue
        alpha = arr[..., 3:4].astype(np.float32) / 255.0
        arr = (arr[..., :3] * alpha + 255.0 * (1.0 - alpha) + 0.5).astype(np.uint8)
    return np.ascontiguousarray(arr[..., :3])


def read_rgb(path: str | Path) -> np.ndarray:
    """Read an image file as uint8 RGB (H, W, 3)."""
    path = Path(path)
    return to_rgb_uint8(_read_array(path), str(path))


def read_label(path: str | Path) -> np.ndarray:
    """Read an integer label map (instance ids or type ids) as int32 (H, W)."""
    path = Path(path)
    arr = _read_array(path, keep_palette=True)
    if arr.ndim == 3 and arr.shape[2] == 1:
        arr = arr[..., 0]
    if arr.ndim != 2:
        raise InputError(
            f"{path}: a label map must be single-channel integer ids, got shape {arr.shape} "
            "(an RGB colour-coded class mask is read for training with data.type_source='color')"
        )
    return as_label(arr, str(path))


def as_label(arr: np.ndarray, source: str) -> np.ndarray:
    """Check that ``arr`` holds non-negative integer labels and return it as int32."""
    if arr.dtype == bool:
        return arr.astype(np.int32)
    if np.issubdtype(arr.dtype, np.floating):
        if not np.all(np.isfinite(arr)) or not np.all(arr == np.round(arr)):
            raise InputError(f"{source}: label map is not integer (dtype {arr.dtype} with fractional values)")
    elif not np.issubdtype(arr.dtype, np.integer):
        raise InputError(f"{source}: label map is not integer (dtype {arr.dtype})")
    if arr.size and arr.min() < 0:
        raise InputError(f"{source}: label map has negative values")
    if arr.size and arr.max() > np.iinfo(np.int32).max:
        raise InputError(f"{source}: label ids exceed int32")
    return arr.astype(np.int32)


def write_png(path: str | Path, arr: np.ndarray) -> None:
    """Write a uint8 (or uint16 label) image as PNG, atomically."""
    with atomic_write(path, "wb") as f:
        Image.fromarray(arr).save(f, format="PNG")
