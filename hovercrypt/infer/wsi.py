"""Whole-slide inference engine: tissue -> regions -> tiles -> maps -> stitched, counted crypts.

Memory stays bounded by the region size, not the slide: a reader thread
prefetches a few extended regions (uint8), the main thread runs the network
over the tiles of one region (only tiles touching tissue), and a worker pool
post-processes regions while the next one is predicted. No slide-sized float
array ever exists. See :mod:`hovercrypt.infer.stitch` for the stitching rule.

Resume: each region's instances are committed as one atomically written part
file; a manifest fingerprints the settings. ``resume=True`` skips regions
whose part exists, and the merge at the end only depends on the part files,
so a resumed run's outputs are byte-identical to an uninterrupted one.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import math
import queue
import shutil
import threading
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Executor, Future
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from hovercrypt.config import InferConfig
from hovercrypt.infer.memory import trim_heap
from hovercrypt.infer.region_source import RegionSource, TissuePredictor
from hovercrypt.infer.regions import Region, margin_pixels, plan_regions, tiles_in
from hovercrypt.infer.stitch import RegionResult, StitchContext, part_path, postprocess_region
from hovercrypt.infer.tile_cache import CachedSource, TilePlan, processing_order
from hovercrypt.infer.tissue import TissueIndex, load_mask, otsu_tissue_mask
from hovercrypt.infer.wsi_outputs import SlideResult, merge_outputs
from hovercrypt.io.atomic import atomic_write_text
from hovercrypt.io.images import write_png
from hovercrypt.io.slide import SlideReader
from hovercrypt.io.type_info import TypeInfo
from hovercrypt.models.registry import get_family

log = logging.getLogger("hovercrypt.wsi")
MANIFEST_VERSION = 1


@dataclass
class WsiOptions:
    """A whole-slide run: the config's ``infer`` settings plus what is known only at run time.

    Every tunable setting (region size, margin, batch size, workers, tile cache, ...) is read
    from ``infer`` (:class:`hovercrypt.config.InferConfig`), so a default lives in one place.
    ``on_region_committed(slide, region_index)`` is called after each region's part file is
    written (progress reporting; tests use it to interrupt a run like a kill).
    """

    proc_mpp: float
    postproc: dict[str, Any]
    type_info: TypeInfo
    infer: InferConfig = field(default_factory=InferConfig)
    slide_mpp: float | None = None
    overlay_max_side: int = 2048
    model_id: str = ""  # fingerprint of the model, for resume
    progress: bool = True
    on_region_committed: Callable[[str, int], None] | None = field(default=None, repr=False)


def _mpp_label(reader: SlideReader, mpp: float) -> tuple[float, float]:
    """Actual (x, y) µm/px of the whole-slide image returned by ``reader.size_at(mpp)``."""
    w, h = reader.size_at(mpp)
    return reader.dimensions[0] * reader.mpp / w, reader.dimensions[1] * reader.mpp / h


def tissue_mask(reader: SlideReader, opts: WsiOptions, mask_path: Path | None) -> tuple[np.ndarray, float]:
    """Tissue mask on a thumbnail and the thumbnail's µm/px (at least ~512 px on the long side)."""
    long_um = max(reader.dimensions) * reader.mpp
    mpp = max(reader.mpp, min(opts.infer.tissue_thumb_mpp, long_um / 512))
    thumb = reader.thumbnail(mpp)
    if mask_path is not None:
        return load_mask(mask_path, thumb.shape[:2]), mpp
    # the minimum tissue piece is meant to drop specks on a slide; a small image (a field of view,
    # a tile) is itself smaller than that, so the limit is capped at 5% of the image's area
    slide_um2 = reader.dimensions[0] * reader.dimensions[1] * reader.mpp**2
    return otsu_tissue_mask(thumb, mpp, min(opts.infer.min_tissue_area_um2, 0.05 * slide_um2)), mpp


def _reader_thread(source: Any, regions: list[Region], q: queue.Queue, stop: threading.Event) -> None:
    try:
        for r in regions:
            img = source.load(r)
            while not stop.is_set():
                try:
                    q.put((r, img), timeout=0.1)
                    break
                except queue.Full:
                    continue
            if stop.is_set():
                return
        q.put(None)
    except BaseException as e:  # handed to the main thread, which re-raises it
        q.put(e)


