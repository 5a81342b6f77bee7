"""Slow, obviously-correct twins of compiled kernels, for tests on tiny arrays."""

from __future__ import annotations

import heapq

import numpy as np


def watershed_reference(
    energy: np.ndarray, markers: np.ndarray, mask: np.ndarray | None = None
) -> np.ndarray:
    """Plain-Python float-heap watershed with scikit-image's rule (for tests on small arrays)."""
    energy = np.asarray(energy, np.float64)
    h, w = energy.shape
    inside = np.ones((h, w), bool) if mask is None else np.asarray(mask, bool)
    out = np.where(inside, np.asarray(markers, np.int64), 0)
    heap: list[tuple[float, int, int, int]] = []
    for y, x in zip(*np.nonzero(out)):
        heapq.heappush(heap, (float(energy[y, x]), 0, int(y), int(x)))
    age = 0
    while heap:
        _, _, y, x = heapq.heappop(heap)
        for dy, dx in ((-1, 0), (0, -1), (0, 1), (1, 0)):
            yy, xx = y + dy, x + dx
            if 0 <= yy < h and 0 <= xx < w and inside[yy, xx] and out[yy, xx] == 0:
                out[yy, xx] = out[y, x]
                age += 1
                heapq.heappush(heap, (float(energy[yy, xx]), age, yy, xx))
    return out.astype(np.int32)
