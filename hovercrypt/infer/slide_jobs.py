"""Per-slide jobs that several runs, or Ray workers, can share one output folder with.

Why: two runs on one output folder used to process the same slide at once,
delete each other's part files, and the run that wrote ``counts.csv`` last
reported what it had seen, not what was on disk. Here:

- a slide is processed only while its OS file lock (``<out>/<slide>/.lock``,
  :mod:`filelock`) is held, so no two processes ever work on the same slide;
  the kernel drops the lock of a killed process, so a crash never leaves a
  stale lock behind;
- each slide's outcome is its own file (``done.json`` or ``error.json``);
- ``counts.csv`` is rebuilt from those files under its own lock, so whichever
  run finishes last writes the truth.

A run that finds a slide locked does its other slides first and then waits for
the lock. Work that another process finished (or committed) *after this run
started* is taken from disk instead of being redone; that is also how a Ray
task that is retried after its worker died continues from its committed regions.
"""

from __future__ import annotations

import json
import logging
import multiprocessing
import os
import socket
import tempfile
import time
from collections.abc import Sequence
from concurrent.futures import Executor, ProcessPoolExecutor, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from filelock import FileLock, Timeout

from hovercrypt.errors import InputError
from hovercrypt.infer.wsi import WsiOptions, process_slide
from hovercrypt.infer.wsi_outputs import SlideResult, write_counts
from hovercrypt.io.atomic import atomic_write_text

log = logging.getLogger("hovercrypt.wsi")
LOCK_NAME, OWNER_NAME = ".lock", ".lock.owner"
DONE_NAME, ERROR_NAME, MANIFEST_NAME = "done.json", "error.json", "manifest.json"


def find_mask(mask_dir: str | Path | None, stem: str) -> Path | None:
    """``<mask_dir>/<stem>.<png|tif|...>``; a mask folder without this slide's mask is an error."""
    if not mask_dir:
        return None
    for ext in (".png", ".tif", ".tiff", ".bmp", ".jpg"):
        p = Path(mask_dir) / f"{stem}{ext}"
        if p.is_file():
            return p
    raise InputError(f"{mask_dir}: no tissue mask {stem}.png for slide {stem}")


def make_pool(workers: int, kind: str = "thread") -> Executor | None:
    """Post-processing pool: threads (the default) or spawned processes.

    The numba kernels release the GIL (``nogil=True``) and OpenCV does too, so threads
    post-process in parallel without copying each region's maps (~150 MB at 1536 px) to
    another process. Measured with benchmarks/wsi.py at 0.93 um/px, threads were as fast
    and kept the whole run within ~1.4 GB, where two spawned workers added ~1.2 GB each.
    """
    if workers <= 0:
        return None
    if kind == "thread":
        return ThreadPoolExecutor(max_workers=workers)
    return ProcessPoolExecutor(max_workers=workers, mp_context=multiprocessing.get_context("spawn"))


def run_stamp(out_dir: str | Path) -> int:
    """Now, in ns, as the output folder's filesystem sees it.

    Read from a file made there, so on a cluster whose nodes' clocks differ every
    time compared with it (the mtimes of results) comes from the same file server.
    """
    fd, tmp = tempfile.mkstemp(dir=out_dir, prefix=".run-", suffix=".stamp")
    try:
        return os.fstat(fd).st_mtime_ns
    finally:
        os.close(fd)
        os.unlink(tmp)


def _written_since(path: Path, since_ns: int) -> bool:
    try:
        return path.stat().st_mtime_ns >= since_ns
    except FileNotFoundError:
        return False


class SlideLock:
    """The OS lock of one slide's output folder, plus a note of who holds it (for messages)."""

    def __init__(self, slide_dir: Path) -> None:
        self.path = slide_dir / LOCK_NAME
        self.owner = slide_dir / OWNER_NAME
        self._lock = FileLock(str(self.path), thread_local=False)

    def acquire(self, wait: bool) -> bool:
        """Take the lock; without ``wait`` return False at once when another process holds it."""
        try:
            self._lock.acquire(timeout=-1 if wait else 0)
        except Timeout:
            return False
        who = {"host": socket.gethostname(), "pid": os.getpid(), "since": time.strftime("%Y-%m-%d %H:%M:%S")}
        atomic_write_text(self.owner, json.dumps(who))
        return True

    def release(self) -> None:
        self.owner.unlink(missing_ok=True)  # before the lock: a note never names a process that let go
        self._lock.release()

    def holder(self) -> str:
        """``pid N on host H (since T)``, or a vaguer phrase while the holder has not written its note."""
        try:
            who = json.loads(self.owner.read_text())
            return f"pid {who['pid']} on host {who['host']} (since {who['since']})"
        except (OSError, ValueError, KeyError, TypeError):
            return "another process"


@dataclass
class Busy:
    """A job's answer when its slide was locked by another process and it was told not to wait."""

    slide: str
    lock: str
    holder: str


@dataclass
class SlideJob:
    """Everything a worker needs for one slide (picklable: Ray sends it to the worker)."""

    path: Path
    out_dir: Path
    opts: WsiOptions
    mask_dir: str | None
    resume: bool
    since_ns: int  # run_stamp() of the run: results written after it are this run's, or a concurrent one's

    @property
    def slide_dir(self) -> Path:
        return self.out_dir / self.path.stem


