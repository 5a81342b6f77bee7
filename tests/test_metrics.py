"""Instance metrics (Dice, AJI, AJI+, PQ), the overlap table, type metrics and evaluate_pair.

Hand-computed cases state the expected value and its derivation; random maps
are checked against slow per-pair references written here.
"""

from __future__ import annotations

import numpy as np
import pytest
from scipy.optimize import linear_sum_assignment

from hovercrypt.metrics import (
    aji,
    aji_plus,
    contingency,
    dice,
    evaluate_pair,
    pair_centroids,
    pq,
    type_metrics,
)
from hovercrypt.testing.synthetic import random_ellipses


def blocks(shape, *rects):
    """Label map with rectangle k+1 = (y0, y1, x0, x1) (exclusive ends)."""
    out = np.zeros(shape, np.int32)
    for k, (y0, y1, x0, x1) in enumerate(rects):
        out[y0:y1, x0:x1] = k + 1
    return out


# ---------------------------------------------------------------- hand-computed cases


def test_perfect_match_gives_one():
    t = blocks((6, 10), (0, 2, 0, 4), (3, 6, 5, 10))
    # identical maps: every IoU is 1, every object matched
    assert dice(t, t) == 1.0
    assert aji(t, t) == 1.0
    assert aji_plus(t, t) == 1.0
    assert pq(t, t)["pq"] == 1.0 and pq(t, t)["dq"] == 1.0 and pq(t, t)["sq"] == 1.0


def test_empty_prediction():
    t = blocks((4, 4), (0, 2, 0, 2))
    p = np.zeros_like(t)
    # Dice = 2*0/(4+0) = 0; AJI = 0/4 = 0 (GT area in the union); PQ: tp=0, fn=1 -> DQ=0, SQ=0
    assert dice(t, p) == 0.0
    assert aji(t, p) == 0.0
    assert aji_plus(t, p) == 0.0
    assert pq(t, p) == {"dq": 0.0, "sq": 0.0, "pq": 0.0, "tp": 0, "fp": 0, "fn": 1, "iou_sum": 0.0}


def test_empty_ground_truth():
    p = blocks((4, 4), (0, 2, 0, 2))
    t = np.zeros_like(p)
    # mirror of the empty prediction: Dice 0, AJI 0/4, PQ fp=1 -> 0
    assert dice(t, p) == 0.0
    assert aji(t, p) == 0.0
    assert aji_plus(t, p) == 0.0
    assert pq(t, p)["pq"] == 0.0 and pq(t, p)["fp"] == 1


def test_both_empty_is_perfect():
    z = np.zeros((5, 5), np.int32)
    # documented rule: nothing to find and nothing found scores 1
    assert dice(z, z) == 1.0 and aji(z, z) == 1.0 and aji_plus(z, z) == 1.0
    assert pq(z, z)["pq"] == 1.0


def test_merge_one_prediction_over_two_true():
    # G1 = cols 0-3, G2 = cols 4-7 (8 px each, rows 0-1); P1 = cols 0-7 (16 px)
    t = blocks((2, 8), (0, 2, 0, 4), (0, 2, 4, 8))
    p = blocks((2, 8), (0, 2, 0, 8))
    # Dice: foregrounds identical -> 2*16/32 = 1
    assert dice(t, p) == 1.0
    # IoU(G, P1) = 8/16 = 0.5, not > 0.5 -> no match: tp=0, fp=1, fn=2 -> PQ 0
    r = pq(t, p)
    assert (r["tp"], r["fp"], r["fn"], r["pq"]) == (0, 1, 2, 0.0)
    # AJI: both G take P1: C = 8 + 8, U = 16 + 16 -> 0.5
    assert aji(t, p) == pytest.approx(0.5)
    # AJI+: one-to-one, only one G gets P1: C = 8, U = 16 + 8 (unpaired G) -> 1/3
    assert aji_plus(t, p) == pytest.approx(1 / 3)


