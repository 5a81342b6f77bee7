"""Type (classification) metrics of detected instances, paired by centroid distance.

Pairing: a true and a predicted instance may pair when their centroids are
within ``radius_px``. Among those candidate pairs a one-to-one pairing is
chosen that first has the **most** pairs and then the **smallest total
distance** (Hungarian on each connected component of the candidate graph,
with cost ``d - big``), so a greedy early choice can never cost a detection.

Definitions (per image; a folder pools the counts):

* detection: ``TP_d`` = pairs, ``FP_d`` = unpaired predictions,
  ``FN_d`` = unpaired true instances; ``F1_d = 2TP_d / (2TP_d + FP_d + FN_d)``.
* type accuracy = fraction of pairs whose types agree.
* per type ``c``: a pair with both types ``c`` is ``TP_c``; a pair with only
  the predicted type ``c`` is ``FP_c``; only the true type ``c`` is ``FN_c``;
  unpaired predictions of type ``c`` add to ``FP_c``, unpaired true instances
  of type ``c`` to ``FN_c``. ``F1_c = 2TP_c / (2TP_c + FP_c + FN_c)``, the plain
  F1 of "instance of type c" detection.
* ``f1_hovernet`` is the weighted form of Graham et al. 2019 (HoVer-Net), kept
  for comparison with that paper:
  ``2(TP_c+TN_c) / (2(TP_c+TN_c) + 2FP_c' + 2FN_c' + FP_d,c + FN_d,c)`` with the
  primed counts over pairs only and ``TN_c`` the pairs where neither type is c.

Empty cases: both sets empty -> every F1 and the accuracy are 1.0; otherwise a
zero denominator gives 0.0. A type with no instance on either side is
omitted from ``per_type``.
"""

from __future__ import annotations

import numpy as np
from scipy.optimize import linear_sum_assignment
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components
from scipy.spatial import cKDTree


def pair_centroids(
    true_xy: np.ndarray, pred_xy: np.ndarray, radius_px: float
) -> tuple[np.ndarray, np.ndarray]:
    """Index arrays ``(ti, pi)`` of the max-cardinality, min-distance pairing within ``radius_px``."""
    true_xy = np.asarray(true_xy, np.float64).reshape(-1, 2)
    pred_xy = np.asarray(pred_xy, np.float64).reshape(-1, 2)
    if radius_px <= 0:
        raise ValueError(f"pairing radius must be > 0 px, got {radius_px}")
    empty = np.zeros(0, np.int64)
    if len(true_xy) == 0 or len(pred_xy) == 0:
        return empty, empty
    # ndarray output keeps coincident centroids (distance 0), which a sparse matrix would drop
    sdm = cKDTree(true_xy).sparse_distance_matrix(cKDTree(pred_xy), radius_px, output_type="ndarray")
    r, c, d = sdm["i"].astype(np.int64), sdm["j"].astype(np.int64), sdm["v"].astype(np.float64)
    if r.size == 0:
        return empty, empty
    nt, npd = len(true_xy), len(pred_xy)
    graph = coo_matrix((np.ones(r.size), (r, c + nt)), shape=(nt + npd,) * 2)
    _, comp = connected_components(graph, directed=False)
    ec = comp[r]
    out_t, out_p = [], []
    order = np.argsort(ec, kind="stable")
    for grp in np.split(order, np.flatnonzero(np.diff(ec[order])) + 1):
        if grp.size == 1:
            out_t.append(r[grp])
            out_p.append(c[grp])
            continue
        ur, ir = np.unique(r[grp], return_inverse=True)
        uc, ic = np.unique(c[grp], return_inverse=True)
        big = 2.0 * radius_px * (min(ur.size, uc.size) + 1) + 1.0
        cost = np.full((ur.size, uc.size), big)  # non-candidates: never better than a real pair
        cost[ir, ic] = d[grp] - big
        ar, ac = linear_sum_assignment(cost)
        ok = cost[ar, ac] < 0
        out_t.append(ur[ar[ok]])
        out_p.append(uc[ac[ok]])
    return np.concatenate(out_t).astype(np.int64), np.concatenate(out_p).astype(np.int64)


def _f1(tp: float, fp: float, fn: float) -> float:
    if tp + fp + fn == 0:
        return 1.0
    return float(2 * tp / (2 * tp + fp + fn))