def error_message(path: Path, e: BaseException) -> str:
    return str(e) if isinstance(e, InputError) else f"{path}: {type(e).__name__}: {e}"


def record_error(job: SlideJob, msg: str) -> SlideResult:
    """The failed slide's row, also on disk (``error.json``) so any run's counts.csv shows it."""
    res = SlideResult(slide=job.path.stem, status=f"error: {msg}")
    try:
        atomic_write_text(job.slide_dir / ERROR_NAME, res.to_json())
    except OSError as e:  # e.g. an unwritable output folder: the in-memory row still reports it
        log.error("%s: cannot write %s (%s)", job.path.stem, ERROR_NAME, e)
    return res


def run_slide_job(job: SlideJob, predictor: Any, pool: Executor | None, wait: bool) -> SlideResult | Busy:
    """Lock the slide, process it (or take its result from disk), unlock; errors become error rows.

    Interruptions (``BaseException`` that is not an ``Exception``: a kill, Ctrl-C, the test
    hook) propagate and leave the committed regions for a later resume.
    """
    try:
        job.slide_dir.mkdir(parents=True, exist_ok=True)
        lock = SlideLock(job.slide_dir)
        if not lock.acquire(wait):
            return Busy(job.path.stem, str(lock.path), lock.holder())
    except Exception as e:
        return record_error(job, f"{job.path}: cannot lock its output folder ({type(e).__name__}: {e})")
    try:
        d = job.slide_dir
        resume = (
            job.resume
            or _written_since(d / DONE_NAME, job.since_ns)
            or _written_since(d / MANIFEST_NAME, job.since_ns)
        )
        try:
            mask = find_mask(job.mask_dir, job.path.stem)
            res = process_slide(job.path, job.out_dir, predictor, job.opts, pool, mask, resume)
        except Exception as e:  # one bad slide must not stop the run
            return record_error(job, error_message(job.path, e))
        (d / ERROR_NAME).unlink(missing_ok=True)
        return res
    finally:
        lock.release()


def result_on_disk(slide_dir: Path) -> SlideResult | None:
    """The slide's recorded outcome: ``error.json`` (newest failure) wins over ``done.json``."""
    for name in (ERROR_NAME, DONE_NAME):
        try:
            return SlideResult.from_json((slide_dir / name).read_text())
        except FileNotFoundError:
            continue
        except (OSError, ValueError, TypeError) as e:  # a damaged file must not hide the other slides
            return SlideResult(slide=slide_dir.name, status=f"error: {slide_dir / name}: unreadable ({e})")
    return None


def log_result(res: SlideResult) -> None:
    if res.status == "ok":
        log.info(
            "%s: %d crypts, %.2f mm² tissue, %.1f s", res.slide, res.total, res.tissue_area_mm2, res.seconds
        )
    else:
        log.error("%s", res.status.removeprefix("error: "))


class SlideBook:
    """The driver's bookkeeping for a run: one job per slide, results, and ``counts.csv``.

    Slides that share a name (``a.svs`` and ``a.tif``) would share an output folder: the
    later one is an error row kept in memory only, so it never touches the first one's files.
    """

    def __init__(
        self,
        slides: Sequence[Path],
        out_dir: Path,
        opts: WsiOptions,
        mask_dir: str | Path | None,
        resume: bool,
        nr_types: int,
    ) -> None:
        self.out_dir, self.type_info, self.nr_types = out_dir, opts.type_info, nr_types
        since = run_stamp(out_dir)
        self.entries: list[tuple[SlideJob | None, SlideResult | None]] = []
        seen: set[str] = set()
        for p in slides:
            p = Path(p)
            if p.stem in seen:
                msg = f"{p}: another slide named {p.stem!r} was already processed"
                self.entries.append((None, SlideResult(slide=p.stem, status=f"error: {msg}")))
                continue
            seen.add(p.stem)
            md = str(mask_dir) if mask_dir else None
            self.entries.append((SlideJob(p, out_dir, opts, md, resume, since), None))
        self._index = {id(j): i for i, (j, _) in enumerate(self.entries) if j is not None}

    @property
    def jobs(self) -> list[SlideJob]:
        return [j for j, _ in self.entries if j is not None]

    @property
    def early(self) -> list[SlideResult]:
        """Rows settled before any job ran (duplicate names)."""
        return [r for j, r in self.entries if j is None and r is not None]

    def settle(self, job: SlideJob, res: SlideResult) -> None:
        """Record ``job``'s result, log it and rewrite counts.csv (useful while a long run goes on)."""
        self.entries[self._index[id(job)]] = (job, res)
        log_result(res)
        self.write_counts()

    def results(self) -> list[SlideResult]:
        return [r for _, r in self.entries if r is not None]

    def write_counts(self) -> None:
        """counts.csv for the settled slides, each row read back from its slide folder.

        Held under ``counts.csv.lock`` from reading to renaming, so a run that read the
        folders earlier can never rename its older view over a newer one.
        """
        with FileLock(str(self.out_dir / "counts.csv.lock"), thread_local=False):
            rows = []
            for job, res in self.entries:
                if res is None:
                    continue
                disk = result_on_disk(job.slide_dir) if job is not None else None
                rows.append(disk if disk is not None else res)
            write_counts(self.out_dir / "counts.csv", rows, self.type_info, self.nr_types)