def test_split_two_predictions_over_one_true():
    # G1 = cols 0-7 (16 px); P1 = cols 0-4 (10 px), P2 = cols 5-7 (6 px)
    t = blocks((2, 8), (0, 2, 0, 8))
    p = blocks((2, 8), (0, 2, 0, 5), (0, 2, 5, 8))
    assert dice(t, p) == 1.0
    # IoU(G1, P1) = 10/16 = 0.625 > 0.5: tp=1, fp=1 (P2), fn=0
    # DQ = 1/(1 + 0.5) = 2/3, SQ = 0.625, PQ = 0.41666...
    r = pq(t, p)
    assert (r["tp"], r["fp"], r["fn"]) == (1, 1, 0)
    assert r["dq"] == pytest.approx(2 / 3)
    assert r["sq"] == pytest.approx(0.625)
    assert r["pq"] == pytest.approx(2 / 3 * 0.625)
    # AJI: G1 takes P1 (C=10, U=16); unused P2 adds 6 -> 10/22; AJI+ pairs the same way
    assert aji(t, p) == pytest.approx(10 / 22)
    assert aji_plus(t, p) == pytest.approx(10 / 22)


def test_shifted_object():
    # 4x4 square shifted right by 3: overlap 4x1 = 4 px, union 16+16-4 = 28
    t = blocks((12, 12), (2, 6, 2, 6))
    p = blocks((12, 12), (2, 6, 5, 9))
    assert dice(t, p) == pytest.approx(2 * 4 / 32)
    # IoU 1/7 < 0.5: unmatched -> PQ 0; AJI = 4/28
    assert pq(t, p)["pq"] == 0.0
    assert aji(t, p) == pytest.approx(4 / 28)
    assert aji_plus(t, p) == pytest.approx(4 / 28)


def test_pq_lower_threshold_uses_one_to_one_pairing():
    # same shift as above, match_iou=0.1 < 1/7: the pair now matches, SQ = 1/7
    t = blocks((12, 12), (2, 6, 2, 6))
    p = blocks((12, 12), (2, 6, 5, 9))
    r = pq(t, p, match_iou=0.1)
    assert r["tp"] == 1 and r["sq"] == pytest.approx(1 / 7) and r["pq"] == pytest.approx(1 / 7)


def test_bad_input_raises():
    with pytest.raises(ValueError, match="shape"):
        pq(np.zeros((3, 3), int), np.zeros((3, 4), int))
    with pytest.raises(ValueError, match="negative"):
        dice(np.full((2, 2), -1), np.zeros((2, 2), int))
    with pytest.raises(ValueError, match="integers"):
        dice(np.full((2, 2), 0.5), np.zeros((2, 2), int))


# ---------------------------------------------------------------- references on random maps


def _ref_tables(t, p):
    tids = [i for i in np.unique(t) if i]
    pids = [j for j in np.unique(p) if j]
    inter = np.array([[np.sum((t == i) & (p == j)) for j in pids] for i in tids]).reshape(
        len(tids), len(pids)
    )
    ta = np.array([np.sum(t == i) for i in tids])
    pa = np.array([np.sum(p == j) for j in pids])
    return inter, ta, pa


def _ref_pq(t, p):
    inter, ta, pa = _ref_tables(t, p)
    iou = inter / (ta[:, None] + pa[None, :] - inter) if inter.size else inter
    m = iou > 0.5
    tp = int(m.sum())
    fp, fn = len(pa) - tp, len(ta) - tp
    dq = tp / (tp + 0.5 * fp + 0.5 * fn)
    return dq * (iou[m].sum() / tp if tp else 0.0)


def _ref_aji(t, p, plus):
    inter, ta, pa = _ref_tables(t, p)
    union = ta[:, None] + pa[None, :] - inter
    iou = inter / union
    c = u = 0
    used = np.zeros(len(pa), bool)
    paired_t = np.zeros(len(ta), bool)
    if plus:
        rows, cols = linear_sum_assignment(-iou)
        pairs = [(i, j) for i, j in zip(rows, cols) if iou[i, j] > 0]
    else:
        pairs = [(i, int(np.argmax(iou[i]))) for i in range(len(ta)) if iou[i].max() > 0]
    for i, j in pairs:
        c += inter[i, j]
        u += union[i, j]
        used[j] = paired_t[i] = True
    u += ta[~paired_t].sum() + pa[~used].sum()
    return c / u


