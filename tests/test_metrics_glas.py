"""GlaS object metrics (object F1, Dice, Hausdorff) and folder aggregation.

Hand-computed cases state the expected value and its derivation. Random maps
and two real GlaS annotations are checked against a slow, direct transcription
of the paper's formulas (one mask per object, scipy's Hausdorff on pixel lists).
"""

from __future__ import annotations

import numpy as np
import pytest
from scipy.spatial.distance import directed_hausdorff

from hovercrypt.io.images import read_label
from hovercrypt.metrics import evaluate_detailed, object_dice, object_f1, object_hausdorff
from hovercrypt.metrics.evaluate import aggregate
from hovercrypt.metrics.hausdorff import hausdorff_pair
from hovercrypt.testing.synthetic import random_ellipses


def blocks(shape, *rects):
    out = np.zeros(shape, np.int32)
    for k, (y0, y1, x0, x1) in enumerate(rects):
        out[y0:y1, x0:x1] = k + 1
    return out


def test_perfect_match():
    t = blocks((10, 10), (0, 3, 0, 3), (5, 9, 4, 10))
    assert object_f1(t, t)["f1"] == 1.0
    assert object_dice(t, t) == 1.0
    assert object_hausdorff(t, t) == 0.0


def test_empty_cases():
    t = blocks((3, 4), (0, 2, 0, 2))
    z = np.zeros_like(t)
    # empty prediction: TP=0, FN=1 -> P = R = F1 = 0; Dice 0; Hausdorff = diagonal sqrt(3^2+4^2) = 5
    assert object_f1(t, z) == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "tp": 0, "fp": 0, "fn": 1}
    assert object_dice(t, z) == 0.0
    assert object_hausdorff(t, z) == pytest.approx(5.0)
    # empty truth: FP=1 -> 0; same Dice and Hausdorff
    assert object_f1(z, t)["f1"] == 0.0 and object_f1(z, t)["fp"] == 1
    assert object_dice(z, t) == 0.0
    assert object_hausdorff(z, t) == pytest.approx(5.0)
    # both empty: documented as perfect
    assert object_f1(z, z)["f1"] == 1.0 and object_dice(z, z) == 1.0 and object_hausdorff(z, z) == 0.0


def test_merge():
    # G1 = cols 0-3, G2 = cols 4-7 (8 px each); P1 = cols 0-7 (16 px)
    t = blocks((2, 8), (0, 2, 0, 4), (0, 2, 4, 8))
    p = blocks((2, 8), (0, 2, 0, 8))
    # P1's ground truth: tie 8/8 -> lower id G1; covers 100% of G1 -> TP. G2 not found -> FN.
    # P = 1, R = 1/2, F1 = 2/3
    f = object_f1(t, p)
    assert (f["tp"], f["fp"], f["fn"]) == (1, 0, 1)
    assert f["f1"] == pytest.approx(2 / 3)
    # Dice(G, P1) = 2*8/(8+16) = 2/3 for both G (weights 1/2 each) and for P1 -> D_obj = 2/3
    assert object_dice(t, p) == pytest.approx(2 / 3)
    # H(G1, P1): P1 pixel at col 7 is 4 px from G1 (col 3); likewise G2 -> every term 4
    assert object_hausdorff(t, p) == pytest.approx(4.0)


def test_split():
    # G1 = cols 0-7 (16 px); P1 = cols 0-4 (10 px), P2 = cols 5-7 (6 px)
    t = blocks((2, 8), (0, 2, 0, 8))
    p = blocks((2, 8), (0, 2, 0, 5), (0, 2, 5, 8))
    # P1 covers 10/16 >= 50% of G1 -> TP; P2 covers 6/16 -> FP. P = 1/2, R = 1, F1 = 2/3
    f = object_f1(t, p)
    assert (f["tp"], f["fp"], f["fn"]) == (1, 1, 0)
    assert f["f1"] == pytest.approx(2 / 3)
    # GT side: Dice(G1, P1) = 20/26. Pred side: (10/16) * 20/26 + (6/16) * Dice(G1, P2) = (6/16) * 12/22
    expected = 0.5 * (20 / 26 + (10 / 16) * (20 / 26) + (6 / 16) * (12 / 22))
    assert object_dice(t, p) == pytest.approx(expected)
    # H(G1, P1) = 3 (G1 col 7 to P1 col 4); H(G1, P2) = 5 (G1 col 0 to P2 col 5)
    # GT side 3; pred side (10/16)*3 + (6/16)*5 = 3.75 -> H_obj = (3 + 3.75)/2 = 3.375
    assert object_hausdorff(t, p) == pytest.approx(3.375)


