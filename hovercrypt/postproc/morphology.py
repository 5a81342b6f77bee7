"""Binary-mask helpers built on OpenCV connected components (fast, single pass each).

``scipy.ndimage.binary_fill_holes`` and ``skimage.morphology.remove_small_objects``
are the slow parts of the classic recipe besides the watershed. Here labelling
is one ``cv2.connectedComponents`` call plus a compiled area scan, and the
removal itself is a lookup table applied inside a later pass; hole filling is
one scanline flood fill.
Connectivity is 4 everywhere, matching scipy's default structure.
"""

from __future__ import annotations

import cv2
import numpy as np
from numba import njit


@njit(cache=True)
def _areas(labels, n):  # pragma: no cover - compiled
    """Pixel count of every label 0..n-1 in one scan.

    Four interleaved histograms break the store-to-load dependency of runs of
    equal labels, and runs of background are skipped (label 0 is counted as
    the remainder): about 2x faster than one plain histogram.
    """
    acc = np.zeros((n, 4), np.int64)
    flat = labels.ravel()
    m = flat.size
    for i in range(0, m - 3, 4):
        a, b, c, d = flat[i], flat[i + 1], flat[i + 2], flat[i + 3]
        if a | b | c | d:
            acc[a, 0] += 1
            acc[b, 1] += 1
            acc[c, 2] += 1
            acc[d, 3] += 1
    for i in range(m - m % 4, m):
        acc[flat[i], 0] += 1
    area = acc.sum(axis=1)
    area[0] = m - area[1:].sum()
    return area


def components(binary: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """4-connected components: (labels uint16 or int32, area per label); label 0 is the background.

    OpenCV's statistics pass costs more than the labelling itself, so the areas
    come from one compiled scan instead.
    """
    b = _as_u8(binary)
    try:  # 16-bit labels halve the memory traffic of every later pass; OpenCV refuses on overflow
        n, labels = cv2.connectedComponents(b, connectivity=4, ltype=cv2.CV_16U)
    except cv2.error:
        n, labels = cv2.connectedComponents(b, connectivity=4, ltype=cv2.CV_32S)
    return labels, _areas(labels, n)


def fill_holes(binary: np.ndarray) -> np.ndarray:
    """Fill background regions not 4-connected to the image border (like scipy's binary_fill_holes).

    Returns uint8 0/255.

    A scanline flood fill from a one-pixel frame reaches exactly the border-connected background.
    """
    b = _as_u8(binary, strict=True)
    return fill_holes_framed(cv2.copyMakeBorder(b, 1, 1, 1, 1, cv2.BORDER_CONSTANT, value=0))


def fill_holes_framed(framed: np.ndarray) -> np.ndarray:
    """:func:`fill_holes` for a 0/1 uint8 mask that already sits in a one-pixel zero frame.

    ``framed`` is overwritten; the result (uint8 0/255, frame removed) is a new array.
    """
    cv2.floodFill(framed, None, (0, 0), 2, flags=4)
    return cv2.compare(framed[1:-1, 1:-1], 2, cv2.CMP_NE)  # 0 / 255


def disk(radius: int) -> np.ndarray:
    """Elliptic structuring element of diameter ``2 * radius + 1``."""
    d = 2 * int(radius) + 1
    return cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (d, d))


def binary_open(binary: np.ndarray, radius: int) -> np.ndarray:
    """Morphological opening with a disk; removes thin bridges between markers."""
    b = _as_u8(binary)
    if radius <= 0:
        return b
    return cv2.morphologyEx(b, cv2.MORPH_OPEN, disk(radius))


def label_filtered(binary: np.ndarray, min_area: int) -> tuple[np.ndarray, np.ndarray, int]:
    """4-connected labels plus a lookup table that drops components below ``min_area``.

    Returns ``(labels, lut, k)`` where ``lut[label]`` is the new consecutive id
    (1..k) or 0. Applying the table is left to the caller, so it can be fused
    into the next pass over the image.
    """
    labels, areas = components(binary)
    keep = areas >= max(1, min_area)
    keep[0] = False
    lut = np.zeros(len(areas), np.int32)
    k = int(keep.sum())
    lut[keep] = np.arange(1, k + 1, dtype=np.int32)
    return labels, lut, k


def _as_u8(binary: np.ndarray, strict: bool = False) -> np.ndarray:
    """A contiguous uint8 view or copy of a mask, nonzero = set (bool views cost nothing).

    ``strict`` also forces the values to 0/1 (hole filling uses the value 2 as a mark).
    """
    b = np.asarray(binary)
    if b.dtype == bool:
        return np.ascontiguousarray(b).view(np.uint8)
    if b.dtype != np.uint8 or (strict and b.size and b.max() > 1):
        return (b != 0).view(np.uint8)
    return np.ascontiguousarray(b)
