"""The per-region path of the whole-slide engine (``infer.tile_cache`` off): the engine before issue 15.

Each region is predicted on its own with ``predict_image`` over its extended
box (mirrored at the box edges), so the tiles of region overlaps run two to four
times. Kept as the reference the tile cache is measured and tested against.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from tqdm import tqdm

from hovercrypt.infer.regions import Region
from hovercrypt.infer.tile import predict_image
from hovercrypt.infer.tissue import TissueIndex
from hovercrypt.io.slide import SlideReader


class TissuePredictor:
    """Wraps a predictor: tiles whose output window misses the tissue mask get all-zero maps."""

    def __init__(self, inner: Any, tissue: TissueIndex, bar: tqdm | None = None) -> None:
        self.inner, self.tissue, self.bar = inner, tissue, bar
        self.input_size, self.output_size = int(inner.input_size), int(inner.output_size)
        self.arch, self.nr_types = inner.arch, int(inner.nr_types)
        self.spec: dict[str, int] | None = None
        self.tiles_run = 0

    def predict(self, tiles: np.ndarray, origins: np.ndarray | None = None) -> dict[str, np.ndarray]:
        if origins is None:
            raise ValueError("TissuePredictor needs tile origins")
        m, out = (self.input_size - self.output_size) // 2, self.output_size
        sel = [
            k
            for k, (ox, oy) in enumerate(origins)
            if self.tissue.near(ox + m, oy + m, ox + m + out, oy + m + out)
        ]
        res = self.inner.predict(tiles[sel], origins[sel]) if sel else None
        if res is None and self.spec is None:  # learn the map names/channels once
            res0 = self.inner.predict(tiles[:1], origins[:1])
            self.spec = {k: v.shape[-1] for k, v in res0.items()}
        if res is not None:
            self.spec = {k: v.shape[-1] for k, v in res.items()}
        self.tiles_run += len(sel)
        if self.bar is not None:
            self.bar.update(len(sel))
        full = {k: np.zeros((len(tiles), out, out, c), np.float32) for k, c in self.spec.items()}  # type: ignore
        if res is not None:
            for k in full:
                full[k][sel] = res[k]
        return full


class RegionSource:
    """Region maps predicted region by region (``tile_cache`` off): overlaps are recomputed.

    ``load`` runs in the reader thread, ``maps`` in the network thread (as :class:`CachedSource`).
    """

    def __init__(self, predictor: Any, reader: SlideReader, mpp: float, batch_size: int) -> None:
        self.tp, self.reader, self.mpp, self.batch_size = predictor, reader, mpp, batch_size

    def load(self, r: Region) -> np.ndarray:
        x0, y0, x1, y1 = r.ext
        return self.reader.read(x0, y0, x1 - x0, y1 - y0, self.mpp)

    def maps(self, r: Region, img: np.ndarray) -> dict[str, np.ndarray]:
        return predict_image(self.tp, img, self.batch_size, origin=r.ext[:2])
