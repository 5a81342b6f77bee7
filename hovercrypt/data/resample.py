"""Resampling between a source resolution and the processing resolution (µm/px).

Images use area averaging when shrinking (no aliasing of fine texture) and
bilinear interpolation when enlarging. Label maps use nearest-neighbour
sampling of pixel centres, so every output value is an input value: instance
ids survive and no new ids (or type ids) are ever invented. Inference reuses
these functions to map results back to the input resolution.
"""

from __future__ import annotations

import cv2
import numpy as np


def scale_shape(hw: tuple[int, int], src_mpp: float, dst_mpp: float) -> tuple[int, int]:
    """Shape (H, W) of an image of shape ``hw`` at ``src_mpp`` when resampled to ``dst_mpp``."""
    if src_mpp <= 0 or dst_mpp <= 0:
        raise ValueError(f"resolutions must be > 0, got {src_mpp} -> {dst_mpp}")
    f = src_mpp / dst_mpp
    h, w = int(hw[0]), int(hw[1])
    return max(1, int(round(h * f))), max(1, int(round(w * f)))


def resize_image(img: np.ndarray, out_hw: tuple[int, int]) -> np.ndarray:
    """Resize an (H, W) or (H, W, C) image or float map to ``out_hw``, keeping dtype."""
    h, w = img.shape[:2]
    oh, ow = int(out_hw[0]), int(out_hw[1])
    if (oh, ow) == (h, w):
        return img.copy()
    if oh < 1 or ow < 1:
        raise ValueError(f"output shape must be positive, got {out_hw}")
    interp = cv2.INTER_AREA if oh <= h and ow <= w else cv2.INTER_LINEAR
    src = img
    if img.dtype == np.bool_:
        raise ValueError("resize_image does not take boolean masks; use resize_labels")
    if img.dtype not in (np.uint8, np.uint16, np.int16, np.float32, np.float64):
        src = img.astype(np.float32)
    c = img.shape[2] if img.ndim == 3 else 0
    if c > 4:  # cv2 handles at most 4 channels for some interpolations: do it in chunks
        parts = [resize_image(np.ascontiguousarray(img[..., i : i + 4]), (oh, ow)) for i in range(0, c, 4)]
        return np.concatenate(parts, axis=2)
    out = cv2.resize(np.ascontiguousarray(src), (ow, oh), interpolation=interp)
    if img.ndim == 3 and out.ndim == 2:  # cv2 drops a single channel axis
        out = out[..., None]
    if out.dtype != img.dtype and not np.issubdtype(img.dtype, np.floating):
        out = np.rint(out)  # e.g. int32 resampled as float32: round, do not truncate
    return out.astype(img.dtype, copy=False)


def nearest_index(n_in: int, n_out: int) -> np.ndarray:
    """Source index of each output pixel centre (nearest neighbour, centre-aligned)."""
    idx = np.floor((np.arange(n_out) + 0.5) * (n_in / n_out)).astype(np.int64)
    return np.clip(idx, 0, n_in - 1)


def resize_labels(lbl: np.ndarray, out_hw: tuple[int, int]) -> np.ndarray:
    """Nearest-neighbour resize of an (H, W) or (H, W, C) label map; output values ⊆ input values."""
    h, w = lbl.shape[:2]
    oh, ow = int(out_hw[0]), int(out_hw[1])
    if (oh, ow) == (h, w):
        return lbl.copy()
    if oh < 1 or ow < 1:
        raise ValueError(f"output shape must be positive, got {out_hw}")
    return lbl[nearest_index(h, oh)][:, nearest_index(w, ow)]


def resample_pair(
    image: np.ndarray, labels: list[np.ndarray | None], src_mpp: float, dst_mpp: float
) -> tuple[np.ndarray, list[np.ndarray | None]]:
    """Resample an image and its label maps from ``src_mpp`` to ``dst_mpp`` (one shared shape)."""
    out_hw = scale_shape(image.shape[:2], src_mpp, dst_mpp)
    img = resize_image(image, out_hw)
    return img, [None if lb is None else resize_labels(lb, out_hw) for lb in labels]
