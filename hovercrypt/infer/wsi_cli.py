"""``run_infer.py wsi``: count crypts in a folder of whole slides.

One bad slide must not cost a long batch: each slide runs in its own
try/except, its error goes to the log and to ``counts.csv`` (``status =
error: ...``), the others finish, and the exit code is 1. ``counts.csv`` is
rebuilt from the per-slide results on disk after every slide, so it is useful
while a long run is going and true whichever of several concurrent runs
writes it last (see :mod:`hovercrypt.infer.slide_jobs` for the per-slide
locks). ``--ray`` runs the slides as Ray tasks (:mod:`hovercrypt.infer.cohort`).
"""

from __future__ import annotations

import dataclasses
import logging
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from tqdm import tqdm

from hovercrypt.errors import USER_ERROR_EXIT, InputError, UserError
from hovercrypt.infer.options import check_args, float_opt, load_predictor
from hovercrypt.infer.slide_jobs import Busy, SlideBook, SlideJob, find_mask, make_pool, run_slide_job
from hovercrypt.infer.tile_cli import prepare_output_dir, resolve_type_info
from hovercrypt.infer.wsi import WsiOptions
from hovercrypt.infer.wsi_outputs import SlideResult, write_run_report
from hovercrypt.io.slide import SLIDE_EXTS

log = logging.getLogger("hovercrypt.wsi")
__all__ = ["find_mask", "list_slides", "make_pool", "run_wsi", "run_wsi_cli"]  # re-exported helpers


def list_slides(input_dir: str | Path) -> list[Path]:
    d = Path(input_dir)
    if not d.is_dir():
        raise InputError(f"{d}: input directory not found")
    files = sorted(p for p in d.iterdir() if p.is_file() and p.suffix.lower() in SLIDE_EXTS)
    files = [p for p in files if not p.name.startswith(".")]
    if not files:
        raise InputError(f"{d}: no slides or images ({', '.join(SLIDE_EXTS)}) found")
    return files


