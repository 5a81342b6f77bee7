"""Synthetic pyramidal slides with a known crypt layout (tests and benchmarks).

A :class:`CryptLayout` lists ellipses (crypts) and rectangles (tissue) in
level-0 pixels; :func:`write_layout_slide` renders it tile by tile through
:func:`hovercrypt.io.pyramid.write_pyramid_tiff`, the writer the quick start
uses for real images too.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

from hovercrypt.io.pyramid import write_pyramid_tiff

GLASS = (242, 242, 242)
STROMA = (236, 190, 215)
RIM = (150, 90, 170)
LUMEN = (245, 235, 245)


@dataclass
class CryptLayout:
    """Crypts as ellipses ``(cx, cy, ra, rb, theta, type)`` and tissue rectangles, level-0 px."""

    width: int
    height: int
    ellipses: np.ndarray  # float64 (K, 6)
    tissue: list[tuple[int, int, int, int]] = field(default_factory=list)  # [x0, y0, x1, y1]
    _grid: dict[tuple[int, int], list[int]] | None = field(default=None, repr=False)
    _cell: int = 1024

    def near(self, x0: float, y0: float, x1: float, y1: float) -> list[int]:
        """Indices of ellipses whose bounding circle may touch the box (level-0 px)."""
        if self._grid is None:
            self._grid = {}
            for i, (cx, cy, ra, rb, _t, _k) in enumerate(self.ellipses):
                r = max(ra, rb)
                for gy in range(int((cy - r) // self._cell), int((cy + r) // self._cell) + 1):
                    for gx in range(int((cx - r) // self._cell), int((cx + r) // self._cell) + 1):
                        self._grid.setdefault((gx, gy), []).append(i)
        found: set[int] = set()
        for gy in range(int(y0 // self._cell), int(y1 // self._cell) + 1):
            for gx in range(int(x0 // self._cell), int(x1 // self._cell) + 1):
                found.update(self._grid.get((gx, gy), ()))
        return sorted(found)

    def to_processing(self, f: float) -> np.ndarray:
        """Ellipses in processing pixels for ``f`` level-0 px per processing px (pixel-centre mapping)."""
        e = self.ellipses.copy()
        e[:, 0] = (e[:, 0] + 0.5) / f - 0.5
        e[:, 1] = (e[:, 1] + 0.5) / f - 0.5
        e[:, 2:4] /= f
        return e


def random_layout(
    width: int,
    height: int,
    tissue: Sequence[tuple[int, int, int, int]],
    n: int,
    radius_range: tuple[float, float],
    seed: int = 0,
    gap: float = 8.0,
    fixed: Sequence[tuple[float, float, float, float, float, int]] = (),
    n_types: int = 1,
    max_tries: int = 100,
) -> CryptLayout:
    """Up to ``n`` random non-overlapping crypts inside the tissue rectangles, after the ``fixed`` ones.

    Crypts are kept ``gap`` level-0 px apart (bounding circles), so they never
    merge after downsampling; ``fixed`` crypts are placed first (e.g. on tile
    and region boundaries) and the random ones avoid them.
    """
    rng = np.random.default_rng(seed)
    rmax = radius_range[1]
    cell = 2 * rmax + gap
    grid: dict[tuple[int, int], list[int]] = {}
    out: list[tuple[float, ...]] = []

    def free(cx: float, cy: float, r: float) -> bool:
        gx, gy = int(cx // cell), int(cy // cell)
        for yy in (gy - 1, gy, gy + 1):
            for xx in (gx - 1, gx, gx + 1):
                for j in grid.get((xx, yy), ()):
                    ox, oy, ora, orb = out[j][:4]
                    if math.hypot(cx - ox, cy - oy) < r + max(ora, orb) + gap:
                        return False
        return True

    def add(e: tuple[float, ...]) -> None:
        grid.setdefault((int(e[0] // cell), int(e[1] // cell)), []).append(len(out))
        out.append(e)

    for e in fixed:
        add(tuple(float(v) for v in e))
    areas = np.array([(x1 - x0) * (y1 - y0) for x0, y0, x1, y1 in tissue], np.float64)
    for _ in range(n):
        for _try in range(max_tries):
            x0, y0, x1, y1 = tissue[rng.choice(len(tissue), p=areas / areas.sum())]
            ra, rb = rng.uniform(*radius_range, size=2)
            r = max(ra, rb)
            if x1 - x0 <= 2 * r + 2 or y1 - y0 <= 2 * r + 2:
                continue
            cx, cy = rng.uniform(x0 + r + 1, x1 - r - 1), rng.uniform(y0 + r + 1, y1 - r - 1)
            if free(cx, cy, r):
                add((cx, cy, ra, rb, rng.uniform(0, np.pi), int(rng.integers(1, n_types + 1))))
                break
    return CryptLayout(width, height, np.array(out, np.float64).reshape(-1, 6), list(tissue))


def render_tile(layout: CryptLayout, ds: float, x: int, y: int, w: int, h: int) -> np.ndarray:
    """RGB of level pixels ``[x, x+w) x [y, y+h)`` at downsample ``ds``: glass, stroma, crypts."""
    img = np.empty((h, w, 3), np.uint8)
    img[..., 0], img[..., 1], img[..., 2] = GLASS  # per-channel scalar fills: fastest
    for x0, y0, x1, y1 in layout.tissue:
        a0, b0 = int(round(x0 / ds)) - x, int(round(y0 / ds)) - y
        a1, b1 = int(round(x1 / ds)) - x, int(round(y1 / ds)) - y
        if a1 > 0 and b1 > 0 and a0 < w and b0 < h:
            cv2.rectangle(img, (max(0, a0), max(0, b0)), (min(w, a1) - 1, min(h, b1) - 1), STROMA, -1)
    shift = 4
    sc = float(1 << shift)
    for i in layout.near(x * ds, y * ds, (x + w) * ds, (y + h) * ds):
        cx, cy, ra, rb, theta, _k = layout.ellipses[i]
        c = (int(round(((cx + 0.5) / ds - 0.5 - x) * sc)), int(round(((cy + 0.5) / ds - 0.5 - y) * sc)))
        ang = float(np.degrees(theta))
        for col, k in ((RIM, 1.0), (LUMEN, 0.6)):
            axes = (max(1, int(round(ra / ds * k * sc))), max(1, int(round(rb / ds * k * sc))))
            cv2.ellipse(img, c, axes, ang, 0, 360, col, -1, cv2.LINE_8, shift)
    return img


def write_layout_slide(
    path: str | Path, layout: CryptLayout, mpp: float, downsamples: Sequence[int] = (1, 4, 16), **kw: int
) -> Path:
    """Write ``layout`` as a pyramidal slide at ``mpp`` µm/px (level 0)."""
    return write_pyramid_tiff(
        path,
        layout.width,
        layout.height,
        mpp,
        lambda ds, x, y, w, h: render_tile(layout, ds, x, y, w, h),
        downsamples=downsamples,
        **kw,
    )


def boundary_crypts(
    tissue: Sequence[tuple[int, int, int, int]],
    width: int,
    height: int,
    steps: Sequence[int],
    radius_range: tuple[float, float],
    seed: int = 0,
) -> list[tuple[float, float, float, float, float, int]]:
    """Crypts centred on the corners of grids with the given ``steps`` (level-0 px), inside tissue.

    Region and tile corners are where stitching breaks first: such a crypt is
    split across four regions and four tiles at once.
    """
    rng = np.random.default_rng(seed)
    r = radius_range[1]
    pts: set[tuple[int, int]] = set()
    for s in steps:
        for a in range(s, width, s):
            for b in range(s, height, s):
                pts.update({(a, b), (a + s // 2, b), (a, b + s // 2)})  # corners and edge midpoints
    out: list[tuple[float, float, float, float, float, int]] = []
    for a, b in sorted(pts):
        if any(math.hypot(a - o[0], b - o[1]) < 2 * r + 8 for o in out):
            continue
        if any(x0 + r + 2 < a < x1 - r - 2 and y0 + r + 2 < b < y1 - r - 2 for x0, y0, x1, y1 in tissue):
            ra, rb = rng.uniform(*radius_range, size=2)
            # a small sub-pixel offset so the centre does not fall exactly on the line
            out.append((a + 0.3, b - 0.2, float(ra), float(rb), float(rng.uniform(0, np.pi)), 1))
    return out
