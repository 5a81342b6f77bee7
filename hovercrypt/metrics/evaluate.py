"""Every metric of one image from one overlap table, and their aggregation over a folder.

A folder summary has two views, because the field uses both:

* ``mean``: the average of the per-image values (what HoVer-Net papers report
  for Dice / AJI / PQ);
* ``pooled``: the counts and sums of all images combined before dividing
  (what the GlaS challenge defines for object F1 / Dice / Hausdorff, where the
  weights run over all objects of the test set, and what HoVer-Net uses for
  the type metrics). Pooled PQ / AJI are given too.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from numba import njit

from hovercrypt.metrics import glas, instance, types
from hovercrypt.metrics.contingency import Contingency, contingency

TypeSpec = np.ndarray | Mapping[int, int] | Sequence[int] | None


@njit(cache=True)
def _votes(compact, tmap, n, nt):  # pragma: no cover - compiled
    """(n, nt) pixel counts of each type id inside each object, in one pass."""
    out = np.zeros((n + 1, nt), np.int64)
    h, w = compact.shape
    for y in range(h):
        for x in range(w):
            k = compact[y, x]
            if k > 0:
                out[k, tmap[y, x]] += 1
    return out[1:]


def instance_types(spec: TypeSpec, ids: np.ndarray, compact_map: np.ndarray, what: str) -> np.ndarray:
    """Per-object type ids, aligned with ``ids`` (sorted instance ids).

    ``spec`` is a per-pixel type map (each instance takes its majority non-zero
    type; 0 if it has none), a mapping ``{instance id: type}``, or a sequence
    aligned with the sorted instance ids.
    """
    n = ids.size
    if isinstance(spec, Mapping):
        missing = [int(i) for i in ids if int(i) not in spec]
        if missing:
            raise ValueError(f"{what}: no type given for instance ids {missing[:10]}")
        return np.array([int(spec[int(i)]) for i in ids], np.int64)
    arr = np.asarray(spec)
    if arr.dtype == bool:
        arr = arr.astype(np.int32)
    if arr.ndim == 2 and arr.shape == compact_map.shape:
        if n == 0:
            return np.zeros(0, np.int64)
        if not np.issubdtype(arr.dtype, np.integer) or arr.min() < 0 or arr.max() > 1_000_000:
            raise ValueError(f"{what}: a type map must hold integer type ids in 0..1e6")
        votes = _votes(compact_map, np.ascontiguousarray(arr, dtype=np.int32), n, int(arr.max()) + 1)
        votes[:, 0] = np.where(votes[:, 1:].sum(1) > 0, 0, votes[:, 0])
        return votes.argmax(1).astype(np.int64)
    if arr.ndim == 1 and arr.size == n:
        return arr.astype(np.int64)
    raise ValueError(
        f"{what}: types must be a type map of shape {compact_map.shape}, a mapping id -> type, "
        f"or {n} values aligned with the sorted instance ids; got shape {arr.shape}"
    )


def evaluate_detailed(
    true_inst: np.ndarray,
    pred_inst: np.ndarray,
    true_type: TypeSpec = None,
    pred_type: TypeSpec = None,
    mpp: float = 0.5,
    radius_um: float = 30.0,
    hausdorff: bool = True,
) -> tuple[dict[str, float], dict[str, Any]]:
    """``(metrics, raw)``: the flat metric dict of :func:`evaluate_pair` and the poolable raw counts."""
    if mpp <= 0 or radius_um <= 0:
        raise ValueError(f"mpp and radius_um must be > 0, got mpp={mpp}, radius_um={radius_um}")
    ct = contingency(true_inst, pred_inst)
    return _evaluate_table(ct, true_type, pred_type, mpp, radius_um, hausdorff)


def _evaluate_table(
    ct: Contingency, true_type: TypeSpec, pred_type: TypeSpec, mpp: float, radius_um: float, hausdorff: bool
) -> tuple[dict[str, float], dict[str, Any]]:
    m: dict[str, float] = {"n_true": ct.n_true, "n_pred": ct.n_pred}
    raw: dict[str, Any] = {"n_true": ct.n_true, "n_pred": ct.n_pred, "mpp": mpp}
    m["dice"] = instance.dice_table(ct)
    raw["fg_inter"], raw["fg_sum"] = int(ct.inter.sum()), int(ct.true_area.sum() + ct.pred_area.sum())
    raw["aji"] = instance.aji_sums(ct)
    raw["aji_plus"] = instance.aji_plus_sums(ct)
    m["aji"] = instance.ratio(*raw["aji"])
    m["aji_plus"] = instance.ratio(*raw["aji_plus"])
    q = instance.pq_table(ct)
    m.update(dq=q["dq"], sq=q["sq"], pq=q["pq"])
    raw["pq"] = {k: q[k] for k in ("tp", "fp", "fn", "iou_sum")}
    g = glas.glas_terms(ct, hausdorff=hausdorff)
    raw["glas"] = g
    f = glas.f1_from_counts(g["tp"], g["fp"], g["fn"])
    m.update(obj_precision=f["precision"], obj_recall=f["recall"], obj_f1=f["f1"])
    m["obj_dice"] = glas.object_dice_from_terms(g)
    if hausdorff:
        m["obj_hausdorff"] = glas.object_hausdorff_from_terms(g)
        m["obj_hausdorff_um"] = m["obj_hausdorff"] * mpp
    if true_type is not None or pred_type is not None:
        if true_type is None or pred_type is None:
            raise ValueError("type metrics need both true_type and pred_type")
        tt = instance_types(true_type, ct.true_ids, ct.true_map, "true types")
        pt = instance_types(pred_type, ct.pred_ids, ct.pred_map, "pred types")
        ti, pi = types.pair_centroids(ct.true_centroid, ct.pred_centroid, radius_um / mpp)
        tc = types.type_counts(tt, pt, ti, pi)
        raw["types"] = tc
        m.update(_flat_types(types.metrics_from_counts(tc)))
    return m, raw


def _flat_types(t: dict[str, Any]) -> dict[str, float]:
    out = {"f1_detection": t["f1_detection"], "type_accuracy": t["type_accuracy"]}
    for c, v in sorted(t["per_type"].items()):
        out[f"f1_type{c}"] = v["f1"]
        out[f"f1hn_type{c}"] = v["f1_hovernet"]
    return out


def evaluate_pair(
    true_inst: np.ndarray,
    pred_inst: np.ndarray,
    true_type: TypeSpec = None,
    pred_type: TypeSpec = None,
    mpp: float = 0.5,
    radius_um: float = 30.0,
    hausdorff: bool = True,
) -> dict[str, float]:
    """All metrics of one image as a flat dict of numbers.

    Keys: ``n_true, n_pred, dice, aji, aji_plus, dq, sq, pq, obj_precision,
    obj_recall, obj_f1, obj_dice, obj_hausdorff`` (px) and ``obj_hausdorff_um``;
    with types also ``f1_detection, type_accuracy, f1_type<c>, f1hn_type<c>``
    (plain and HoVer-Net-weighted per-type F1; instances paired by centroids
    within ``radius_um / mpp`` px). ``true_type``/``pred_type``: a type map, a
    mapping id -> type, or values aligned with the sorted instance ids.
    """
    return evaluate_detailed(true_inst, pred_inst, true_type, pred_type, mpp, radius_um, hausdorff)[0]


def _pool_types(raws: list[dict[str, Any]]) -> dict[str, Any] | None:
    parts = [r["types"] for r in raws if "types" in r]
    if not parts:
        return None
    tot: dict[str, Any] = {"tp_d": 0, "fp_d": 0, "fn_d": 0, "correct": 0, "per_type": {}}
    for p in parts:
        for k in ("tp_d", "fp_d", "fn_d", "correct"):
            tot[k] += p[k]
        for c, counts in p["per_type"].items():
            acc = tot["per_type"].setdefault(c, dict.fromkeys(counts, 0))
            for k, v in counts.items():
                acc[k] += v
    return types.metrics_from_counts(tot)


def aggregate(rows: list[dict[str, float]], raws: list[dict[str, Any]]) -> dict[str, Any]:
    """Folder summary of per-image ``(metrics, raw)`` results: ``n_images``, ``mean`` and ``pooled``."""
    if not rows:
        raise ValueError("no images to aggregate")
    keys = sorted({k for r in rows for k in r if k not in ("n_true", "n_pred")})
    mean = {}
    for k in keys:
        vals = [r[k] for r in rows if k in r]  # per-type keys exist only where the type occurs
        mean[k] = float(np.mean(vals))
    pooled: dict[str, Any] = {}
    fg_sum = sum(r["fg_sum"] for r in raws)
    pooled["dice"] = float(2 * sum(r["fg_inter"] for r in raws) / fg_sum) if fg_sum else 1.0
    for k in ("aji", "aji_plus"):
        pooled[k] = instance.ratio(sum(r[k][0] for r in raws), sum(r[k][1] for r in raws))
    tp, fp, fn = (sum(r["pq"][k] for r in raws) for k in ("tp", "fp", "fn"))
    iou_sum = sum(r["pq"]["iou_sum"] for r in raws)
    if tp + fp + fn == 0:
        pooled.update(dq=1.0, sq=1.0, pq=1.0)
    else:
        dq = tp / (tp + 0.5 * fp + 0.5 * fn)
        sq = iou_sum / tp if tp else 0.0
        pooled.update(dq=dq, sq=sq, pq=dq * sq)
    g = {k: sum(r["glas"][k] for r in raws) for k in raws[0]["glas"] if k != "diag"}
    f = glas.f1_from_counts(g["tp"], g["fp"], g["fn"])
    pooled.update(obj_precision=f["precision"], obj_recall=f["recall"], obj_f1=f["f1"])
    pooled["obj_dice"] = glas.object_dice_from_terms(g)
    if "haus_g" in g:
        g["diag"] = max(r["glas"]["diag"] for r in raws)
        pooled["obj_hausdorff"] = glas.object_hausdorff_from_terms(g)
        if len({r["mpp"] for r in raws}) == 1:
            pooled["obj_hausdorff_um"] = pooled["obj_hausdorff"] * raws[0]["mpp"]
    t = _pool_types(raws)
    if t is not None:
        pooled.update(_flat_types(t))
        pooled["type_counts"] = {"tp_d": t["tp_d"], "fp_d": t["fp_d"], "fn_d": t["fn_d"]}
    counts = {
        "n_true": int(sum(r["n_true"] for r in rows)),
        "n_pred": int(sum(r["n_pred"] for r in rows)),
        "pq_tp": int(tp),
        "pq_fp": int(fp),
        "pq_fn": int(fn),
        "obj_tp": int(g["tp"]),
        "obj_fp": int(g["fp"]),
        "obj_fn": int(g["fn"]),
    }
    return {"n_images": len(rows), "counts": counts, "mean": mean, "pooled": pooled}
