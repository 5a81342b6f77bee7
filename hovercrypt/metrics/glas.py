r"""GlaS object-level metrics (Sirinukunwattana et al. 2017, Medical Image Analysis 35, 489-502).

Notation: G_i are the ground-truth objects, S_j the segmented (predicted) ones.
"Maximally overlaps" means the largest intersection in pixels (ties go to
the lower label id).

**Object F1.** Each S_j is compared with G*(S_j), the G of maximal overlap
with it. S_j is a true positive when ``|S_j & G*| >= 0.5 |G*|`` (it covers at
least half of that ground-truth object), else a false positive. A G with no
such S is a false negative. In the (measure-zero) case that two S both cover
exactly half of one G, only one of them counts as TP, the other as FP, so each
G is found at most once. ``P = TP/(TP+FP)``, ``R = TP/(TP+FN)``,
``F1 = 2PR/(P+R)``.

**Object Dice.** With area weights over both sets,

    D_obj = 1/2 [ sum_i gamma_i Dice(G_i, S*(G_i)) + sum_j sigma_j Dice(G*(S_j), S_j) ],
    gamma_i = |G_i| / sum_p |G_p|,   sigma_j = |S_j| / sum_q |S_q|,

where S*(G_i) is the S of maximal overlap with G_i; an object that overlaps
nothing gets Dice 0.

**Object Hausdorff.** Same weighting with the Hausdorff distance
``H(A, B) = max(sup_a inf_b |a-b|, sup_b inf_a |a-b|)`` between pixel sets
(pixel centres, in pixels):

    H_obj = 1/2 [ sum_i gamma_i H(G_i, S*(G_i)) + sum_j sigma_j H(G*(S_j), S_j) ].

An object that overlaps nothing is paired, as the paper prescribes, with the
object of the other set at minimum Hausdorff distance from it.

**Empty cases** (the paper leaves them undefined): both sets empty gives
F1 = Dice = 1 and H = 0; exactly one empty gives F1 = Dice = 0 and H = the
image diagonal (the largest distance the image allows).

**Pooling over a test set.** The paper sums over *all* objects of the test
set (weights normalised by the total area of the set, TP/FP/FN counted over
the set), so the per-image functions also return the raw sums
(:func:`glas_terms`) that :mod:`hovercrypt.metrics.evaluate` pools.
"""

from __future__ import annotations

import numpy as np

from hovercrypt.metrics.contingency import Contingency, contingency
from hovercrypt.metrics.hausdorff import hausdorff_pairs


def _best_partner(a: np.ndarray, b: np.ndarray, inter: np.ndarray, n_a: int) -> tuple[np.ndarray, np.ndarray]:
    """For each object ``i`` of side A: the B index of largest overlap (-1 if none) and that overlap."""
    partner = np.full(n_a, -1, np.int64)
    ov = np.zeros(n_a, np.int64)
    if inter.size:
        order = np.lexsort((b, -inter, a))  # by a, then largest overlap, then lowest id
        first = order[np.r_[True, np.diff(a[order]) != 0]]
        partner[a[first]] = b[first]
        ov[a[first]] = inter[first]
    return partner, ov


def f1_counts(ct: Contingency) -> dict[str, int]:
    """GlaS TP / FP / FN counts of one image (see the module docstring)."""
    g_of_s, ov = _best_partner(ct.pair_p, ct.pair_t, ct.inter, ct.n_pred)
    hit = g_of_s >= 0
    hit[hit] = ov[hit] >= 0.5 * ct.true_area[g_of_s[hit]]
    tp = int(np.unique(g_of_s[hit]).size)
    return {"tp": tp, "fp": ct.n_pred - tp, "fn": ct.n_true - tp}


def f1_from_counts(tp: int, fp: int, fn: int) -> dict[str, float]:
    """Precision, recall, F1; both sides empty -> 1.0, any other zero denominator -> 0.0."""
    if tp + fp + fn == 0:
        return {"precision": 1.0, "recall": 1.0, "f1": 1.0}
    p = tp / (tp + fp) if tp + fp else 0.0
    r = tp / (tp + fn) if tp + fn else 0.0
    f1 = 2 * p * r / (p + r) if p + r else 0.0
    return {"precision": float(p), "recall": float(r), "f1": float(f1)}


