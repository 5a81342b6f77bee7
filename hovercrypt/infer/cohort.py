"""Cohorts on Ray: ``run_infer.py wsi --ray=ADDRESS`` runs each slide as one Ray task.

Why Ray: a study is hundreds to thousands of slides, and past one machine
users need a proven scheduler (placement by declared CPUs/GPUs, retries of
tasks whose worker died, a cluster they may already run), not a home-made one.

What stays the same as a local run: each task runs the very same job
(:func:`hovercrypt.infer.slide_jobs.run_slide_job`: per-slide OS lock,
resume, error rows), writes into the same ``--output_dir`` (a shared
filesystem on a cluster) with the same layout, and the driver rebuilds
``counts.csv`` from the slide folders. A task that Ray retries after its
worker died finds the manifest and parts its first attempt committed during
this run and continues from them, so the outputs stay byte-identical.

The model goes into the object store once (:class:`CheckpointSource`, the
checkpoint's bytes); each worker process builds its predictor from it once
and keeps it for the next slides.

Ray is an optional extra (``pip install -e ".[ray]"``): it is imported only here.
"""

from __future__ import annotations

import logging
import math
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from tqdm import tqdm

from hovercrypt.config import InferConfig
from hovercrypt.errors import InputError
from hovercrypt.infer.slide_jobs import Busy, SlideBook, SlideJob, make_pool, record_error, run_slide_job
from hovercrypt.infer.wsi import WsiOptions
from hovercrypt.infer.wsi_outputs import SlideResult

log = logging.getLogger("hovercrypt.wsi")
RAY_MISSING = 'Ray is not installed; --ray needs it: pip install -e ".[ray]" (or pip install ray)'
MAX_RETRIES = 3  # Ray re-runs a slide task this often when its worker process dies


def import_ray() -> Any:
    try:
        import ray
    except ImportError as e:
        raise InputError(RAY_MISSING) from e
    return ray


@dataclass
class CheckpointSource:
    """The checkpoint's bytes and how to run it (``infer``: batch size, TTA, window, threads);
    put in the object store once per run."""

    data: bytes
    name: str
    infer: InferConfig = field(default_factory=InferConfig)

    @classmethod
    def from_file(cls, path: str | Path, infer: InferConfig | None = None) -> CheckpointSource:
        return cls(Path(path).read_bytes(), Path(path).name, infer or InferConfig())

    def build(self, device: str) -> Any:
        """A NetworkPredictor on ``device`` (loading needs a file: a private temporary copy)."""
        from hovercrypt.infer.predictor import NetworkPredictor

        with tempfile.TemporaryDirectory(prefix="hovercrypt-ckpt-") as d:
            tmp = Path(d) / self.name
            tmp.write_bytes(self.data)
            pred = NetworkPredictor.from_checkpoint(tmp, device)
        pred.apply_settings(self.infer)
        return pred


#: per worker process: (object id, device) -> predictor; one entry, so a long-lived worker
#: that serves several runs does not keep old models
_PREDICTORS: dict[tuple[str, str], Any] = {}


def _worker_predictor(ray: Any, box: list[Any], device: str) -> Any:
    ref = box[0]  # boxed, so Ray hands the task the reference and the worker can cache by its id
    key = (ref.hex(), device)
    if key not in _PREDICTORS:
        source = ray.get(ref)
        _PREDICTORS.clear()
        _PREDICTORS[key] = source.build(device)
    return _PREDICTORS[key]


def _slide_task(box: list[Any], job: SlideJob, wait: bool, device: str, pool_kind: str) -> SlideResult | Busy:
    """One slide on a Ray worker; its log lines go to ``<output_dir>/wsi.log`` like the driver's."""
    import ray

    handler = logging.FileHandler(job.out_dir / "wsi.log")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s [ray pid %(process)d] %(message)s"))
    log.addHandler(handler)
    log.setLevel(logging.INFO)
    propagate, log.propagate = log.propagate, False  # the driver reports the summary on its console
    pool = None
    try:
        predictor = _worker_predictor(ray, box, device)
        pool = make_pool(job.opts.infer.postproc_workers, pool_kind)
        return run_slide_job(job, predictor, pool, wait)
    finally:
        if pool is not None:
            pool.shutdown(wait=True, cancel_futures=True)
        log.removeHandler(handler)
        log.propagate = propagate
        handler.close()


def connect(address: str, ray_workers: int, cpus_per_slide: float, object_store_mb: int | None) -> bool:
    """Start (``local``) or join (``auto``, ``ray://host:10001``, ``host:6379``) Ray.

    Returns whether this call started Ray (then the caller shuts it down). A process that
    already called ``ray.init`` (a notebook, a test) keeps its Ray as it is.
    """
    ray = import_ray()
    if ray.is_initialized():
        return False
    kw: dict[str, Any] = {"logging_level": logging.WARNING}
    if address == "local":
        kw.update(address="local", num_cpus=max(1, math.ceil(ray_workers * cpus_per_slide)))
        kw["include_dashboard"] = False
        if object_store_mb:
            kw["object_store_memory"] = int(object_store_mb) << 20
    else:
        kw["address"] = address
    try:
        ray.init(**kw)
    except Exception as e:  # ConnectionError, ValueError, RuntimeError, ... depending on the address
        first = str(e).strip().splitlines()[0] if str(e).strip() else ""
        raise InputError(f"--ray={address}: cannot start or reach Ray ({type(e).__name__}: {first})") from e
    return True