@pytest.mark.parametrize("seed", range(6))
def test_random_maps_match_per_pair_reference(seed):
    rng = np.random.default_rng(seed)
    t = random_ellipses((64, 64), 10, radius_range=(4, 12), seed=seed, allow_touching=True)
    p = random_ellipses((64, 64), 10, radius_range=(4, 12), seed=seed + 100, allow_touching=True)
    if seed % 2:  # a noisy version of the truth instead: many partial overlaps
        p = np.roll(t, rng.integers(1, 4), axis=1)
        p[rng.random(p.shape) < 0.05] = 0
    inter, ta, pa = _ref_tables(t, p)
    ct = contingency(t, p)
    np.testing.assert_array_equal(ct.dense_inter(), inter)
    np.testing.assert_array_equal(ct.true_area, ta)
    np.testing.assert_array_equal(ct.pred_area, pa)
    assert pq(t, p)["pq"] == pytest.approx(_ref_pq(t, p))
    assert aji(t, p) == pytest.approx(_ref_aji(t, p, plus=False))
    assert aji_plus(t, p) == pytest.approx(_ref_aji(t, p, plus=True))
    fg = 2 * np.sum((t > 0) & (p > 0)) / (np.sum(t > 0) + np.sum(p > 0))
    assert dice(t, p) == pytest.approx(fg)


def test_contingency_boxes_centroids_and_huge_ids():
    t = blocks((6, 8), (1, 3, 2, 6), (4, 6, 0, 1))
    ct = contingency(t * 1_000_003, t)  # huge, sparse ids take the sort-based path
    np.testing.assert_array_equal(ct.true_ids, [1_000_003, 2_000_006])
    np.testing.assert_array_equal(ct.true_box, [[1, 2, 3, 6], [4, 0, 6, 1]])  # [y0, x0, y1, x1]
    np.testing.assert_allclose(ct.true_centroid, [[3.5, 1.5], [0.0, 4.5]])  # (x, y)
    np.testing.assert_array_equal(ct.inter, [8, 2])


def test_label_permutation_changes_nothing():
    t = random_ellipses((96, 96), 12, radius_range=(5, 14), seed=3)
    p = np.roll(t, 2, axis=0)
    p[40:44, :] = 0  # cut some objects
    rng = np.random.default_rng(0)
    perm_t = np.r_[0, rng.permutation(np.arange(1, t.max() + 1)) * 7 + 3]  # shuffled ids with gaps
    perm_p = np.r_[0, rng.permutation(np.arange(1, p.max() + 1)) + 50]
    a = evaluate_pair(t, p)
    b = evaluate_pair(perm_t[t], perm_p[p])
    assert a.keys() == b.keys()
    for k in a:
        assert a[k] == pytest.approx(b[k]), k


# ---------------------------------------------------------------- type metrics


def test_type_metrics_hand_case():
    # pairs within 5 px: t0-p0 (d=1), t1-p1 (d=2); t2 and p2 stay unpaired
    tc, tt = [(0, 0), (10, 0), (50, 50)], [1, 2, 1]
    pc, pt = [(1, 0), (10, 2), (100, 100)], [1, 1, 2]
    r = type_metrics(tc, tt, pc, pt, radius_px=5)
    # TP_d=2, FP_d=1, FN_d=1 -> F1_d = 4/6
    assert (r["tp_d"], r["fp_d"], r["fn_d"]) == (2, 1, 1)
    assert r["f1_detection"] == pytest.approx(2 / 3)
    # pairs (1,1) right, (2,1) wrong -> accuracy 1/2
    assert r["type_accuracy"] == pytest.approx(0.5)
    # type 1: TP=1; FP = 1 (pair true 2/pred 1); FN = 1 (unpaired true t2) -> 2/(2+1+1) = 0.5
    assert r["per_type"][1]["f1"] == pytest.approx(0.5)
    # type 2: TP=0 -> F1 0 (FN = pair t1, FP = unpaired p2)
    assert r["per_type"][2]["f1"] == 0.0
    # HoVer-Net weighting, type 1: 2(1+0) / (2 + 2*1 + 0 + 0 + 1) = 2/5
    assert r["per_type"][1]["f1_hovernet"] == pytest.approx(0.4)
    # type 2: TN = 1 (pair 1/1): 2(0+1) / (2 + 0 + 2*1 + 1 + 0) = 2/5
    assert r["per_type"][2]["f1_hovernet"] == pytest.approx(0.4)


def test_unmatched_type_scores_zero():
    # perfect detection, but the second object is predicted as type 3, which is absent in the truth
    r = type_metrics([(0, 0), (20, 0)], [1, 1], [(0, 0), (20, 0)], [1, 3], radius_px=2)
    assert r["f1_detection"] == 1.0
    assert r["type_accuracy"] == 0.5
    assert r["per_type"][3]["f1"] == 0.0 and r["per_type"][3]["n_true"] == 0
    # type 1: TP=1, FN=1 (true 1 predicted 3) -> 2/3
    assert r["per_type"][1]["f1"] == pytest.approx(2 / 3)


