"""Data layer: dataset readers, resampling, targets, patch extraction, augmentation."""