def run_cohort(
    slides: Sequence[Path],
    out_dir: str | Path,
    source: Any,
    opts: WsiOptions,
    nr_types: int,
    mask_dir: str | Path | None = None,
    resume: bool = False,
    address: str = "local",
    ray_workers: int = 2,
    cpus_per_slide: float = 1.0,
    gpus_per_slide: float = 0.0,
    object_store_mb: int | None = None,
    pool_kind: str = "thread",
    max_retries: int = MAX_RETRIES,
) -> list[SlideResult]:
    """Process ``slides`` as Ray tasks; same results, files and error rows as ``run_wsi``.

    ``source`` is anything picklable with ``build(device) -> predictor``
    (:class:`CheckpointSource` for a checkpoint); it is put in the object store once.
    A task whose slide another process has locked answers at once; it is then sent again
    to wait for the lock, and takes the other process's result if that finished during this run.
    """
    ray = import_ray()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    started = connect(address, ray_workers, cpus_per_slide, object_store_mb)
    pending: dict[Any, SlideJob] = {}
    try:
        book = SlideBook(slides, out_dir, replace(opts, progress=False), mask_dir, resume, nr_types)
        device = "cuda" if gpus_per_slide > 0 else "cpu"  # Ray sets CUDA_VISIBLE_DEVICES per task
        task = ray.remote(_slide_task).options(
            num_cpus=cpus_per_slide, num_gpus=gpus_per_slide, max_retries=max_retries
        )
        box = [ray.put(source)]

        def submit(job: SlideJob, wait: bool) -> None:
            pending[task.remote(box, job, wait, device, pool_kind)] = job

        for job in book.jobs:
            submit(job, False)
        have = ray.cluster_resources()
        log.info(
            "ray: %d slide task(s), %g CPU / %g GPU each, cluster has %g CPU, %g GPU",
            len(pending),
            cpus_per_slide,
            gpus_per_slide,
            have.get("CPU", 0),
            have.get("GPU", 0),
        )
        if cpus_per_slide > have.get("CPU", 0) or gpus_per_slide > have.get("GPU", 0):
            log.warning(  # not an error: an autoscaling cluster may still add such a node
                "ray: the cluster lacks the %g CPU / %g GPU of a slide task; the tasks wait until nodes join",
                cpus_per_slide,
                gpus_per_slide,
            )
        with tqdm(total=len(slides), desc="slides", unit="slide", disable=not opts.progress) as bar:
            bar.update(len(book.early))
            while pending:
                (ready,), _ = ray.wait(list(pending), num_returns=1)
                job = pending.pop(ready)
                try:
                    out = ray.get(ready)
                except Exception as e:  # the worker died more than max_retries times, or Ray failed
                    first = str(e).strip().splitlines()[0] if str(e).strip() else ""
                    out = record_error(job, f"{job.path}: Ray task failed ({type(e).__name__}: {first})")
                if isinstance(out, Busy):
                    log.info("%s: locked by %s (%s); a task waits for it", out.slide, out.holder, out.lock)
                    submit(job, True)
                    continue
                book.settle(job, out)
                bar.update(1)
        book.write_counts()
        return book.results()
    finally:
        for ref in pending:  # Ctrl-C or an error in the driver: do not leave tasks running
            ray.cancel(ref, force=True)
        if started:
            ray.shutdown()


def load_driver_predictor(args: Mapping[str, Any]) -> tuple[Any, CheckpointSource]:
    """The checkpoint on the driver's CPU, and its bytes for the workers.

    The driver only needs the stored config (with the options written into it), the type
    count and a check that the weights load before cluster time is spent; the slides run on
    the workers' devices, with the same ``infer`` settings.
    """
    from hovercrypt.infer.options import checkpoint_path, load_predictor

    pred = load_predictor(args, device="cpu", wsi=True)
    return pred, CheckpointSource.from_file(checkpoint_path(args), pred.config.infer)


def ray_settings(args: Mapping[str, Any]) -> dict[str, Any]:
    """``--ray_*`` options, checked (one-line errors), as ``run_cohort`` keyword arguments."""

    def num(key: str, default: float, minimum: float) -> float:
        v = args.get(key)
        try:
            x = float(v) if v not in (None, "") else default
        except ValueError as e:
            raise InputError(f"{key} must be a number, got {v!r}") from e
        if not x >= minimum or not math.isfinite(x):
            raise InputError(f"{key} must be >= {minimum:g}, got {v}")
        return x

    workers = num("--ray_workers", 2, 1)
    if workers != int(workers):
        raise InputError(f"--ray_workers must be an integer, got {args.get('--ray_workers')}")
    cpus = num("--ray_cpus_per_slide", 1, 0)
    gpus = num("--ray_gpus_per_slide", 0, 0)
    if cpus == 0 and gpus == 0:
        raise InputError("--ray_cpus_per_slide and --ray_gpus_per_slide cannot both be 0")
    if (args.get("--gpu") or "").strip():  # with Ray, the task's resources say where the network runs
        raise InputError("--gpu is for runs without --ray; with --ray give --ray_gpus_per_slide=1")
    address = str(args["--ray"]).strip()
    if not address:
        raise InputError("--ray needs an address: local, auto, or a cluster such as ray://head:10001")
    if address != "local" and args.get("--ray_workers"):
        log.warning("--ray_workers is for --ray=local; a cluster runs as many slides as its resources allow")
    return {"address": address, "ray_workers": int(workers), "cpus_per_slide": cpus, "gpus_per_slide": gpus}
