"""Reproducibility helpers: epoch schedule, per-epoch seeds, RNG snapshots.

Every random choice of epoch ``e`` (shuffle order, augmentation, dropout) is
derived from ``(seed, e)`` alone, so a run resumed at epoch ``e`` makes the
same choices as one that never stopped.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from hovercrypt.config import Config, ConfigError


@dataclass(frozen=True)
class EpochSlot:
    """Where global epoch ``epoch`` falls: phase index and epoch within that phase."""

    epoch: int
    phase: int
    epoch_in_phase: int


def schedule(cfg: Config) -> list[EpochSlot]:
    """All epochs of the run, phase after phase (phases with 0 epochs are skipped)."""
    slots = []
    for p, phase in enumerate(cfg.train.phases):
        for e in range(phase.epochs):
            slots.append(EpochSlot(len(slots), p, e))
    return slots


def parse_epochs(spec: str, n_phases: int) -> list[int]:
    """``"2"`` -> every phase 2 epochs; ``"2,3"`` -> one number per phase."""
    try:
        values = [int(s) for s in str(spec).split(",")]
    except ValueError as e:
        raise ConfigError(f"--epochs must be an integer or one integer per phase, got {spec!r}") from e
    if len(values) == 1:
        values = values * n_phases
    if len(values) != n_phases or any(v < 0 for v in values):
        raise ConfigError(f"--epochs={spec!r}: need one value >= 0 or {n_phases} comma-separated values")
    return values


def epoch_seed(seed: int, epoch: int) -> int:
    """A well-mixed 32-bit seed that depends only on (seed, epoch)."""
    return int(np.random.SeedSequence([int(seed), int(epoch)]).generate_state(1)[0])


def init_seed(seed: int) -> int:
    """Seed for weight initialisation, distinct from every epoch's seed."""
    return int(np.random.SeedSequence([int(seed), 2**32 - 1]).generate_state(1)[0])


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def seed_worker(worker_id: int) -> None:
    """DataLoader ``worker_init_fn``: numpy/python RNGs follow the per-worker torch seed."""
    s = torch.initial_seed() % 2**32
    np.random.seed(s)
    random.seed(s)


def rng_state() -> dict[str, Any]:
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": np.random.get_state(),
        "python": random.getstate(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    if "torch" in state:
        torch.set_rng_state(torch.as_tensor(state["torch"], dtype=torch.uint8).cpu())
    if "numpy" in state:
        np.random.set_state(tuple(state["numpy"]) if isinstance(state["numpy"], list) else state["numpy"])
    if "python" in state:
        s = state["python"]
        random.setstate((s[0], tuple(s[1]), s[2]) if isinstance(s, list | tuple) else s)
    if "cuda" in state and torch.cuda.is_available():
        try:
            torch.cuda.set_rng_state_all(state["cuda"])
        except (RuntimeError, IndexError):
            pass  # resumed on a machine with fewer GPUs: per-epoch reseeding covers it