def test_type_metrics_empty_and_perfect():
    r = type_metrics(np.zeros((0, 2)), [], np.zeros((0, 2)), [], radius_px=3)
    assert r["f1_detection"] == 1.0 and r["type_accuracy"] == 1.0 and r["per_type"] == {}
    r = type_metrics([(1, 1)], [2], np.zeros((0, 2)), [], radius_px=3)
    assert r["f1_detection"] == 0.0 and r["type_accuracy"] == 0.0 and r["per_type"][2]["f1"] == 0.0
    r = type_metrics([(1, 1), (9, 9)], [2, 1], [(9, 8), (1, 2)], [1, 2], radius_px=3)
    assert r["f1_detection"] == 1.0 and r["type_accuracy"] == 1.0
    assert all(v["f1"] == 1.0 for v in r["per_type"].values())


def test_type_metrics_empty_truth_merge_and_split():
    # empty ground truth, two predictions: both are detection false positives, F1_d = 0
    r = type_metrics(np.zeros((0, 2)), [], [(1, 1), (9, 9)], [1, 2], radius_px=3)
    assert (r["tp_d"], r["fp_d"], r["fn_d"]) == (0, 2, 0) and r["f1_detection"] == 0.0
    assert r["per_type"][1]["f1"] == 0.0 and r["per_type"][2]["f1"] == 0.0
    # merge: one prediction midway between two true glands 4 px apart pairs with one of them only:
    # TP_d = 1, FN_d = 1 -> F1_d = 2 / (2 + 0 + 1) = 2/3; the pair's type is right -> accuracy 1
    r = type_metrics([(0, 0), (4, 0)], [1, 1], [(2, 0)], [1], radius_px=3)
    assert (r["tp_d"], r["fp_d"], r["fn_d"]) == (1, 0, 1)
    assert r["f1_detection"] == pytest.approx(2 / 3) and r["type_accuracy"] == 1.0
    # split: two predictions for one true gland: one pairs, the other is a false positive;
    # both have the true type 2 -> accuracy 1, type-2 F1 = 2 / (2 + 1 + 0) = 2/3
    r = type_metrics([(2, 0)], [2], [(0, 0), (4, 0)], [2, 2], radius_px=3)
    assert (r["tp_d"], r["fp_d"], r["fn_d"]) == (1, 1, 0)
    assert r["type_accuracy"] == 1.0 and r["per_type"][2]["f1"] == pytest.approx(2 / 3)


def test_pairing_maximises_pairs_before_distance():
    # greedy-by-distance would take t1-p0 (d=2) and leave t0 unpaired (t0-p1 is 8.5 > 3.6);
    # the documented pairing keeps both: t0-p0 (3) and t1-p1 (3.5)
    ti, pi = pair_centroids([(0, 0), (5, 0)], [(3, 0), (8.5, 0)], radius_px=3.6)
    assert sorted(zip(ti.tolist(), pi.tolist())) == [(0, 0), (1, 1)]
    # coincident centroids (distance 0) pair too
    ti, pi = pair_centroids([(4, 4)], [(4, 4)], radius_px=1)
    assert ti.tolist() == [0] and pi.tolist() == [0]


def test_evaluate_pair_with_type_maps():
    # two objects; type map votes: object 1 mostly type 2, object 2 type 1
    t = blocks((10, 20), (0, 4, 0, 4), (5, 9, 10, 14))
    t_type = np.where(t == 1, 2, np.where(t == 2, 1, 0))
    p_type = t_type.copy()
    p_type[0, 0] = 1  # one stray pixel does not change the majority
    r = evaluate_pair(t, t, t_type, p_type, mpp=0.5, radius_um=1.0)
    assert r["f1_detection"] == 1.0 and r["type_accuracy"] == 1.0
    assert r["f1_type1"] == 1.0 and r["f1_type2"] == 1.0
    assert r["pq"] == 1.0 and r["obj_hausdorff"] == 0.0 and r["obj_dice"] == 1.0
    # types as a mapping id -> type: swap them -> every pair is wrong
    r = evaluate_pair(t, t, {1: 2, 2: 1}, {1: 1, 2: 2})
    assert r["type_accuracy"] == 0.0 and r["f1_type1"] == 0.0
    with pytest.raises(ValueError, match="no type given"):
        evaluate_pair(t, t, {1: 2}, {1: 1, 2: 2})