def test_shifted_object_hausdorff_equals_shift():
    t = blocks((12, 12), (2, 6, 2, 6))
    for shift in (1, 3, 5):
        p = np.roll(t, shift, axis=1)
        # every pixel moves by `shift` along x -> H = shift on both sides
        assert object_hausdorff(t, p) == pytest.approx(shift)
    # shift 3: overlap 4 px of 16 -> 25% < 50%: FP and FN -> F1 0; Dice 2*4/32 = 0.25
    p = np.roll(t, 3, axis=1)
    assert object_f1(t, p)["f1"] == 0.0
    assert object_dice(t, p) == pytest.approx(0.25)
    # a diagonal shift (2, 1): H = sqrt(5)
    assert object_hausdorff(t, np.roll(np.roll(t, 2, axis=0), 1, axis=1)) == pytest.approx(np.sqrt(5))


def test_unmatched_objects_use_nearest_by_hausdorff():
    # one row of 20 px: G1 = cols 0-3 (4 px), G2 = cols 15-19 (5 px); P1 = cols 0-3, P2 = cols 10-11
    t = np.zeros((1, 20), np.int32)
    t[0, 0:4], t[0, 15:20] = 1, 2
    p = np.zeros_like(t)
    p[0, 0:4], p[0, 10:12] = 1, 2
    # P2 overlaps nothing: H(G1, P2) = max(10, 8) = 10, H(G2, P2) = max(8, 5) = 8 -> G2 (8)
    # G2 overlaps nothing: H(G2, P1) = max(16, 15) = 16, H(G2, P2) = 8 -> P2 (8)
    # GT side: (4/9)*0 + (5/9)*8 = 40/9; pred side: (4/6)*0 + (2/6)*8 = 8/3
    assert object_hausdorff(t, p) == pytest.approx(0.5 * (40 / 9 + 8 / 3))
    # Dice: unmatched objects count 0: GT side (4/9)*1, pred side (4/6)*1
    assert object_dice(t, p) == pytest.approx(0.5 * (4 / 9 + 4 / 6))


def test_label_permutation_changes_nothing():
    t = random_ellipses((80, 80), 10, radius_range=(4, 12), seed=5)
    p = np.roll(t, 3, axis=1)
    p[30:34] = 0
    perm = np.r_[0, np.random.default_rng(1).permutation(np.arange(1, 200))]
    assert object_hausdorff(perm[t], perm[p]) == pytest.approx(object_hausdorff(t, p))
    assert object_dice(perm[t], perm[p]) == pytest.approx(object_dice(t, p))
    assert object_f1(perm[t], perm[p]) == object_f1(t, p)


# ---------------------------------------------------------------- slow reference


def _objects(lab):
    return {int(i): lab == i for i in np.unique(lab) if i}


def _h(a, b):
    pa, pb = np.argwhere(a), np.argwhere(b)
    return max(directed_hausdorff(pa, pb)[0], directed_hausdorff(pb, pa)[0])


def _partner(mask, other):
    ids, cnt = np.unique(other[mask], return_counts=True)
    cnt, ids = cnt[ids > 0], ids[ids > 0]
    return int(ids[np.argmax(cnt)]) if ids.size else None  # argmax: first (lowest id) on ties


def _reference(t, p):
    gs, ss = _objects(t), _objects(p)
    tp = sum(
        1
        for g in gs
        if any(_partner(s, t) == g and np.sum(s & gs[g]) >= 0.5 * gs[g].sum() for s in ss.values())
    )
    f1 = 2 * tp / (len(gs) + len(ss))  # = 2PR/(P+R) with P = tp/|S|, R = tp/|G|

    def side(objs, other_objs, other_lab, fn):
        total = sum(m.sum() for m in objs.values())
        acc = 0.0
        for m in objs.values():
            q = _partner(m, other_lab)
            if q is None:
                val = fn(m, None, other_objs)
            else:
                val = fn(m, other_objs[q], other_objs)
            acc += m.sum() / total * val
        return acc

    def dice(m, q, _):
        return 0.0 if q is None else 2 * np.sum(m & q) / (m.sum() + q.sum())

    def haus(m, q, others):
        return _h(m, q) if q is not None else min(_h(m, o) for o in others.values())

    d = 0.5 * (side(gs, ss, p, dice) + side(ss, gs, t, dice))
    h = 0.5 * (side(gs, ss, p, haus) + side(ss, gs, t, haus))
    return f1, d, h


