"""Tune post-processing parameters on a trained network's maps.

Defaults of each family's settings (:mod:`hovercrypt.config_postproc`) were set on ground-truth
maps, which are clean; a trained network's maps are blurrier and noisier, so
the best marker and size settings differ per model. The network runs once per
image (:class:`Case` holds its maps); the search then only re-runs the cheap
post-processing and the metrics.

The search is coordinate descent: for each parameter in turn, try its
candidate values with the others fixed, keep the best, and repeat for a few
rounds. That is ~40 evaluations per round instead of a grid's thousands, and
the parameters interact weakly enough for it to work. The objective is
``(object F1 + object Dice + PQ) / 3`` pooled over the images: detection,
the GlaS shape score and the one-to-one instance quality together, so a change
that wins on counts by wrecking outlines is not chosen.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from hovercrypt.config_postproc import PostprocSettings, field_names
from hovercrypt.data.resample import resize_labels
from hovercrypt.metrics.evaluate import aggregate, evaluate_detailed
from hovercrypt.postproc.hv import maps_to_instances

METRICS = ("obj_f1", "obj_dice", "pq", "aji")


@dataclasses.dataclass
class Case:
    """One image: the network's maps at the processing resolution and the annotation.

    ``true_inst`` may be at another resolution (the image's own); predicted
    instances are resized to it with nearest-neighbour sampling before scoring,
    as tile inference does.
    """

    name: str
    maps: dict[str, np.ndarray]
    true_inst: np.ndarray
    valid: np.ndarray | None = None  # bool, the size of true_inst: pixels outside it are not scored


def score_postproc(
    cases: Sequence[Case], arch: str, post: PostprocSettings, proc_mpp: float, true_mpp: float
) -> dict[str, float]:
    """Pooled ``METRICS`` of ``post`` over ``cases``, plus ``score`` (the search objective).

    Hausdorff is skipped: it is the slowest metric and the objective does not use it.
    """
    if not cases:
        raise ValueError("score_postproc needs at least one case")
    params = post.pixels(proc_mpp)
    rows, raws = [], []
    for c in cases:
        inst = np.asarray(maps_to_instances(c.maps, arch, params), np.int32)
        if inst.shape != c.true_inst.shape:
            inst = resize_labels(inst, c.true_inst.shape)
        true = c.true_inst
        if c.valid is not None:
            inst, true = np.where(c.valid, inst, 0), np.where(c.valid, true, 0)
        m, raw = evaluate_detailed(true, inst, mpp=true_mpp, hausdorff=False)
        rows.append(m)
        raws.append(raw)
    pooled = aggregate(rows, raws)["pooled"]
    out = {k: float(pooled[k]) for k in METRICS}
    out["score"] = (out["obj_f1"] + out["obj_dice"] + out["pq"]) / 3.0
    return out


def tune_postproc(
    cases: Sequence[Case],
    arch: str,
    start: PostprocSettings,
    proc_mpp: float,
    true_mpp: float,
    rounds: int = 2,
    grid: dict[str, list[Any]] | None = None,
    min_gain: float = 1e-3,
    log: Callable[[str], None] | None = None,
) -> tuple[PostprocSettings, list[dict[str, Any]]]:
    """Coordinate descent from ``start``; returns the best config and the trail of accepted moves.

    A value replaces the current one only if it raises the score by more than
    ``min_gain``: ties and gains within the noise of a few dozen images keep the
    current value, so the result moves away from the start only for a real
    improvement. Stops early when a round changes nothing. ``grid`` defaults to the family's
    ``tune_grid`` in the model registry.
    """
    from hovercrypt.models.registry import get_family

    family = get_family(arch, "arch")
    settings = family.settings_class()
    if not isinstance(start, settings):
        raise ValueError(f"start must be {settings.__name__} for {arch}, got {type(start).__name__}")
    grid = dict(family.tune_grid) if grid is None else grid
    unknown = sorted(set(grid) - field_names(settings))
    if unknown:
        raise ValueError(f"grid names unknown post-processing fields {unknown} of {settings.__name__}")
    best = start
    best_s = score_postproc(cases, arch, best, proc_mpp, true_mpp)
    trail: list[dict[str, Any]] = [{"step": "start", **best_s}]
    for r in range(rounds):
        changed = False
        for key, values in grid.items():
            current = getattr(best, key)
            for v in sorted(set(values) - {current}):
                cand = dataclasses.replace(best, **{key: v})
                s = score_postproc(cases, arch, cand, proc_mpp, true_mpp)
                if s["score"] > best_s["score"] + min_gain:
                    best, best_s, changed = cand, s, True
            if getattr(best, key) != current:
                trail.append({"step": f"round {r + 1}: {key} {current} -> {getattr(best, key)}", **best_s})
        if log is not None:
            log(f"round {r + 1}: score {best_s['score']:.4f}")
        if not changed:
            break
    return best, trail
