"""Training logs: TensorBoard scalars, a per-epoch CSV and a PNG of the curves.

The epoch history also lives in the checkpoint, so after ``--resume`` the CSV
and the plot are rewritten from it: epochs that a killed run had logged but not
checkpointed disappear instead of appearing twice.
"""

from __future__ import annotations

import csv
import io
import math
from pathlib import Path
from typing import Any

from hovercrypt.io.atomic import atomic_write_bytes, atomic_write_text

CSV_NAME = "metrics.csv"
PLOT_NAME = "curves.png"
TB_DIR = "tensorboard"
_FIRST_COLUMNS = ["epoch", "phase", "phase_name", "lr", "seconds", "sec_per_step"]


def write_csv(path: str | Path, history: list[dict[str, Any]]) -> None:
    """Rewrite the whole CSV atomically (a crash never leaves half a row)."""
    keys: list[str] = [k for k in _FIRST_COLUMNS if any(k in row for row in history)]
    for row in history:
        keys += [k for k in row if k not in keys]
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=keys, restval="")
    writer.writeheader()
    for row in history:
        writer.writerow({k: _fmt(v) for k, v in row.items()})
    atomic_write_text(path, buf.getvalue())


def read_csv(path: str | Path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def _fmt(v: Any) -> Any:
    return f"{v:.6g}" if isinstance(v, float) else v


def plot_curves(path: str | Path, history: list[dict[str, Any]]) -> None:
    """One panel for the losses (train vs valid), one for the validation metrics."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    epochs = [row["epoch"] for row in history]
    keys = sorted({k for row in history for k, v in row.items() if isinstance(v, int | float) and "/" in k})
    totals = [k for k in keys if k.endswith("/loss")]
    parts = [k for k in keys if k.endswith("_loss")]
    metrics = [k for k in keys if k.startswith("valid/") and not k.endswith("loss")]
    fig, axes = plt.subplots(1, 3, figsize=(16, 4.5))
    panels = [(axes[0], totals, "total loss"), (axes[1], parts, "loss terms")]
    panels.append((axes[2], metrics, "validation"))
    # one colour per quantity, train solid and valid dashed, so the pairs are easy to compare
    terms = sorted({k.split("/", 1)[1] for k in keys})
    colours = {t: plt.get_cmap("tab20")(i % 20) for i, t in enumerate(terms)}
    for ax, names, title in panels:
        for k in names:
            ys = [row.get(k, math.nan) for row in history]
            split, term = k.split("/", 1)
            style = "--" if split == "valid" and ax is not axes[2] else "-"
            colour = colours[term] if ax is not axes[0] else None
            ax.plot(epochs, ys, style, color=colour, marker="o", markersize=3, label=k)
        ax.xaxis.get_major_locator().set_params(integer=True)
        ax.set_xlabel("epoch")
        ax.set_title(title)
        ax.grid(alpha=0.3)
        if names:
            ax.legend(fontsize=8)
    phase_starts = [row["epoch"] for prev, row in zip(history, history[1:]) if row["phase"] != prev["phase"]]
    for ax in axes:
        for x in phase_starts:
            ax.axvline(x - 0.5, color="grey", linestyle="--", linewidth=0.8)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    plt.close(fig)
    atomic_write_bytes(path, buf.getvalue())


class TrainLogger:
    """Writes everything under ``log_dir``; a no-op on non-zero DDP ranks."""

    def __init__(self, log_dir: str | Path, enabled: bool = True, purge_step: int | None = None) -> None:
        self.log_dir = Path(log_dir)
        self.enabled = enabled
        self.tb = None
        if enabled:
            from torch.utils.tensorboard import SummaryWriter

            self.log_dir.mkdir(parents=True, exist_ok=True)
            # purge_step drops events a killed run wrote after its last checkpoint
            self.tb = SummaryWriter(str(self.log_dir / TB_DIR), purge_step=purge_step)

    def step(self, global_step: int, scalars: dict[str, float]) -> None:
        if self.tb is not None:
            for k, v in scalars.items():
                self.tb.add_scalar(k, v, global_step)

    def epoch(self, global_step: int, row: dict[str, Any], history: list[dict[str, Any]]) -> None:
        if not self.enabled:
            return
        for k, v in row.items():
            if "/" in k and isinstance(v, int | float):
                self.tb.add_scalar(f"epoch/{k}", v, global_step)
        if "lr" in row:
            self.tb.add_scalar("epoch/lr", row["lr"], global_step)
        self.tb.flush()
        write_csv(self.log_dir / CSV_NAME, history)

    def finish(self, history: list[dict[str, Any]]) -> None:
        if not self.enabled:
            return
        if history:
            plot_curves(self.log_dir / PLOT_NAME, history)
        self.close()

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()
            self.tb = None