@pytest.mark.parametrize("seed", range(4))
def test_random_maps_match_reference(seed):
    t = random_ellipses((64, 64), 8, radius_range=(4, 12), seed=seed, allow_touching=True)
    p = random_ellipses((64, 64), 8, radius_range=(4, 12), seed=seed + 50, allow_touching=True)
    if seed % 2:
        p = np.roll(t, 4, axis=0)
        p[np.random.default_rng(seed).random(p.shape) < 0.03] = 0
    f1, d, h = _reference(t, p)
    assert object_f1(t, p)["f1"] == pytest.approx(f1)
    assert object_dice(t, p) == pytest.approx(d)
    assert object_hausdorff(t, p) == pytest.approx(h)


def test_hausdorff_kernel_matches_scipy_on_random_shapes():
    for k in range(30):
        a = (random_ellipses((40, 40), 3, radius_range=(2, 12), seed=k, allow_touching=True) > 0).astype(
            np.int32
        )
        b = random_ellipses((40, 40), 3, radius_range=(2, 12), seed=k + 99, allow_touching=True) > 0
        b = b.astype(np.int32)
        if a.any() and b.any():
            got = hausdorff_pair(a, 1, a.sum(), b, 1, b.sum(), 0, 0, 40, 40)
            assert got == pytest.approx(_h(a > 0, b > 0))


def test_real_glas_annotations_match_reference(glas_dir):
    # a real annotation against a degraded copy of itself (shift + a cut band) and against another image
    t = read_label(glas_dir / "train_1_anno.png")
    p = np.roll(t, 6, axis=1)
    p[200:215] = 0
    f1, d, h = _reference(t, p)
    assert object_f1(t, p)["f1"] == pytest.approx(f1)
    assert object_dice(t, p) == pytest.approx(d)
    assert object_hausdorff(t, p) == pytest.approx(h)
    assert object_hausdorff(t, t) == 0.0 and object_dice(t, t) == 1.0


def test_pooled_aggregation_follows_the_paper():
    # image A: perfect (G = S = 4 px); image B: split case above (G 16 px; P 10 + 6 px)
    ta = blocks((2, 8), (0, 2, 0, 2))
    tb = blocks((2, 8), (0, 2, 0, 8))
    pb = blocks((2, 8), (0, 2, 0, 5), (0, 2, 5, 8))
    ra = evaluate_detailed(ta, ta)
    rb = evaluate_detailed(tb, pb)
    s = aggregate([ra[0], rb[0]], [ra[1], rb[1]])
    # pooled F1: TP = 1 + 1, FP = 0 + 1, FN = 0 -> P = 2/3, R = 1, F1 = 0.8
    assert s["pooled"]["obj_f1"] == pytest.approx(0.8)
    # pooled Dice: weights over all objects of the set.
    # GT side: (4*1 + 16*20/26) / 20; pred side: (4*1 + 10*20/26 + 6*12/22) / 20
    gt = (4 + 16 * 20 / 26) / 20
    pr = (4 + 10 * 20 / 26 + 6 * 12 / 22) / 20
    assert s["pooled"]["obj_dice"] == pytest.approx(0.5 * (gt + pr))
    # pooled Hausdorff: GT side (4*0 + 16*3)/20; pred side (4*0 + 10*3 + 6*5)/20
    assert s["pooled"]["obj_hausdorff"] == pytest.approx(0.5 * (48 / 20 + 60 / 20))
    # mean view = average of the per-image values
    assert s["mean"]["obj_f1"] == pytest.approx((1 + 2 / 3) / 2)
    # pooled PQ: tp = 2, fp = 1, fn = 0, IoU sum = 1 + 10/16 -> DQ = 2/2.5, SQ = 1.625/2
    assert s["pooled"]["pq"] == pytest.approx(0.8 * 1.625 / 2)
