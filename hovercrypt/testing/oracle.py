"""Oracle predictor: exact NP/HV(/TP) maps rendered from a known crypt layout.

The whole-slide engine is tested against it, so stitching and counting are
checked exactly and independently of training. The predictor ignores the
pixels and uses ``origins`` (global processing coordinates of each input
tile) to render what a perfect network would output there.

HV offsets need the *whole* instance (its centre of mass and extents), which
a tile only partly sees. Each crypt is therefore rasterised in full on the
global processing grid and run through :func:`hovercrypt.data.targets.hv_maps`
on its own; the tile then receives the part that falls inside it. Crypts are
disjoint, so pasting them one by one is exact and tile-independent.
"""

from __future__ import annotations

from collections import OrderedDict

import numpy as np

from hovercrypt.data.targets import hv_maps


def raster_ellipse(cx: float, cy: float, ra: float, rb: float, theta: float) -> tuple[np.ndarray, int, int]:
    """Boolean mask of an ellipse on the global integer pixel grid, with its (x0, y0)."""
    r = max(ra, rb)
    x0, x1 = int(np.floor(cx - r)), int(np.ceil(cx + r)) + 1
    y0, y1 = int(np.floor(cy - r)), int(np.ceil(cy + r)) + 1
    yy, xx = np.mgrid[y0:y1, x0:x1]
    dx, dy = xx - cx, yy - cy
    c, s = np.cos(theta), np.sin(theta)
    u, v = dx * c + dy * s, -dx * s + dy * c
    return (u / ra) ** 2 + (v / rb) ** 2 <= 1.0, x0, y0


def render_instances(ellipses: np.ndarray, x0: int, y0: int, w: int, h: int) -> np.ndarray:
    """int32 instance map (ids = row index + 1) of global pixels ``[x0, x0+w) x [y0, y0+h)``."""
    inst = np.zeros((h, w), np.int32)
    for i, (cx, cy, ra, rb, th, _k) in enumerate(ellipses):
        mask, ex, ey = raster_ellipse(cx, cy, ra, rb, th)
        _paste(inst, mask.astype(np.int32) * (i + 1), ex - x0, ey - y0, where=mask)
    return inst


def _paste(dst: np.ndarray, src: np.ndarray, ox: int, oy: int, where: np.ndarray) -> None:
    """``dst[oy:, ox:] = src`` where ``where``, clipped to ``dst`` (ox/oy may be negative)."""
    h, w = dst.shape[:2]
    sh, sw = where.shape
    a0, b0 = max(0, -ox), max(0, -oy)
    a1, b1 = min(sw, w - ox), min(sh, h - oy)
    if a1 <= a0 or b1 <= b0:
        return
    d = dst[oy + b0 : oy + b1, ox + a0 : ox + a1]
    m = where[b0:b1, a0:a1]
    d[m] = src[b0:b1, a0:a1][m]


class OraclePredictor:
    """A :class:`~hovercrypt.infer.predictor.Predictor` that renders exact maps for ``ellipses``.

    ``ellipses``: float (K, 6) rows ``(cx, cy, ra, rb, theta, type)`` in
    processing pixels (see ``CryptLayout.to_processing``). ``nr_types`` > 0 adds
    a one-hot ``tp`` map. ``tiles_seen`` counts tiles rendered (tests use it to
    check that non-tissue tiles are skipped).
    """

    arch = "hovernet"

    def __init__(
        self, ellipses: np.ndarray, input_size: int = 160, output_size: int = 128, nr_types: int = 0
    ) -> None:
        if (input_size - output_size) % 2 or output_size <= 0 or input_size < output_size:
            raise ValueError(f"bad oracle windows {input_size}/{output_size}")
        self.ellipses = np.asarray(ellipses, np.float64).reshape(-1, 6)
        self.input_size, self.output_size, self.nr_types = int(input_size), int(output_size), int(nr_types)
        self.tiles_seen = 0
        self._cell = 256
        self._grid: dict[tuple[int, int], list[int]] = {}
        for i, (cx, cy, ra, rb, _t, _k) in enumerate(self.ellipses):
            r = max(ra, rb) + 1
            for gy in range(int((cy - r) // self._cell), int((cy + r) // self._cell) + 1):
                for gx in range(int((cx - r) // self._cell), int((cx + r) // self._cell) + 1):
                    self._grid.setdefault((gx, gy), []).append(i)
        self._cache: OrderedDict[int, tuple[np.ndarray, np.ndarray, int, int]] = OrderedDict()

    def _instance(self, i: int) -> tuple[np.ndarray, np.ndarray, int, int]:
        """(mask, hv, x0, y0) of crypt ``i``, cached (a crypt is seen by a few neighbouring tiles)."""
        hit = self._cache.get(i)
        if hit is not None:
            self._cache.move_to_end(i)
            return hit
        cx, cy, ra, rb, th, _k = self.ellipses[i]
        mask, x0, y0 = raster_ellipse(cx, cy, ra, rb, th)
        hv = hv_maps(mask.astype(np.int32))
        self._cache[i] = (mask, hv, x0, y0)
        if len(self._cache) > 4096:
            self._cache.popitem(last=False)
        return mask, hv, x0, y0

    def _near(self, x0: int, y0: int, x1: int, y1: int) -> list[int]:
        found: set[int] = set()
        for gy in range(y0 // self._cell, (y1 - 1) // self._cell + 1):
            for gx in range(x0 // self._cell, (x1 - 1) // self._cell + 1):
                found.update(self._grid.get((gx, gy), ()))
        return sorted(found)

    def render(self, x0: int, y0: int, size: int) -> dict[str, np.ndarray]:
        """Maps of the global window ``[x0, x0+size) x [y0, y0+size)``."""
        npm = np.zeros((size, size, 1), np.float32)
        hv = np.zeros((size, size, 2), np.float32)
        tp = np.zeros((size, size, self.nr_types), np.float32) if self.nr_types else None
        if tp is not None:
            tp[..., 0] = 1.0
        for i in self._near(x0, y0, x0 + size, y0 + size):
            mask, ihv, ex, ey = self._instance(i)
            ox, oy = ex - x0, ey - y0
            _paste(npm[..., 0], np.ones(mask.shape, np.float32), ox, oy, mask)
            _paste(hv, ihv, ox, oy, mask)
            if tp is not None:
                onehot = np.zeros(mask.shape + (self.nr_types,), np.float32)
                onehot[..., int(self.ellipses[i, 5]) % self.nr_types] = 1.0
                _paste(tp, onehot, ox, oy, mask)
        out = {"np": npm, "hv": hv}
        if tp is not None:
            out["tp"] = tp
        return out

    def predict(self, tiles: np.ndarray, origins: np.ndarray | None = None) -> dict[str, np.ndarray]:
        if origins is None:
            raise ValueError("the oracle predictor needs tile origins")
        m = (self.input_size - self.output_size) // 2
        parts = [self.render(int(ox) + m, int(oy) + m, self.output_size) for ox, oy in origins]
        self.tiles_seen += len(parts)
        return {k: np.stack([p[k] for p in parts]) for k in parts[0]} if parts else {}
