"""Evaluate a folder of predictions against a folder of ground truth: the engine of compute_stats.py.

Writes a per-image CSV and a summary JSON (atomically) and returns the
summary; GlaS names carrying ``testA`` / ``testB`` also get per-subset summaries,
since the challenge reports the two test parts separately.
"""

from __future__ import annotations

import csv
import io
import json
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from hovercrypt.errors import InputError
from hovercrypt.io.atomic import atomic_write_text
from hovercrypt.metrics.evaluate import aggregate, evaluate_detailed
from hovercrypt.metrics.labels_io import pair_folders, read_label_file

_SUBSET = re.compile(r"(testA|testB)", re.IGNORECASE)
TABLE_COLUMNS = (
    "n_true",
    "n_pred",
    "dice",
    "aji",
    "aji_plus",
    "pq",
    "obj_f1",
    "obj_dice",
    "obj_hausdorff",
    "f1_detection",
    "type_accuracy",
)


def subset_of(name: str) -> str:
    m = _SUBSET.search(name)
    return "test" + m.group(1)[-1].upper() if m else ""


def evaluate_folders(
    pred_dir: str | Path,
    true_dir: str | Path,
    mode: str = "instance",
    mpp: float = 0.5,
    radius_um: float = 30.0,
    true_image_types: Mapping[str, int] | None = None,
    hausdorff: bool = True,
    progress: bool = True,
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Per-image rows (``name``, ``subset`` + metrics) and the summary dict."""
    if mode not in ("instance", "type"):
        raise InputError(f"--mode must be 'instance' or 'type', got {mode!r}")
    pairs = pair_folders(pred_dir, true_dir)
    rows: list[dict[str, Any]] = []
    raws: list[dict[str, Any]] = []
    for name, pf, tf in tqdm(pairs, desc="images", disable=not progress, leave=False):
        pred, true = read_label_file(pf), read_label_file(tf)
        if pred.inst.shape != true.inst.shape:
            raise InputError(
                f"{name}: prediction {pf} has shape {pred.inst.shape} "
                f"but ground truth {tf} has {true.inst.shape}"
            )
        tt = pt = None
        if mode == "type":
            tt = _true_types(name, true, tf, true_image_types)
            pt = pred.types
            if pt is None:
                raise InputError(
                    f"{pf}: --mode=type needs predicted types (inst_type in .mat, or a type map)"
                )
        try:
            m, raw = evaluate_detailed(true.inst, pred.inst, tt, pt, mpp, radius_um, hausdorff)
        except ValueError as e:
            raise InputError(f"{pf.name} vs {tf.name}: {e}") from e
        rows.append({"name": name, "subset": subset_of(name), **m})
        raws.append(raw)
    summary: dict[str, Any] = {
        "mode": mode,
        "pred_dir": str(pred_dir),
        "true_dir": str(true_dir),
        "mpp": mpp,
        "radius_um": radius_um if mode == "type" else None,
        "all": aggregate([_metrics(r) for r in rows], raws),
    }
    subsets = sorted({r["subset"] for r in rows} - {""})
    if subsets:
        summary["subsets"] = {
            s: aggregate(
                [_metrics(r) for r in rows if r["subset"] == s],
                [raw for r, raw in zip(rows, raws) if r["subset"] == s],
            )
            for s in subsets
        }
    return rows, summary


def _metrics(row: Mapping[str, Any]) -> dict[str, float]:
    return {k: v for k, v in row.items() if k not in ("name", "subset")}


def _true_types(name: str, true: Any, path: Path, image_types: Mapping[str, int] | None) -> Any:
    if image_types is not None:
        if name not in image_types:
            raise InputError(f"{path}: image {name!r} is missing from the types CSV")
        n = int(np.count_nonzero(np.bincount(true.inst.ravel())[1:]))
        return np.full(n, image_types[name], np.int64)
    if true.types is None:
        raise InputError(
            f"{path}: --mode=type needs ground-truth types (inst_type / type_map in .mat, a <stem>_type "
            "map, or --true_types_csv)"
        )
    return true.types


def rows_to_csv(rows: list[dict[str, Any]]) -> str:
    cols: list[str] = ["name", "subset"]
    for r in rows:
        cols += [k for k in r if k not in cols]
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=cols, restval="", lineterminator="\n")
    w.writeheader()
    for r in rows:
        w.writerow({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in r.items()})
    return buf.getvalue()


def format_table(rows: list[dict[str, Any]], summary: dict[str, Any]) -> str:
    """Plain-text table: one line per image, then the mean and pooled lines of each (sub)set."""
    cols = [c for c in TABLE_COLUMNS if any(c in r for r in rows)]
    width = max([len("pooled testA")] + [len(r["name"]) for r in rows]) + 1
    head = "name".ljust(width) + "".join(c[:13].rjust(14) for c in cols)
    lines = [head, "-" * len(head)]

    def fmt(v: Any) -> str:
        if v is None or v == "":
            return "-".rjust(14)
        return f"{v:14d}" if isinstance(v, int) else f"{v:14.4f}"

    for r in rows:
        lines.append(r["name"].ljust(width) + "".join(fmt(r.get(c)) for c in cols))
    lines.append("-" * len(head))
    groups = [("", summary["all"])] + sorted(summary.get("subsets", {}).items())
    for label, agg in groups:
        for view in ("mean", "pooled"):
            vals = dict(agg[view])
            vals["n_true"], vals["n_pred"] = agg["counts"]["n_true"], agg["counts"]["n_pred"]
            name = f"{view} {label}".strip()
            lines.append(name.ljust(width) + "".join(fmt(vals.get(c)) for c in cols))
    return "\n".join(lines)


def write_outputs(
    out_dir: str | Path, rows: list[dict[str, Any]], summary: dict[str, Any]
) -> tuple[Path, Path]:
    """``<out>/per_image.csv`` and ``<out>/summary.json``, written atomically."""
    out = Path(out_dir)
    csv_path, json_path = out / "per_image.csv", out / "summary.json"
    try:
        atomic_write_text(csv_path, rows_to_csv(rows))
        atomic_write_text(json_path, json.dumps(summary, indent=2, default=_json_default) + "\n")
    except OSError as e:  # a file in the way, no permission, full disk: say where, not a traceback
        why = f"{type(e).__name__}: {e.strerror or e}"
        raise InputError(f"{out}: cannot write the outputs there ({why})") from e
    return csv_path, json_path


def _json_default(o: Any) -> Any:
    if isinstance(o, np.integer):
        return int(o)
    if isinstance(o, np.floating):
        return float(o)
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")
