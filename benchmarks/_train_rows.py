"""Shared machinery of the benchmarks that train one model per table row.

``recipe_ablation.py`` (one recipe change per row) and ``families.py`` (one model family per
row) both train every row with the real ``run_train.py`` in a child process, so a row is exactly
what a user's run would be and a crash or an out-of-memory kill ends one row, not the benchmark.
Each row has its own log folder: a finished row (its ``metrics.csv`` reaches the last epoch) is
not trained again, an interrupted one resumes from its ``last.pt``. Kept in one module so that the
two benchmarks cannot drift apart in how they train, resume or budget a row.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from hovercrypt.config import Config
from hovercrypt.io.atomic import atomic_write_text
from hovercrypt.presets import glas_hubmap_config

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_PRETRAINED = str(ROOT.parent / "shared/weights/resnet50_imagenet_msra.pth")


def budget_config(steps: int) -> Config:
    """The shipped preset at the short budget: 1 + 2 epochs of ``steps`` batches of 4.

    Phase 1 (frozen encoder) and phase 2 (all layers) keep the preset's optimiser, learning
    rates, schedule and augmentation; only the epoch counts, the warm-up (a fifth of an epoch)
    and the epoch length change, so every row gets the same number of optimiser steps.
    """
    cfg = glas_hubmap_config()
    warmup = max(1, steps // 5)
    phases = [
        dataclasses.replace(cfg.train.phases[0], epochs=1, warmup_steps=warmup),
        dataclasses.replace(cfg.train.phases[1], epochs=2, warmup_steps=warmup),
    ]
    train = dataclasses.replace(cfg.train, phases=phases, max_steps_per_epoch=steps, valid_every=3)
    data = dataclasses.replace(cfg.data, crops_per_epoch=4 * steps)
    return dataclasses.replace(cfg, data=data, train=train)


def without_image_validation(cfg: Config) -> Config:
    """No whole-image validation in the trainer; ``best.pt`` then follows the training loss."""
    train = dataclasses.replace(cfg.train, valid_images=False, best_metric="train/loss", best_mode="min")
    return dataclasses.replace(cfg, train=train)


def total_epochs(cfg: Config) -> int:
    return sum(ph.epochs for ph in cfg.train.phases)


def finished(log_dir: Path, n_epochs: int) -> dict[str, str] | None:
    """The last ``metrics.csv`` row when the run reached epoch ``n_epochs``, else None."""
    path = log_dir / "metrics.csv"
    if not path.is_file():
        return None
    with path.open() as f:
        rows = list(csv.DictReader(f))
    return rows[-1] if rows and int(rows[-1]["epoch"]) >= n_epochs else None


def train_row(
    name: str, cfg: Config, log_dir: Path, num_workers: int, smoke: bool, fresh_args: Sequence[str] = ()
) -> float:
    """Run (or resume) one row in a child ``run_train.py``; returns its wall time in s.

    ``fresh_args`` (e.g. ``--pretrained=...``) are given only when the row starts; a resumed row
    takes everything from its ``last.pt``. The child runs in the repository root, so the log folder
    is made absolute first (a relative one would otherwise name another folder there).
    """
    log_dir = log_dir.resolve()
    log_dir.mkdir(parents=True, exist_ok=True)
    cfg_path = log_dir / "row_config.json"
    atomic_write_text(cfg_path, json.dumps(cfg.to_dict(), indent=1))
    cmd = [sys.executable, str(ROOT / "run_train.py"), "--no_progress", f"--num_workers={num_workers}"]
    if (log_dir / "last.pt").is_file():
        cmd += [f"--resume={log_dir}"]
    else:
        cmd += [f"--config={cfg_path}", f"--log_dir={log_dir}", *fresh_args]
    if smoke:
        cmd += ["--max_steps_per_epoch=1"]
    print(f"[{name}] {' '.join(cmd)}", flush=True)
    t0 = time.perf_counter()
    with (log_dir / "train.log").open("a") as log:
        done = subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT)
    if done.returncode:
        sys.exit(f"error: {name}: run_train.py exited with {done.returncode} (see {log_dir / 'train.log'})")
    return time.perf_counter() - t0


@dataclasses.dataclass(frozen=True)
class RowRun:
    """A trained row: its last ``metrics.csv`` row, this call's wall time (None: was finished), CPU s."""

    last: dict[str, str]
    wall_s: float | None
    train_s: float


def run_row(
    name: str, cfg: Config, log_dir: Path, num_workers: int, smoke: bool, fresh_args: Sequence[str] = ()
) -> RowRun:
    """Train the row unless it is finished; ``train_s`` sums the trainer's per-epoch seconds."""
    n_epochs = total_epochs(cfg)
    wall = None
    if finished(log_dir, n_epochs) is None:
        wall = train_row(name, cfg, log_dir, num_workers, smoke, fresh_args)
    last = finished(log_dir, n_epochs)
    if last is None:
        sys.exit(f"error: {log_dir}: training ended before epoch {n_epochs} (see train.log)")
    with (log_dir / "metrics.csv").open() as f:
        seconds = sum(float(r["seconds"]) for r in csv.DictReader(f))
    return RowRun(last=last, wall_s=wall, train_s=round(seconds, 1))


def write_json(path: str | Path, payload: Any) -> Path:
    """``payload`` as indented JSON, written atomically (a killed run leaves the old file)."""
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out, json.dumps(payload, indent=1, default=float))
    return out