def type_counts(
    true_types: np.ndarray, pred_types: np.ndarray, ti: np.ndarray, pi: np.ndarray
) -> dict[str, object]:
    """Poolable counts: detection TP/FP/FN, correct pairs, and per type the F1 counts."""
    tt = np.asarray(true_types, np.int64).ravel()
    pt = np.asarray(pred_types, np.int64).ravel()
    paired_t = np.zeros(tt.size, bool)
    paired_p = np.zeros(pt.size, bool)
    paired_t[ti] = True
    paired_p[pi] = True
    a, b = tt[ti], pt[pi]  # true / predicted type of each pair
    per: dict[int, dict[str, int]] = {}
    for c in sorted(set(tt.tolist()) | set(pt.tolist())):
        per[int(c)] = {
            "tp": int(np.sum((a == c) & (b == c))),
            "tn": int(np.sum((a != c) & (b != c))),
            "fp_pair": int(np.sum((a != c) & (b == c))),
            "fn_pair": int(np.sum((a == c) & (b != c))),
            "fp_det": int(np.sum(pt[~paired_p] == c)),
            "fn_det": int(np.sum(tt[~paired_t] == c)),
        }
    return {
        "tp_d": int(ti.size),
        "fp_d": int(pt.size - ti.size),
        "fn_d": int(tt.size - ti.size),
        "correct": int(np.sum(a == b)),
        "per_type": per,
    }


def metrics_from_counts(counts: dict[str, object]) -> dict[str, object]:
    """Turn (possibly pooled) :func:`type_counts` into F1 scores and accuracy."""
    tp, fp, fn = counts["tp_d"], counts["fp_d"], counts["fn_d"]
    if tp + fp + fn == 0:
        acc = 1.0
    else:
        acc = counts["correct"] / tp if tp else 0.0
    per_type = {}
    for c, k in counts["per_type"].items():
        fp_c = k["fp_pair"] + k["fp_det"]
        fn_c = k["fn_pair"] + k["fn_det"]
        num = 2 * (k["tp"] + k["tn"])
        den = num + 2 * k["fp_pair"] + 2 * k["fn_pair"] + k["fp_det"] + k["fn_det"]
        per_type[c] = {
            "f1": _f1(k["tp"], fp_c, fn_c),
            "precision": float(k["tp"] / (k["tp"] + fp_c)) if k["tp"] + fp_c else 0.0,
            "recall": float(k["tp"] / (k["tp"] + fn_c)) if k["tp"] + fn_c else 0.0,
            "f1_hovernet": float(num / den) if den else 0.0,
            "n_true": k["tp"] + k["fn_pair"] + k["fn_det"],
            "n_pred": k["tp"] + k["fp_pair"] + k["fp_det"],
        }
    return {
        "f1_detection": _f1(tp, fp, fn),
        "type_accuracy": float(acc),
        "tp_d": tp,
        "fp_d": fp,
        "fn_d": fn,
        "per_type": per_type,
    }


def type_metrics(
    true_centroids: np.ndarray,
    true_types: np.ndarray,
    pred_centroids: np.ndarray,
    pred_types: np.ndarray,
    radius_px: float,
) -> dict[str, object]:
    """Detection F1, per-type F1 and type accuracy of one image (see the module docstring).

    Centroids are ``(x, y)`` rows; types are integer ids (0 = background is
    allowed but unusual). Returns ``f1_detection``, ``type_accuracy``,
    ``tp_d``/``fp_d``/``fn_d`` and ``per_type = {c: {f1, precision, recall,
    f1_hovernet, n_true, n_pred}}``.
    """
    tc = np.asarray(true_centroids, np.float64).reshape(-1, 2)
    pc = np.asarray(pred_centroids, np.float64).reshape(-1, 2)
    if len(tc) != np.asarray(true_types).size or len(pc) != np.asarray(pred_types).size:
        raise ValueError(
            f"centroid/type counts differ: {len(tc)} true centroids vs {np.asarray(true_types).size} types, "
            f"{len(pc)} predicted centroids vs {np.asarray(pred_types).size} types"
        )
    ti, pi = pair_centroids(tc, pc, radius_px)
    return metrics_from_counts(type_counts(true_types, pred_types, ti, pi))
