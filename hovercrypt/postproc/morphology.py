"""Binary-mask helpers: run-length connected components, hole filling, opening.

``scipy.ndimage.binary_fill_holes`` and ``skimage.morphology.remove_small_objects``
are the slow parts of the classic recipe besides the watershed. Here labelling
is one compiled run-length pass that also yields the areas (and can threshold
a float map on the fly), and the removal itself is a lookup table applied
inside a later pass; hole filling is one OpenCV scanline flood fill.
Connectivity is 4 everywhere, matching scipy's default structure.
"""

from __future__ import annotations

import cv2
import numpy as np
from numba import njit


@njit(cache=True, inline="always")
def _find(parent, a):  # pragma: no cover - compiled
    """Root of ``a`` with path halving."""
    while parent[a] != a:
        parent[a] = parent[parent[a]]
        a = parent[a]
    return a


@njit(cache=True, nogil=True)
def _run_labels(img, thresh):  # pragma: no cover - compiled
    """Runs of ``img >= thresh`` (row, x0, x1 exclusive), their component label, and the areas.

    A run is united with every run of the previous row it overlaps in x (the
    4-connected rule); roots are the lowest run index, so numbering the roots
    in run order numbers components in raster order of their first pixel.
    The row is thresholded into a byte buffer first (vectorised), which is then
    read eight bytes at a time: words that are all set or all unset, like the
    current run, are skipped, so branches only happen near run ends.
    """
    h, w = img.shape
    wp = (w + 7) // 8 * 8
    buf = np.zeros(wp, np.uint8)  # the padding stays 0
    words = buf.view(np.uint64)
    ones = np.uint64(0x0101010101010101)
    zero = np.uint64(0)
    per_row = (w + 1) // 2  # most runs a row can hold
    cap = max(1024, 8 * h, 2 * per_row)
    ry = np.empty(cap, np.int32)
    rx0 = np.empty(cap, np.int32)
    rx1 = np.empty(cap, np.int32)
    parent = np.empty(cap, np.int32)
    n = 0
    p0 = 0
    p1 = 0
    for y in range(h):
        if n + per_row > cap:
            cap = 2 * cap + per_row
            ry = _grow(ry, cap)
            rx0 = _grow(rx0, cap)
            rx1 = _grow(rx1, cap)
            parent = _grow(parent, cap)
        row = img[y]
        for x in range(w):
            buf[x] = row[x] >= thresh
        c0 = n
        prev = 0
        x0 = 0
        for i in range(wp // 8):
            if words[i] == (ones if prev else zero):
                continue
            for x in range(8 * i, min(8 * i + 8, w)):
                cur = buf[x]
                if cur != prev:
                    if cur:
                        x0 = x
                    else:
                        ry[n] = y
                        rx0[n] = x0
                        rx1[n] = x
                        parent[n] = n
                        n += 1
                    prev = cur
        if prev:
            ry[n] = y
            rx0[n] = x0
            rx1[n] = w
            parent[n] = n
            n += 1
        i, j = p0, c0
        while i < p1 and j < n:
            if rx1[i] <= rx0[j]:
                i += 1
            elif rx1[j] <= rx0[i]:
                j += 1
            else:
                a = _find(parent, i)
                b = _find(parent, j)
                if a < b:
                    parent[b] = a
                elif b < a:
                    parent[a] = b
                if rx1[i] < rx1[j]:
                    i += 1
                else:
                    j += 1
        p0, p1 = c0, n
    lab = np.empty(n, np.int32)
    area = np.zeros(n + 1, np.int64)
    k = 0
    for r in range(n):
        root = _find(parent, r)
        if root == r:
            k += 1
            lab[r] = k
        else:
            lab[r] = lab[root]
        area[lab[r]] += rx1[r] - rx0[r]
    area = area[: k + 1].copy()
    area[0] = h * w - area[1:].sum()
    return ry[:n], rx0[:n], rx1[:n], lab, area


@njit(cache=True, nogil=True)
def _grow(a, cap):  # pragma: no cover - compiled
    """``a`` copied into a longer array."""
    b = np.empty(cap, a.dtype)
    b[: a.size] = a
    return b


@njit(cache=True, nogil=True)
def _paint(out, ry, rx0, rx1, lab):  # pragma: no cover - compiled
    """Write the label image row by row: zero the row, then fill each run (slice fills vectorise)."""
    h = out.shape[0]
    r = 0
    for y in range(h):
        row = out[y]
        row[:] = 0
        while r < ry.size and ry[r] == y:
            row[rx0[r] : rx1[r]] = lab[r]
            r += 1
    return out


def components(binary: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """4-connected components: (labels uint16 or int32, area per label); label 0 is the background.

    Labels are numbered in raster order of each component's first pixel, like
    ``cv2.connectedComponents`` and ``scipy.ndimage.label``.
    """
    return components_where(_as_u8(binary), 1)


def components_where(
    img: np.ndarray, thresh: float | int, min_area: int = 1
) -> tuple[np.ndarray, np.ndarray]:
    """:func:`components` of ``img >= thresh`` without building the mask first.

    Run-length labelling: one scan finds the runs of set pixels per row and
    unites overlapping runs of consecutive rows (union-find over runs, not
    pixels), the areas come from the run lengths, and the label image is
    painted run by run; about 2x faster than OpenCV's labelling plus an area
    scan on crypt maps. 16-bit labels (half the memory traffic of every later
    pass) unless there are more than 65,535 components. For a float image
    pass ``thresh`` in the image's dtype, so the comparison matches NumPy's.

    With ``min_area > 1`` components smaller than that are dropped while
    painting and the others renumbered 1..k in the same (raster) order, so
    later passes test ``label != 0`` instead of looking up a keep table; the
    areas returned are then those of the kept components (index 0: the rest).
    """
    img = np.ascontiguousarray(img)
    if img.ndim != 2:
        raise ValueError(f"expected a 2-D image, got shape {img.shape}")
    ry, rx0, rx1, lab, area = _run_labels(img, thresh)
    if min_area > 1:
        keep = area >= min_area
        keep[0] = False
        lut = np.zeros(area.size, np.int32)
        lut[keep] = np.arange(1, int(keep.sum()) + 1, dtype=np.int32)
        lab = lut[lab]
        area = np.concatenate([[0], area[keep]])
        area[0] = img.size - area[1:].sum()
    dt = np.uint16 if area.size <= 65536 else np.int32
    out = np.empty(img.shape, dt)
    _paint(out, ry, rx0, rx1, lab.astype(dt))
    return out, area


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
    """4-connected labels 1..k of the components with at least ``min_area`` pixels (others 0).

    Returns ``(labels, lut, k)``; the labels are already final, ``lut`` is the
    identity table (kept for :func:`~hovercrypt.postproc.watershed.flood_prepared`).
    """
    labels, areas = components_where(_as_u8(binary), 1, max(1, int(min_area)))
    k = len(areas) - 1
    return labels, np.arange(k + 1, dtype=np.int32), k


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