def _manifest(
    reader: SlideReader, opts: WsiOptions, predictor: Any, mask: np.ndarray, margin: int, follow: bool
) -> dict:
    return {
        "version": MANIFEST_VERSION,
        "slide": reader.path.name,
        "slide_bytes": reader.path.stat().st_size,
        "dimensions": list(reader.dimensions),
        "slide_mpp": reader.mpp,
        "proc_mpp": opts.proc_mpp,
        "tile_shape": opts.infer.tile_shape,
        "margin_px": margin,
        "windows": [predictor.input_size, predictor.output_size],
        "tile_cache": opts.infer.tile_cache,  # the per-region path mirrors maps at inner region edges
        "follow_um": opts.infer.follow_um if follow else 0.0,  # which tiles are run
        "model": opts.model_id,
        # flips, backend and precision change the maps: a resume must not mix them with earlier regions
        "tta": bool(getattr(predictor, "tta", False)),
        "backend": str(getattr(predictor, "backend", "")),
        # torch autocast dtype, and the compiled backend's arithmetic
        "precision": [str(getattr(predictor, "amp_dtype", None)), str(getattr(predictor, "precision", ""))],
        "postproc": opts.postproc,
        "type_info": opts.type_info.to_json_dict(),  # names end up in every record and the GeoJSON
        "tissue_sha1": hashlib.sha1(np.packbits(mask).tobytes() + str(mask.shape).encode()).hexdigest(),
    }


@dataclass
class _Slide:
    """What the steps of :func:`process_slide` share about one open slide."""

    reader: SlideReader
    slide_dir: Path
    size: tuple[int, int]  # (W, H) at proc_mpp
    mask: np.ndarray
    thumb_mpp: tuple[float, float]  # (x, y) µm/px of the tissue mask
    margin: int
    follow: Callable[[dict[str, np.ndarray]], np.ndarray] | None  # see follow_fn

    @property
    def name(self) -> str:
        return self.reader.name

    @property
    def part_dir(self) -> Path:
        return self.slide_dir / "parts"


def process_slide(
    path: str | Path,
    out_dir: str | Path,
    predictor: Any,
    opts: WsiOptions,
    pool: Executor | None = None,
    mask_path: str | Path | None = None,
    resume: bool = False,
) -> SlideResult:
    """Run one slide end to end; outputs go to ``out_dir/<slide name>/``. Raises on unreadable slides."""
    t0 = time.perf_counter()
    with SlideReader(path, opts.slide_mpp) as reader:
        sl = _open_slide(reader, Path(out_dir), predictor, opts, Path(mask_path) if mask_path else None)
        area_mm2 = float(sl.mask.sum()) * sl.thumb_mpp[0] * sl.thumb_mpp[1] / 1e6
        manifest = _manifest(reader, opts, predictor, sl.mask, sl.margin, sl.follow is not None)
        finished = _start_or_resume(sl, manifest, resume)
        if finished is not None:
            return finished
        write_png(sl.slide_dir / "tissue_mask.png", sl.mask.astype(np.uint8) * 255)
        # following crypts needs no band around the tissue: tiles a crypt reaches are run on demand
        grow = 0 if sl.follow is not None else sl.margin
        tissue = TissueIndex(sl.mask, opts.proc_mpp / (sum(sl.thumb_mpp) / 2), grow=grow)
        regions = plan_regions(*sl.size, opts.infer.tile_shape, sl.margin, keep=lambda b: tissue.touches(*b))
        todo = [r for r in regions if not part_path(sl.part_dir, r.index).is_file()]
        source, todo, tiles_total, tiles_todo = _plan_source(sl, predictor, opts, tissue, regions, todo)
        log.info(
            "%s: %d x %d px at %.3f µm/px, tissue %.2f mm², %d regions (%d to do), %d tissue tiles",
            sl.name, *sl.size, opts.proc_mpp, area_mm2, len(regions), len(todo), tiles_total,
        )  # fmt: skip
        bar = tqdm(total=tiles_total, desc=sl.name, unit="tile", leave=False, disable=not opts.progress)
        bar.update(tiles_total - tiles_todo)
        if source is None:
            batch = opts.infer.batch_size
            source = RegionSource(TissuePredictor(predictor, tissue, bar), reader, opts.proc_mpp, batch)
        else:
            source.bar = bar
        stages = dict.fromkeys(("wait_read", "predict", "wait_postproc"), 0.0)
        f = opts.proc_mpp / reader.mpp
        sctx = StitchContext(*sl.size, f, predictor.arch, opts.postproc, opts.type_info, str(sl.part_dir))
        results = _run_regions(source, todo, tissue, sctx, opts, pool, stages, sl.name)
        stages["postproc_worker"] = sum(r.seconds for r in results)
        bar.close()
        if isinstance(source, CachedSource) and source.follow is not None:
            log.info("%s: %d tiles run where crypts reach beyond the tissue tiles", sl.name, source.followed)
        oversize = sum(r.oversize for r in results)
        if oversize:
            log.warning(
                "%s: %d crypts wider than the margin were dropped; increase margin_um", sl.name, oversize
            )
        t_merge = time.perf_counter()
        thumb = reader.thumbnail(reader.overview_mpp(opts.overlay_max_side))
        types = merge_outputs(
            sl.slide_dir, sl.name, sl.part_dir, [r.index for r in regions], opts.type_info,
            reader.mpp, thumb, thumb.shape[1] / reader.dimensions[0],
        )  # fmt: skip
    stages["merge_outputs"] = time.perf_counter() - t_merge
    res = SlideResult(
        slide=sl.name,
        types=types,
        total=sum(types.values()),
        tissue_area_mm2=area_mm2,
        tiles=tiles_total + (source.followed if isinstance(source, CachedSource) else 0),
        oversize=oversize,
        seconds=round(time.perf_counter() - t0, 3),
        stages={k: round(v, 2) for k, v in stages.items()},
    )
    log.info("%s: stage seconds %s", sl.name, res.stages)
    atomic_write_text(sl.slide_dir / "done.json", res.to_json())
    shutil.rmtree(sl.part_dir, ignore_errors=True)
    return res