class _Hausdorff:
    """Exact pixel-set Hausdorff distances between objects of two relabelled maps, with a cache.

    Each pair is evaluated on the crop of its joint bounding box with the
    compiled early-break scan of :mod:`hovercrypt.metrics.hausdorff`.
    """

    def __init__(self, ct: Contingency) -> None:
        self.tm, self.pm = ct.true_map, ct.pred_map
        self.tbox, self.pbox = ct.true_box, ct.pred_box
        self.ta, self.pa = ct.true_area, ct.pred_area
        self.cache: dict[tuple[int, int], float] = {}

    def __call__(self, i: int, j: int) -> float:
        key = (i, j)
        if key not in self.cache:
            self.prefetch(np.array([i]), np.array([j]))
        return self.cache[key]

    def prefetch(self, ti: np.ndarray, pj: np.ndarray) -> None:
        """Compute many pairs in one compiled call (the matched pairs of an image)."""
        keys = {(int(i), int(j)) for i, j in zip(ti, pj)} - self.cache.keys()
        if not keys:
            return
        arr = np.array(sorted(keys), np.int64).reshape(-1, 2)
        ti, pj = np.ascontiguousarray(arr[:, 0]), np.ascontiguousarray(arr[:, 1])
        d = hausdorff_pairs(self.tm, self.pm, ti, pj, self.tbox, self.pbox, self.ta, self.pa)
        self.cache.update(zip(map(tuple, arr.tolist()), d.tolist()))

    def nearest(self, i: int, from_true: bool) -> tuple[int, float]:
        """Object of the other set at minimum Hausdorff distance, pruned by a bounding-box bound.

        ``H(A, B) >= max(|x0A-x0B|, |x1A-x1B|, |y0A-y0B|, |y1A-y1B|)``: the extreme
        pixel of A on a side lies at least that far from every pixel of B.
        """
        mine = (self.tbox if from_true else self.pbox)[i]
        other = self.pbox if from_true else self.tbox
        bound = np.abs(other - mine[None, :]).max(axis=1)
        best, best_d = -1, np.inf
        for k in np.argsort(bound, kind="stable"):
            if bound[k] >= best_d:
                break
            d = self(i, int(k)) if from_true else self(int(k), i)
            if d < best_d:
                best, best_d = int(k), d
        return best, float(best_d)


def glas_terms(ct: Contingency, hausdorff: bool = True) -> dict[str, float]:
    """Raw sums of one image, poolable over a test set.

    ``dice_g = sum_i |G_i| Dice(G_i, S*)``, ``dice_s = sum_j |S_j| Dice(G*, S_j)``,
    likewise ``haus_g``/``haus_s``; ``area_g``/``area_s`` are the total object
    areas; plus the F1 counts ``tp``/``fp``/``fn``.
    """
    s_of_g, ov_g = _best_partner(ct.pair_t, ct.pair_p, ct.inter, ct.n_true)
    g_of_s, ov_s = _best_partner(ct.pair_p, ct.pair_t, ct.inter, ct.n_pred)
    ta, pa = ct.true_area.astype(np.float64), ct.pred_area.astype(np.float64)
    dice_g = np.where(s_of_g >= 0, 2 * ov_g / (ta + pa[np.maximum(s_of_g, 0)]), 0.0) if ct.n_pred else 0 * ta
    dice_s = np.where(g_of_s >= 0, 2 * ov_s / (pa + ta[np.maximum(g_of_s, 0)]), 0.0) if ct.n_true else 0 * pa
    out = {
        "area_g": float(ta.sum()),
        "area_s": float(pa.sum()),
        "dice_g": float((ta * dice_g).sum()),
        "dice_s": float((pa * dice_s).sum()),
        **f1_counts(ct),
    }
    if hausdorff:
        h_g = np.zeros(ct.n_true)
        h_s = np.zeros(ct.n_pred)
        if ct.n_true and ct.n_pred:
            haus = _Hausdorff(ct)
            mg, ms = s_of_g >= 0, g_of_s >= 0
            haus.prefetch(np.r_[np.flatnonzero(mg), g_of_s[ms]], np.r_[s_of_g[mg], np.flatnonzero(ms)])
            for i in range(ct.n_true):
                h_g[i] = haus(i, int(s_of_g[i])) if s_of_g[i] >= 0 else haus.nearest(i, True)[1]
            for j in range(ct.n_pred):
                h_s[j] = haus(int(g_of_s[j]), j) if g_of_s[j] >= 0 else haus.nearest(j, False)[1]
        else:
            diag = float(np.hypot(*ct.shape))
            h_g[:], h_s[:] = diag, diag
        out["haus_g"] = float((ta * h_g).sum())
        out["haus_s"] = float((pa * h_s).sum())
        out["diag"] = float(np.hypot(*ct.shape))
    return out


def object_dice_from_terms(t: dict[str, float]) -> float:
    if t["area_g"] == 0 and t["area_s"] == 0:
        return 1.0
    if t["area_g"] == 0 or t["area_s"] == 0:
        return 0.0
    return 0.5 * (t["dice_g"] / t["area_g"] + t["dice_s"] / t["area_s"])


def object_hausdorff_from_terms(t: dict[str, float]) -> float:
    if t["area_g"] == 0 and t["area_s"] == 0:
        return 0.0
    if t["area_g"] == 0 or t["area_s"] == 0:
        return float(t["diag"])
    return 0.5 * (t["haus_g"] / t["area_g"] + t["haus_s"] / t["area_s"])


def object_f1(true: np.ndarray, pred: np.ndarray) -> dict[str, float]:
    """GlaS object-level ``{"precision", "recall", "f1", "tp", "fp", "fn"}`` of one image."""
    c = f1_counts(contingency(true, pred))
    return {**f1_from_counts(c["tp"], c["fp"], c["fn"]), **c}


def object_dice(true: np.ndarray, pred: np.ndarray) -> float:
    """GlaS object-level Dice of one image (formula in the module docstring)."""
    return object_dice_from_terms(glas_terms(contingency(true, pred), hausdorff=False))


def object_hausdorff(true: np.ndarray, pred: np.ndarray) -> float:
    """GlaS object-level Hausdorff distance of one image, in pixels (module docstring)."""
    return object_hausdorff_from_terms(glas_terms(contingency(true, pred)))
