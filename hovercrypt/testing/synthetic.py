"""Synthetic crypt layouts for unit tests, oracle tests and benchmarks.

Drawn ellipses stand in for crypts: their exact instance map is known, so
every stage that should reproduce it (post-processing, stitching, counting)
can be checked exactly, independent of any training.
"""

from __future__ import annotations

import cv2
import numpy as np


def random_ellipses(
    shape: tuple[int, int],
    n: int,
    radius_range: tuple[float, float] = (20, 80),
    seed: int = 0,
    min_gap: float = 2.0,
    max_tries: int = 200,
    allow_touching: bool = False,
) -> np.ndarray:
    """Place up to ``n`` non-overlapping filled ellipses; returns an int32 instance map (ids 1..k).

    Ellipses are separated by at least ``min_gap`` px unless ``allow_touching``,
    in which case neighbours may share an edge (as touching crypts do).
    """
    h, w = shape
    rng = np.random.default_rng(seed)
    inst = np.zeros(shape, np.int32)
    gap = 0 if allow_touching else int(np.ceil(min_gap))
    occupied = np.zeros(shape, bool)  # instances grown by ``gap``
    kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * gap + 1, 2 * gap + 1)) if gap else None
    k = 0
    for _ in range(n):
        for _try in range(max_tries):
            ra, rb = rng.uniform(*radius_range, size=2)
            theta = rng.uniform(0, np.pi)
            cx, cy = rng.uniform(0, w), rng.uniform(0, h)
            mask, (y0, x0) = ellipse_mask(cx, cy, ra, rb, theta, shape)
            if mask is None:
                continue
            ys, xs = slice(y0, y0 + mask.shape[0]), slice(x0, x0 + mask.shape[1])
            if np.any(occupied[ys, xs] & mask):
                continue
            k += 1
            inst[ys, xs][mask] = k
            if kernel is None:
                occupied[ys, xs] |= mask
            else:
                ys2 = slice(max(0, y0 - gap), min(h, y0 + mask.shape[0] + gap))
                xs2 = slice(max(0, x0 - gap), min(w, x0 + mask.shape[1] + gap))
                grown = cv2.dilate((inst[ys2, xs2] == k).astype(np.uint8), kernel) > 0
                occupied[ys2, xs2] |= grown
            break
    return inst


def ellipse_mask(
    cx: float, cy: float, ra: float, rb: float, theta: float, shape: tuple[int, int]
) -> tuple[np.ndarray | None, tuple[int, int]]:
    """Boolean mask of an ellipse clipped to ``shape``, with its (y0, x0) offset."""
    h, w = shape
    r = max(ra, rb)
    x0, x1 = max(0, int(np.floor(cx - r))), min(w, int(np.ceil(cx + r)) + 1)
    y0, y1 = max(0, int(np.floor(cy - r))), min(h, int(np.ceil(cy + r)) + 1)
    if x1 <= x0 or y1 <= y0:
        return None, (0, 0)
    yy, xx = np.mgrid[y0:y1, x0:x1]
    dx, dy = xx - cx, yy - cy
    c, s = np.cos(theta), np.sin(theta)
    u, v = dx * c + dy * s, -dx * s + dy * c
    mask = (u / ra) ** 2 + (v / rb) ** 2 <= 1.0
    if not mask.any():
        return None, (0, 0)
    return mask, (y0, x0)


def render_he(inst: np.ndarray, seed: int = 0) -> np.ndarray:
    """A crude H&E-like RGB image for an instance map: pink stroma, purple crypt rims, pale lumen."""
    from scipy import ndimage

    rng = np.random.default_rng(seed)
    h, w = inst.shape
    img = np.empty((h, w, 3), np.float32)
    img[:] = (236, 190, 215)
    fg = inst > 0
    edt = ndimage.distance_transform_edt(fg)
    img[fg] = (150, 90, 170)
    img[fg & (edt > 6)] = (245, 235, 245)
    img += rng.normal(0, 8, size=img.shape).astype(np.float32)
    return np.clip(img, 0, 255).astype(np.uint8)


def noisy_maps(inst: np.ndarray, seed: int = 0, noise: float = 0.05) -> tuple[np.ndarray, np.ndarray]:
    """Network-like NP probability and HV maps for ``inst`` with Gaussian noise added."""
    from hovercrypt.data.targets import hv_maps

    rng = np.random.default_rng(seed)
    np_prob = (inst > 0).astype(np.float32)
    np_prob = np.clip(np_prob + rng.normal(0, noise, inst.shape).astype(np.float32), 0, 1)
    hv = hv_maps(inst)
    hv = np.clip(hv + rng.normal(0, noise, hv.shape).astype(np.float32), -1, 1)
    return np_prob, hv
