"""Nuclei-style instance metrics: pixel Dice, AJI, AJI+, DQ/SQ/PQ.

Each metric has a public ``f(true, pred)`` form taking two label maps and a
``f_table(ct)`` form taking a :class:`Contingency`, so that
:func:`hovercrypt.metrics.evaluate.evaluate_pair` counts the overlaps once.

Empty cases (no objects on one or both sides) never give NaN. The rule used
throughout: nothing to find and nothing found is a perfect result (1.0);
otherwise a zero denominator gives 0.0.
"""

from __future__ import annotations

import numpy as np

from hovercrypt.metrics.contingency import Contingency, contingency, max_weight_matching


def dice_table(ct: Contingency) -> float:
    """Foreground Dice ``2|T & P| / (|T| + |P|)`` over all instance pixels (1.0 if both are empty)."""
    denom = int(ct.true_area.sum() + ct.pred_area.sum())
    if denom == 0:
        return 1.0
    return float(2 * ct.inter.sum() / denom)


def aji_sums(ct: Contingency) -> tuple[int, int]:
    """``(sum of intersections, sum of unions)`` behind AJI (see :func:`aji_table`); poolable."""
    inter_sum = 0
    union_sum = 0
    used = np.zeros(ct.n_pred, bool)
    has = np.zeros(ct.n_true, bool)
    if ct.inter.size:
        iou = ct.iou
        # best pair per true object: sort by (true, -iou), take the first of each run
        order = np.lexsort((ct.pair_p, -iou, ct.pair_t))
        first = order[np.r_[True, np.diff(ct.pair_t[order]) != 0]]
        inter_sum = int(ct.inter[first].sum())
        union_sum = int(ct.union[first].sum())
        used[ct.pair_p[first]] = True
        has[ct.pair_t[first]] = True
    union_sum += int(ct.true_area[~has].sum()) + int(ct.pred_area[~used].sum())
    return inter_sum, union_sum


def aji_plus_sums(ct: Contingency) -> tuple[int, int]:
    """``(sum of intersections, sum of unions)`` behind AJI+ (see :func:`aji_plus_table`); poolable."""
    sel = max_weight_matching(ct.pair_t, ct.pair_p, ct.iou, ct.n_true, ct.n_pred)
    paired_t = np.zeros(ct.n_true, bool)
    paired_p = np.zeros(ct.n_pred, bool)
    paired_t[ct.pair_t[sel]] = True
    paired_p[ct.pair_p[sel]] = True
    inter_sum = int(ct.inter[sel].sum())
    union_sum = (
        int(ct.union[sel].sum()) + int(ct.true_area[~paired_t].sum()) + int(ct.pred_area[~paired_p].sum())
    )
    return inter_sum, union_sum


def ratio(inter_sum: int, union_sum: int) -> float:
    """AJI-style ratio; an empty union (both maps empty) is a perfect 1.0."""
    return float(inter_sum / union_sum) if union_sum else 1.0


def aji_table(ct: Contingency) -> float:
    """Aggregated Jaccard Index (Kumar et al. 2017).

    Each true object takes the prediction of highest IoU with it (a prediction
    may be taken by several true objects, as in the original definition);
    ``AJI = sum |G & S*| / (sum |G | S*| + sum |unused predictions|)``. A true
    object with no overlapping prediction adds its area to the denominator.
    Both empty -> 1.0.
    """
    return ratio(*aji_sums(ct))


def aji_plus_table(ct: Contingency) -> float:
    """AJI+ (Graham et al. 2019): like AJI but with a one-to-one pairing.

    The pairing maximises the summed IoU (Hungarian, per connected component of
    the overlap graph), so no prediction is counted twice. Unpaired objects on
    either side add their area to the denominator. Both empty -> 1.0.
    """
    return ratio(*aji_plus_sums(ct))


def pq_table(ct: Contingency, match_iou: float = 0.5) -> dict[str, float]:
    """Detection quality, segmentation quality and panoptic quality (Kirillov et al. 2019).

    A pair matches when IoU > ``match_iou``; for ``match_iou >= 0.5`` such
    matches are unique by construction. Below 0.5 a maximal-IoU one-to-one
    pairing is used. ``DQ = TP / (TP + FP/2 + FN/2)``, ``SQ`` = mean IoU of the
    matches (0 when there are none), ``PQ = DQ * SQ``. Both empty -> all 1.0.
    Also returns the counts ``tp``, ``fp``, ``fn`` and ``iou_sum`` so that a
    folder can be pooled.
    """
    if not 0.0 <= match_iou < 1.0:
        raise ValueError(f"match_iou must be in [0, 1), got {match_iou}")
    if ct.n_true == 0 and ct.n_pred == 0:
        return {"dq": 1.0, "sq": 1.0, "pq": 1.0, "tp": 0, "fp": 0, "fn": 0, "iou_sum": 0.0}
    iou = ct.iou if ct.inter.size else np.zeros(0)
    if match_iou >= 0.5:
        sel = np.flatnonzero(iou > match_iou)
    else:
        sel = max_weight_matching(
            ct.pair_t, ct.pair_p, np.where(iou > match_iou, iou, 0.0), ct.n_true, ct.n_pred
        )
    tp = int(sel.size)
    fp, fn = ct.n_pred - tp, ct.n_true - tp
    iou_sum = float(iou[sel].sum())
    dq = tp / (tp + 0.5 * fp + 0.5 * fn)
    sq = iou_sum / tp if tp else 0.0
    return {
        "dq": float(dq),
        "sq": float(sq),
        "pq": float(dq * sq),
        "tp": tp,
        "fp": fp,
        "fn": fn,
        "iou_sum": iou_sum,
    }


def dice(true: np.ndarray, pred: np.ndarray) -> float:
    """Pixel foreground Dice of two label maps (any id > 0 is foreground)."""
    return dice_table(contingency(true, pred))


def aji(true: np.ndarray, pred: np.ndarray) -> float:
    """Aggregated Jaccard Index of two instance maps; see :func:`aji_table`."""
    return aji_table(contingency(true, pred))


def aji_plus(true: np.ndarray, pred: np.ndarray) -> float:
    """AJI+ of two instance maps; see :func:`aji_plus_table`."""
    return aji_plus_table(contingency(true, pred))


def pq(true: np.ndarray, pred: np.ndarray, match_iou: float = 0.5) -> dict[str, float]:
    """``{"dq", "sq", "pq", "tp", "fp", "fn", "iou_sum"}`` of two instance maps; see :func:`pq_table`."""
    return pq_table(contingency(true, pred), match_iou)
