"""Reinhard stain normalisation: match an image's colour statistics to the training stain.

The model is trained with stain augmentation, which is the main defence against
another lab's staining; normalising the input to the training data's colour
statistics (Reinhard et al. 2001: per-channel mean and standard deviation in
CIE L*a*b*, over tissue pixels) is the classic complement. It is an option,
measured by ``benchmarks/accuracy.py --stain_norm=reinhard``.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np


def _tissue(image: np.ndarray, white: int = 220) -> np.ndarray:
    """Pixels that are not blank glass (statistics of the background would dominate otherwise)."""
    m = ~np.all(image >= white, axis=2)
    return m if m.any() else np.ones(image.shape[:2], bool)


def lab_stats(images: Iterable[np.ndarray]) -> np.ndarray:
    """(2, 3) mean and standard deviation of L*a*b* over the tissue pixels of ``images``."""
    from skimage.color import rgb2lab

    parts = [rgb2lab(im)[_tissue(im)] for im in images]
    if not parts:
        raise ValueError("lab_stats needs at least one image")
    lab = np.concatenate(parts)
    return np.stack([lab.mean(0), lab.std(0) + 1e-6])


def reinhard(image: np.ndarray, target: np.ndarray) -> np.ndarray:
    """``image`` (uint8 RGB) with its tissue L*a*b* statistics moved to ``target`` ((2, 3))."""
    from skimage.color import lab2rgb, rgb2lab

    lab = rgb2lab(image)
    src = lab_stats([image])
    out = (lab - src[0]) / src[1] * target[1] + target[0]
    rgb = lab2rgb(out)
    return np.clip(np.rint(rgb * 255.0), 0, 255).astype(np.uint8)
