"""Seamless stitching of per-region instances: every crypt exactly once, whole.

Rule (applied to each region independently, so regions can be processed in
any order, in parallel, and resumed):

1. The network tile grid is anchored at the slide origin (``predict_image``
   ``origin``) and every processing pixel is read with position-only resampling
   weights, so a pixel has the same maps in every region that contains it
   (except within the network context of a padded region edge, which the
   margin covers, see :func:`hovercrypt.infer.regions.margin_pixels`).
2. Each region is post-processed over its *extended* box (core + margin).
3. An instance is kept by the region whose *core* contains its centroid.
   Cores tile the slide exactly (half-open boxes) and the centroid test is done
   in exact integer arithmetic (``x0 * n <= sum(x) < x1 * n``), so there is one
   and only one candidate owner.
4. The owner keeps it only if it does not touch the extended box's border,
   except where that border is the slide border (then the crypt really ends there),
   and only if its centroid lies on the tissue mask (tiles within a margin of
   tissue are all predicted, or, following crypts, every tile that the
   foreground of a tissue tile reaches, so such a crypt is never cut by a
   skipped tile; :mod:`hovercrypt.infer.tile_cache`).

Why this is exact: a crypt narrower than the margin whose centroid lies in a
core lies entirely inside that region's extended box, away from its padded
edges, so the owner sees it whole with the same pixels as an uninterrupted
image would give; every other region either does not contain its centroid in
its core or sees a truncated piece and drops it. Crypts wider than the margin
can be truncated in their owner; they are dropped and counted as
``oversize`` so the run can warn ("increase margin_um").
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from scipy import ndimage

from hovercrypt.infer.regions import Region
from hovercrypt.infer.tissue import TissueCrop
from hovercrypt.io.export import instance_record, write_jsonl
from hovercrypt.io.type_info import TypeInfo


@dataclass(frozen=True)
class StitchContext:
    """What a post-processing worker needs besides the maps (picklable)."""

    slide_w: int  # processing px
    slide_h: int
    f: float  # level-0 px per processing px
    arch: str
    params: dict[str, Any]
    type_info: TypeInfo
    part_dir: str


@dataclass(frozen=True)
class RegionResult:
    index: int
    n: int
    types: dict[int, int]  # type id -> count
    oversize: int  # owned instances dropped because they touch a padded border
    seconds: float = 0.0  # post-processing time in the worker


def owned_labels(
    inst: np.ndarray, region: Region, slide_w: int, slide_h: int, tissue: TissueCrop | None = None
) -> tuple[np.ndarray, int]:
    """bool per label (index = label) kept by ``region``, and how many owned ones were truncated.

    With ``tissue``, only instances whose centroid lies on tissue are kept (the
    engine processes every tile within a margin of tissue, so those are whole).
    """
    ox, oy, ex1, ey1 = region.ext
    h, w = inst.shape
    nlab = int(inst.max()) + 1 if inst.size else 1
    keep = np.zeros(nlab, bool)
    cx0, cy0, cx1, cy1 = region.core
    pad_l, pad_t = ox > 0, oy > 0
    pad_r, pad_b = ex1 < slide_w, ey1 < slide_h
    oversize = 0
    for lab, sl in enumerate(ndimage.find_objects(inst), start=1):
        if sl is None:
            continue
        ys, xs = sl
        m = inst[sl] == lab
        n = int(m.sum())
        # exact integer centroid test against the half-open core, in global pixels
        sx = int(m.sum(0) @ np.arange(xs.start + ox, xs.stop + ox, dtype=np.int64))
        sy = int(m.sum(1) @ np.arange(ys.start + oy, ys.stop + oy, dtype=np.int64))
        if not (cx0 * n <= sx < cx1 * n and cy0 * n <= sy < cy1 * n):
            continue
        if tissue is not None and not tissue.contains(sx / n, sy / n):
            continue
        touches = (
            (pad_l and xs.start == 0)
            or (pad_t and ys.start == 0)
            or (pad_r and xs.stop == w)
            or (pad_b and ys.stop == h)
        )
        if touches:
            oversize += 1
        else:
            keep[lab] = True
    return keep, oversize


def level0_record(inst: dict[str, Any], region: Region, f: float, type_info: TypeInfo) -> dict[str, Any]:
    """An instance record in level-0 pixels (no id yet).

    Points (centroid, contour) are pixel centres: processing pixel ``p`` maps to
    level-0 ``(p + 0.5) * f - 0.5``. The box maps its edges: ``x0 * f``.
    """
    ox, oy = region.ext[:2]
    off = ((ox + 0.5) * f - 0.5, (oy + 0.5) * f - 0.5)
    rec = instance_record(0, inst, scale=f, offset=off, type_info=type_info)
    x0, y0, x1, y1 = inst["bbox"]
    rec["bbox"] = [
        int(np.floor((x0 + ox) * f)),
        int(np.floor((y0 + oy) * f)),
        int(np.ceil((x1 + ox) * f)),
        int(np.ceil((y1 + oy) * f)),
    ]
    return rec


def part_path(part_dir: str | Path, index: int) -> Path:
    return Path(part_dir) / f"chunk_{index:07d}.jsonl"


def postprocess_region(
    region: Region, maps: dict[str, np.ndarray], ctx: StitchContext, tissue: TissueCrop | None = None
) -> RegionResult:
    """Maps of one extended region -> owned instances written as a part file (the chunk's commit).

    Runs in a worker (process or thread). Records are sorted by centroid
    (y, x) so the merged output order is deterministic.
    """
    from hovercrypt.postproc import instance_info, maps_to_instances

    t0 = time.perf_counter()
    inst = maps_to_instances(maps, ctx.arch, ctx.params)
    keep, oversize = owned_labels(inst, region, ctx.slide_w, ctx.slide_h, tissue)
    inst = np.where(keep[inst], inst, 0).astype(np.int32)
    info = instance_info(inst, maps.get("tp"))
    records = [level0_record(v, region, ctx.f, ctx.type_info) for v in info.values()]
    records.sort(key=lambda r: (r["centroid"][1], r["centroid"][0]))
    types: dict[int, int] = {}
    for r in records:
        types[r["type"]] = types.get(r["type"], 0) + 1
    write_jsonl(part_path(ctx.part_dir, region.index), records)
    return RegionResult(region.index, len(records), types, oversize, time.perf_counter() - t0)
