"""Slide-level tile sharing: every network tile is computed once per slide.

Regions overlap by a margin, so predicting each region on its own runs the
tiles of the overlap two to four times (483 tiles where 215 cover the slide,
on a 4 mm² section). The network tile grid is global (anchored at the slide
origin), so a tile's maps do not depend on the region that asks for them,
*provided* the tile's input is the slide's own pixels. Here every tile is
therefore read with real context from the slide (mirror padding only at the
slide border, exactly as ``predict_image`` over the whole slide would pad),
computed once, and kept only while a region still to be processed needs it,
cropped to the part those regions need. With regions processed row by row
(column by column on slides wider than tall) the cache holds about one strip
of ``2 * margin`` px across the slide's short side.

Unlike the per-region path, maps near a region's inner edges are not computed
from mirrored pixels: each region's maps equal the whole-slide maps cropped to
its box, which is what the stitching rule assumes.

**Following crypts** (``follow``, ``infer.follow_um``): instead of every tile
within a crypt's diameter of the tissue mask (2.7x the tissue tiles on a thin
colon section), only tiles touching tissue are planned; a region then runs,
repeatedly, every tile of its box that lies within ``band`` px of a foreground
pixel (the family's ``map_foreground``) of the tiles it has so far, until no
foreground reaches an unrun tile. A foreground piece that crosses a tile
border has pixels at that border, so every crypt touching a tissue tile is
run whole, however far it reaches beyond the mask; the band covers the
post-processing's kernels (Sobel, blur, opening) at its edge. Which tiles a
region uses depends only on the slide, its box and the mask, never on what
earlier regions left in the cache, so resumed runs give the same maps.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import cv2
import numpy as np

from hovercrypt.infer.regions import Box, Region
from hovercrypt.infer.tissue import TissueIndex

Tile = tuple[int, int]  # (row i, column j) on the global output grid


def reflect_index(idx: np.ndarray, n: int) -> np.ndarray:
    """Indices of ``idx`` (may lie outside ``[0, n)``) mirrored into it, like ``np.pad(mode="reflect")``.

    Periodic with period ``2 (n - 1)``; a 1-pixel axis repeats its pixel (as ``tile._mirror_pad``).
    """
    if n == 1:
        return np.zeros_like(idx)
    p = 2 * (n - 1)
    r = np.mod(idx, p)
    return np.where(r > n - 1, p - r, r)


def tiles_of_box(box: Box, out: int) -> list[Tile]:
    """Output tiles (i, j) that cover the half-open box, row-major."""
    x0, y0, x1, y1 = box
    return [
        (i, j) for i in range(y0 // out, (y1 - 1) // out + 1) for j in range(x0 // out, (x1 - 1) // out + 1)
    ]


def processing_order(regions: list[Region], width: int, height: int) -> list[Region]:
    """Row-major, or column-major on slides wider than tall: the cached strip spans the short side."""
    if width > height:
        return sorted(regions, key=lambda r: (r.core[0], r.core[1]))
    return sorted(regions, key=lambda r: (r.core[1], r.core[0]))


def _intersect(a: Box, b: Box) -> Box | None:
    x0, y0, x1, y1 = max(a[0], b[0]), max(a[1], b[1]), min(a[2], b[2]), min(a[3], b[3])
    return (x0, y0, x1, y1) if x1 > x0 and y1 > y0 else None


def _union(boxes: Iterable[Box]) -> Box | None:
    bs = list(boxes)
    if not bs:
        return None
    return min(b[0] for b in bs), min(b[1] for b in bs), max(b[2] for b in bs), max(b[3] for b in bs)


@dataclass
class TilePlan:
    """Which tiles each region needs, which it computes first, and who needs them later."""

    out: int  # output tile side
    ctx: int  # input context on each side: input = out + 2 ctx
    order: list[Region]
    need: list[list[Tile]] = field(default_factory=list)  # tiles covering each region's extended box
    new: list[list[Tile]] = field(default_factory=list)  # tissue tiles first needed by each region
    users: dict[Tile, list[int]] = field(default_factory=dict)  # positions in ``order`` needing a tile
    tissue: set[Tile] = field(default_factory=set)  # tiles the tissue index asked for

    @classmethod
    def build(cls, order: list[Region], out: int, ctx: int, tissue: TissueIndex) -> TilePlan:
        plan = cls(out, ctx, order)
        is_tissue: dict[Tile, bool] = {}
        for k, r in enumerate(order):
            tiles = tiles_of_box(r.ext, out)
            plan.need.append(tiles)
            fresh = []
            for t in tiles:
                if t not in plan.users:
                    plan.users[t] = []
                    i, j = t
                    is_tissue[t] = tissue.near(j * out, i * out, (j + 1) * out, (i + 1) * out)
                    if is_tissue[t]:
                        fresh.append(t)
                        plan.tissue.add(t)
                plan.users[t].append(k)
            plan.new.append(fresh)
        return plan

    @property
    def n_tiles(self) -> int:
        """Tissue tiles the plan computes (each once)."""
        return sum(len(n) for n in self.new)

    def tile_box(self, t: Tile) -> Box:
        i, j = t
        return j * self.out, i * self.out, (j + 1) * self.out, (i + 1) * self.out

    def future_box(self, t: Tile, after: int) -> Box | None:
        """The part of tile ``t`` that regions after position ``after`` still need (None: nobody)."""
        tb = self.tile_box(t)
        parts = (_intersect(tb, self.order[k].ext) for k in self.users[t] if k > after)
        return _union(b for b in parts if b is not None)

    def input_box(self, tiles: list[Tile]) -> Box:
        """Global bounding box of the input windows of ``tiles`` (may extend beyond the slide)."""
        boxes = [self.tile_box(t) for t in tiles]
        c = self.ctx
        x0, y0, x1, y1 = _union(boxes)  # type: ignore[misc]
        return x0 - c, y0 - c, x1 + c, y1 + c


def read_mirrored(reader: Any, box: Box, width: int, height: int, mpp: float) -> np.ndarray:
    """Slide pixels of the global ``box`` at ``mpp``, mirrored at the slide border.

    Only the source rows/columns the box maps to are read, so the mirror is exact
    however far the box reaches beyond the slide (as padding the whole slide would be).
    """
    x0, y0, x1, y1 = box
    ix = reflect_index(np.arange(x0, x1), width)
    iy = reflect_index(np.arange(y0, y1), height)
    sx0, sx1 = int(ix.min()), int(ix.max()) + 1
    sy0, sy1 = int(iy.min()), int(iy.max()) + 1
    src = reader.read(sx0, sy0, sx1 - sx0, sy1 - sy0, mpp)
    if (x0, y0, x1, y1) == (sx0, sy0, sx1, sy1):
        return src
    return np.ascontiguousarray(src[np.ix_(iy - sy0, ix - sx0)])


class TileCache:
    """Maps of computed tiles, each cropped to what later regions need, dropped when unneeded."""

    def __init__(self, plan: TilePlan) -> None:
        self.plan = plan
        self.store: dict[Tile, tuple[Box, dict[str, np.ndarray]]] = {}
        self.spec: dict[str, int] | None = None  # map name -> channels
        self.peak_bytes = 0

    def put(self, t: Tile, maps: dict[str, np.ndarray]) -> None:
        self.spec = {k: v.shape[-1] for k, v in maps.items()}
        self.store[t] = (self.plan.tile_box(t), maps)

    def region_maps(self, k: int, tiles: Iterable[Tile] | None = None) -> dict[str, np.ndarray]:
        """Maps ``(h, w, C)`` of the extended box of region ``k`` from ``tiles`` (default: all it
        needs that were computed); the other tiles are zeros."""
        if self.spec is None:
            raise RuntimeError("tile cache: no tile computed yet, map channels unknown")
        ext = self.plan.order[k].ext
        h, w = ext[3] - ext[1], ext[2] - ext[0]
        res = {name: np.zeros((h, w, c), np.float32) for name, c in self.spec.items()}
        self.paste(res, ext, self.plan.need[k] if tiles is None else tiles)
        self.peak_bytes = max(self.peak_bytes, self.nbytes())
        return res

    def paste(self, res: dict[str, np.ndarray], ext: Box, tiles: Iterable[Tile]) -> None:
        """Copy the cached maps of ``tiles`` into ``res``, the maps of the global box ``ext``."""
        for t in tiles:
            hit = self.store.get(t)
            if hit is None:
                continue
            box, maps = hit
            part = _intersect(box, ext)
            if part is None:
                continue
            ax0, ay0, ax1, ay1 = part
            for name, arr in maps.items():
                res[name][ay0 - ext[1] : ay1 - ext[1], ax0 - ext[0] : ax1 - ext[0]] = arr[
                    ay0 - box[1] : ay1 - box[1], ax0 - box[0] : ax1 - box[0]
                ]

    def release(self, k: int) -> None:
        """After region ``k``: drop tiles nobody needs any more, crop the others to their future use."""
        for t in self.plan.need[k]:
            hit = self.store.get(t)
            if hit is None:
                continue
            box, maps = hit
            fut = self.plan.future_box(t, k)
            if fut is None:
                del self.store[t]
            elif fut != box:
                x0, y0, x1, y1 = fut
                sl = (slice(y0 - box[1], y1 - box[1]), slice(x0 - box[0], x1 - box[0]))
                self.store[t] = (fut, {n: np.ascontiguousarray(a[sl]) for n, a in maps.items()})

    def nbytes(self) -> int:
        return sum(a.nbytes for _, maps in self.store.values() for a in maps.values())


class CachedSource:
    """Region maps from the tile cache: what the whole-slide loop calls instead of ``predict_image``.

    ``load`` runs in the reader thread (slide pixels of the tiles a region computes
    first), ``maps`` in the network thread (predict them, follow the crypts into
    further tiles when ``follow`` is given, cache them, assemble the region,
    release what no later region needs). ``follow(maps) -> bool (h, w)`` is the
    family's foreground test (see the module docstring); ``band`` is in px.
    """

    def __init__(
        self,
        predictor: Any,
        plan: TilePlan,
        reader: Any,
        size: tuple[int, int],
        mpp: float,
        batch_size: int,
        follow: Callable[[dict[str, np.ndarray]], np.ndarray] | None = None,
        band: int = 0,
    ) -> None:
        self.predictor, self.plan, self.reader = predictor, plan, reader
        self.width, self.height = size
        self.mpp, self.batch_size = mpp, batch_size
        self.follow, self.band = follow, max(0, int(band))
        self.cache = TileCache(plan)
        self.pos = {r.index: k for k, r in enumerate(plan.order)}
        self.computed: set[Tile] = set()  # every tile run by this source (cached or since released)
        self.tiles_run = 0
        self.followed = 0  # tiles run because a crypt reached them (not in the plan)
        self.bar: Any = None
        self._read_lock = threading.Lock()  # the reader thread and followed tiles share the slide

    def _read(self, box: Box) -> np.ndarray:
        with self._read_lock:
            return read_mirrored(self.reader, box, self.width, self.height, self.mpp)

    def load(self, region: Region) -> tuple[np.ndarray, Box] | None:
        tiles = self.plan.new[self.pos[region.index]]
        if not tiles:
            return None
        box = self.plan.input_box(tiles)
        return self._read(box), box

    def _predict(self, tiles: np.ndarray, origins: np.ndarray) -> dict[str, np.ndarray]:
        out = self.plan.out
        res = self.predictor.predict(tiles, origins)
        for name, arr in res.items():
            if arr.shape[:3] != (len(tiles), out, out):
                raise ValueError(
                    f"predictor returned {name!r} with shape {arr.shape}, "
                    f"expected ({len(tiles)}, {out}, {out}, C)"
                )
        return res

    def _run(self, tiles: list[Tile], payload: tuple[np.ndarray, Box] | None) -> None:
        """Predict and cache ``tiles``, cut from ``payload`` (pixels of a global box) or read one by one."""
        out, c, inp = self.plan.out, self.plan.ctx, int(self.predictor.input_size)
        for s in range(0, len(tiles), self.batch_size):
            chunk = tiles[s : s + self.batch_size]
            origins = np.array([(j * out - c, i * out - c) for i, j in chunk], np.int64)
            if payload is not None:
                patch, (bx, by, _, _) = payload
                crops = [patch[oy - by : oy - by + inp, ox - bx : ox - bx + inp] for ox, oy in origins]
            else:
                crops = [self._read((ox, oy, ox + inp, oy + inp)) for ox, oy in origins]
            res = self._predict(np.stack(crops), origins)
            for n, t in enumerate(chunk):
                self.cache.put(t, {name: arr[n].copy() for name, arr in res.items()})
            self.computed.update(chunk)
            self.tiles_run += len(chunk)
            if self.bar is not None:
                self.bar.update(len(chunk))

    def maps(self, region: Region, payload: tuple[np.ndarray, Box] | None) -> dict[str, np.ndarray]:
        k = self.pos[region.index]
        if payload is not None:
            self._run(self.plan.new[k], payload)
        if self.cache.spec is None:  # no tissue tile yet: learn the map names/channels from a blank one
            inp, c = int(self.predictor.input_size), self.plan.ctx
            res = self._predict(np.zeros((1, inp, inp, 3), np.uint8), np.array([[-c, -c]], np.int64))
            self.cache.spec = {name: arr.shape[-1] for name, arr in res.items()}
        if self.follow is None:
            maps = self.cache.region_maps(k)
        else:
            maps = self._follow(k)
        self.cache.release(k)
        return maps

    def _follow(self, k: int) -> dict[str, np.ndarray]:
        """The region's maps from its tissue tiles plus every tile its crypts reach, run as needed."""
        ext = self.plan.order[k].ext
        used = {t for t in self.plan.need[k] if t in self.plan.tissue}
        maps = self.cache.region_maps(k, used)
        # a tile is reached by foreground within ``band`` px of it, adjacent pixels (8-connected) at least
        kernel = np.ones((2 * self.band + 3, 2 * self.band + 3), np.uint8)
        while True:
            fg = np.asarray(self.follow(maps), bool)  # type: ignore[misc]
            reach = cv2.dilate(fg.view(np.uint8), kernel)
            more = []
            for t in self.plan.need[k]:
                part = None if t in used else _intersect(self.plan.tile_box(t), ext)
                if part is None:
                    continue
                x0, y0, x1, y1 = (v - o for v, o in zip(part, ext[:2] * 2, strict=True))
                if reach[y0:y1, x0:x1].any():
                    more.append(t)
            if not more:
                return maps
            fresh = [t for t in more if t not in self.computed]
            if self.bar is not None:
                self.bar.total += len(fresh)
                self.bar.refresh()
            self._run(fresh, None)
            self.followed += len(fresh)
            self.cache.paste(maps, ext, more)
            used.update(more)