def run_wsi(
    slides: Sequence[Path],
    out_dir: str | Path,
    predictor: Any,
    opts: WsiOptions,
    mask_dir: str | Path | None = None,
    resume: bool = False,
    pool_kind: str = "thread",
) -> list[SlideResult]:
    """Process ``slides`` one after another; per-slide errors become ``status = error: ...`` rows.

    A slide locked by another process (a concurrent run on the same ``out_dir``) is put off:
    the others are done first, then the run waits for that lock and takes the other run's
    result from disk if it finished after this run started. Results come in input order.
    ``opts.infer.postproc_workers`` threads (or processes, ``pool_kind``) post-process regions.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    book = SlideBook(slides, out_dir, opts, mask_dir, resume, predictor.nr_types)
    pool = make_pool(opts.infer.postproc_workers, pool_kind)
    try:
        with tqdm(total=len(slides), desc="slides", unit="slide", disable=not opts.progress) as bar:
            bar.update(len(book.early))
            deferred: list[SlideJob] = []
            for job in book.jobs:
                out = run_slide_job(job, predictor, pool, wait=False)
                if isinstance(out, Busy):
                    log.info(
                        "%s: locked by %s (%s); doing the other slides first, then waiting for it",
                        out.slide,
                        out.holder,
                        out.lock,
                    )
                    deferred.append(job)
                    continue
                book.settle(job, out)
                bar.update(1)
            for job in deferred:
                log.info("%s: waiting for its lock %s", job.path.stem, job.slide_dir / ".lock")
                out = run_slide_job(job, predictor, pool, wait=True)
                if isinstance(out, Busy):  # cannot happen with wait=True; kept for type narrowing
                    raise RuntimeError(f"{out.lock}: lock not acquired although waited for")
                book.settle(job, out)
                bar.update(1)
        book.write_counts()
        write_run_report(out_dir, book.results(), opts.type_info, predictor.nr_types)
    finally:
        if pool is not None:
            pool.shutdown(wait=True, cancel_futures=True)
    return book.results()


class _TqdmHandler(logging.Handler):
    def emit(self, record: logging.LogRecord) -> None:
        tqdm.write(self.format(record), file=sys.stderr)


def _setup_logging(out_dir: Path) -> list[logging.Handler]:
    """Log to stderr (above the progress bars) and to ``<output_dir>/wsi.log``."""
    out_dir.mkdir(parents=True, exist_ok=True)
    fmt = logging.Formatter("%(asctime)s %(levelname)s %(message)s")
    handlers: list[logging.Handler] = [_TqdmHandler(), logging.FileHandler(out_dir / "wsi.log")]
    for h in handlers:
        h.setFormatter(fmt)
        log.addHandler(h)
    log.setLevel(logging.INFO)
    return handlers


def resolve_proc_mpp(args: Mapping[str, Any], model_mpp: float) -> float:
    mpp = float_opt(args, "--proc_mpp")
    mag = float_opt(args, "--proc_mag")
    if mag is not None:
        mpp = 10.0 / mag
    if mpp is None:
        return model_mpp
    if abs(mpp / model_mpp - 1) > 0.01:
        log.warning("processing at %.3f µm/px but the model was trained at %.3f µm/px", mpp, model_mpp)
    return mpp


def run_wsi_cli(args: Mapping[str, Any]) -> int:
    """Entry point for ``run_infer.py wsi`` (``args``: the docopt dict). Returns the exit code."""
    try:  # before logging, whose wsi.log lives in the output folder
        out_dir = prepare_output_dir(args["--output_dir"])
    except InputError as e:
        print(f"error: {e}", file=sys.stderr)
        return USER_ERROR_EXIT
    handlers = _setup_logging(out_dir)
    try:
        return _run(args, out_dir)
    finally:
        for h in handlers:
            log.removeHandler(h)
            h.close()


def wsi_options(args: Mapping[str, Any], predictor: Any) -> WsiOptions:
    """The run's options: the predictor's config (command line already written into it) and what
    only the slides' run knows (processing resolution, type names, the model's fingerprint)."""
    cfg = predictor.config
    proc_mpp = resolve_proc_mpp(args, float(cfg.proc_mpp))
    model_path = Path(predictor.model_path)
    return WsiOptions(
        proc_mpp=proc_mpp,
        postproc=cfg.postproc.pixels(proc_mpp),
        type_info=resolve_type_info(args.get("--type_info_path"), predictor.nr_types, cfg.type_info),
        infer=dataclasses.replace(cfg.infer),
        slide_mpp=float_opt(args, "--slide_mpp"),
        model_id=f"{model_path.resolve()}:{model_path.stat().st_size}:{int(model_path.stat().st_mtime)}",
    )


def _run(args: Mapping[str, Any], out_dir: Path) -> int:
    try:
        if args.get("--input_mpp"):  # a tile option: silently ignoring it would process at the wrong scale
            raise InputError(
                "--input_mpp is for run_infer.py tile; for slides without a stored resolution use --slide_mpp"
            )
        slides = list_slides(args["--input_dir"])
        if args.get("--input_mask_dir") and not Path(args["--input_mask_dir"]).is_dir():
            raise InputError(f"{args['--input_mask_dir']}: mask directory not found")
        check_args(args, wsi=True)
        ray_kw: dict[str, Any] | None = None
        if args.get("--ray") is not None:
            from hovercrypt.infer.cohort import import_ray, load_driver_predictor, ray_settings

            ray_kw = ray_settings(args)
            import_ray()  # before the model loads: a missing Ray is a one-line error at once
            predictor, source = load_driver_predictor(args)
        else:
            predictor = load_predictor(args, wsi=True)
        opts = wsi_options(args, predictor)
    except (UserError, ValueError) as e:
        log.error("%s", e)
        return USER_ERROR_EXIT
    mask_dir, resume = args.get("--input_mask_dir"), bool(args.get("--resume"))
    if ray_kw is not None:
        from hovercrypt.infer.cohort import run_cohort

        try:
            nr_types = predictor.nr_types
            results = run_cohort(slides, out_dir, source, opts, nr_types, mask_dir, resume, **ray_kw)
            write_run_report(out_dir, results, opts.type_info, predictor.nr_types)
        except InputError as e:  # Ray could not be started or reached
            log.error("%s", e)
            return USER_ERROR_EXIT
    else:
        results = run_wsi(slides, out_dir, predictor, opts, mask_dir, resume)
    failed = [r.slide for r in results if r.status != "ok"]
    if failed:
        log.error("%d of %d slide(s) failed: %s", len(failed), len(results), ", ".join(failed))
        return 1
    return 0