def _open_slide(
    reader: SlideReader, out_dir: Path, predictor: Any, opts: WsiOptions, mask_path: Path | None
) -> _Slide:
    """Tissue mask (warning when empty) and the margin of the regions, in processing px."""
    mask, thumb_mpp = tissue_mask(reader, opts, mask_path)
    if not mask.any():  # a count of 0 must not look like a slide without crypts
        log.warning(
            "%s: no tissue found (%s); nothing is segmented. Check the slide, or give a tissue "
            "mask with --input_mask_dir",
            reader.name,
            "the supplied mask is empty" if mask_path else "automatic mask: Otsu on saturation",
        )
    inp, out = predictor.input_size, predictor.output_size
    if opts.infer.tile_cache:  # tiles see real context everywhere: only the model's own context is added
        ctx = int(getattr(predictor, "context", (inp - out) // 2))
        inp = out + 2 * ctx
    margin = margin_pixels(opts.infer.margin_um, opts.proc_mpp, inp, out)
    size = reader.size_at(opts.proc_mpp)
    follow = follow_fn(opts, predictor)
    return _Slide(reader, out_dir / reader.name, size, mask, _mpp_label(reader, thumb_mpp), margin, follow)


def _start_or_resume(sl: _Slide, manifest: dict, resume: bool) -> SlideResult | None:
    """Keep the committed regions of an interrupted run with the same settings, or start afresh.

    Returns the stored result when the slide was already finished with these settings.
    """
    done_file, man_file = sl.slide_dir / "done.json", sl.slide_dir / "manifest.json"
    old = json.loads(man_file.read_text()) if resume and man_file.is_file() else None
    if old is not None and old != manifest:
        log.warning("%s: settings or slide changed since the interrupted run; starting it again", sl.name)
        old = None
    if old is not None and done_file.is_file():
        log.info("%s: already finished, skipped (--resume)", sl.name)
        shutil.rmtree(sl.part_dir, ignore_errors=True)
        return SlideResult.from_json(done_file.read_text())
    if old is None:
        shutil.rmtree(sl.part_dir, ignore_errors=True)
        done_file.unlink(missing_ok=True)
    sl.part_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_text(man_file, json.dumps(manifest, indent=1, sort_keys=True))
    return None


def follow_fn(opts: WsiOptions, predictor: Any) -> Callable[[dict[str, np.ndarray]], np.ndarray] | None:
    """The family's foreground test with this run's post-processing, when the tile cache follows crypts
    (``infer.follow_um`` > 0 and the family has a ``map_foreground`` hook); else None."""
    if not (opts.infer.tile_cache and opts.infer.follow_um > 0):
        return None
    family = get_family(str(predictor.arch))
    if family.map_foreground is None:
        return None
    return functools.partial(family.foreground_map, params=opts.postproc)


def _plan_source(
    sl: _Slide,
    predictor: Any,
    opts: WsiOptions,
    tissue: TissueIndex,
    regions: list[Region],
    todo: list[Region],
) -> tuple[CachedSource | None, list[Region], int, int]:
    """The slide-level tile cache (or ``None``: per-region prediction), the regions in processing
    order, and the tissue tiles of the whole slide and of the regions still to do."""
    out = predictor.output_size
    if opts.infer.tile_cache:
        todo = processing_order(todo, *sl.size)
        ctx = (predictor.input_size - out) // 2
        plan = TilePlan.build(todo, out, ctx, tissue)
        tiles_total = TilePlan.build(regions, out, ctx, tissue).n_tiles
        band = math.ceil(opts.infer.follow_um / opts.proc_mpp)
        source = CachedSource(
            predictor, plan, sl.reader, sl.size, opts.proc_mpp, opts.infer.batch_size, sl.follow, band
        )
        return source, todo, tiles_total, plan.n_tiles
    n_tiles = {
        r.index: sum(tissue.near(x, y, x + out, y + out) for x, y in tiles_in(r, out)) for r in regions
    }
    return None, todo, sum(n_tiles.values()), sum(n_tiles[r.index] for r in todo)


def _run_regions(
    source: Any,
    todo: list[Region],
    tissue: TissueIndex,
    ctx: StitchContext,
    opts: WsiOptions,
    pool: Executor | None,
    stages: dict[str, float],
    slide: str = "",
) -> list[RegionResult]:
    """The streaming pipeline: reader thread -> network (this thread) -> post-processing pool.

    ``source`` (:class:`RegionSource` or :class:`CachedSource`) reads a region's pixels in the
    reader thread and turns them into maps here. At most ``infer.postproc_workers`` regions
    wait for post-processing. ``stages`` accumulates where the main thread spent its time
    (see ``SlideResult.stages``).
    """
    q: queue.Queue = queue.Queue(maxsize=max(1, opts.infer.prefetch))
    stop = threading.Event()
    th = threading.Thread(target=_reader_thread, args=(source, todo, q, stop), daemon=True)
    th.start()
    pending: deque[Future | RegionResult] = deque()
    results: list[RegionResult] = []
    clock = time.perf_counter
    workers = max(0, opts.infer.postproc_workers)

    def commit(item: Future | RegionResult) -> None:
        t = clock()
        results.append(item.result() if isinstance(item, Future) else item)
        stages["wait_postproc"] += clock() - t
        trim_heap()  # the region's maps are freed: keep the peak RSS flat (hovercrypt.infer.memory)
        if opts.on_region_committed is not None:
            opts.on_region_committed(slide, results[-1].index)

    try:
        while True:
            t = clock()
            item = q.get()
            stages["wait_read"] += clock() - t
            if item is None:
                break
            if isinstance(item, BaseException):
                raise item
            region, img = item
            t = clock()
            maps = source.maps(region, img)
            stages["predict"] += clock() - t
            del img, item
            if pool is None:
                t = clock()
                pending.append(postprocess_region(region, maps, ctx, tissue.crop(region.ext)))
                stages["wait_postproc"] += clock() - t
            else:
                pending.append(pool.submit(postprocess_region, region, maps, ctx, tissue.crop(region.ext)))
            del maps
            while len(pending) > workers:
                commit(pending.popleft())
        while pending:
            commit(pending.popleft())
    finally:
        stop.set()
        while th.is_alive():
            try:
                q.get(timeout=0.05)
            except queue.Empty:
                pass
        th.join()
    return results
