"""instance_info against a slow per-instance reference, plus contour and edge-case checks."""

from __future__ import annotations

import numpy as np
import pytest

from hovercrypt.postproc import instance_info
from hovercrypt.testing.synthetic import random_ellipses


def slow_reference(inst: np.ndarray, prob: np.ndarray | None) -> dict[int, dict]:
    """One full-image mask per instance: obviously correct, O(N * H * W)."""
    out = {}
    for i in np.unique(inst):
        if i == 0:
            continue
        ys, xs = np.nonzero(inst == i)
        rec = {
            "bbox": [xs.min(), ys.min(), xs.max() + 1, ys.max() + 1],
            "centroid": [xs.mean(), ys.mean()],
            "area": len(xs),
        }
        if prob is not None:
            votes = np.bincount(prob[ys, xs].argmax(-1), minlength=prob.shape[-1])
            votes[0] = 0
            t = int(votes.argmax()) if votes.sum() else 0
            rec["type"], rec["type_prob"] = t, float(prob[ys, xs, t].mean())
        out[int(i)] = rec
    return out


def random_softmax(shape: tuple[int, int], nt: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    logits = rng.normal(0, 1.5, (*shape, nt)).astype(np.float32)
    e = np.exp(logits - logits.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def test_matches_slow_reference_with_types() -> None:
    inst = random_ellipses((160, 200), 14, (6, 30), seed=1, allow_touching=True)
    inst[inst > 0] += 100  # non-consecutive ids with a gap
    inst[inst == 105] = 0
    prob = random_softmax(inst.shape, 4, seed=2)
    prob[inst == 103] = [0.9, 0.05, 0.03, 0.02]  # every pixel votes background -> type 0
    got = instance_info(inst, prob)
    ref = slow_reference(inst, prob)
    assert sorted(got) == sorted(ref)
    for i, r in ref.items():
        g = got[i]
        assert g["bbox"] == [int(v) for v in r["bbox"]]
        assert g["area"] == r["area"]
        assert g["centroid"] == pytest.approx(r["centroid"], abs=1e-9)
        assert g["type"] == r["type"]
        assert g["type_prob"] == pytest.approx(r["type_prob"], rel=1e-5)
    assert got[103]["type"] == 0
    assert any(g["type"] > 0 for g in got.values())


def test_contours_closed_on_boundary_and_inside_bbox() -> None:
    inst = random_ellipses((120, 140), 8, (8, 25), seed=4, allow_touching=True)
    info = instance_info(inst)
    assert len(info) == inst.max()
    for i, rec in info.items():
        c = np.array(rec["contour"])
        assert c.ndim == 2 and c.shape[1] == 2 and len(c) >= 4
        assert (c[0] == c[-1]).all()
        x0, y0, x1, y1 = rec["bbox"]
        assert (c[:, 0] >= x0).all() and (c[:, 0] < x1).all()
        assert (c[:, 1] >= y0).all() and (c[:, 1] < y1).all()
        assert (inst[c[:, 1], c[:, 0]] == i).all()  # vertices are pixels of the instance
        assert rec["type"] == 0 and rec["type_prob"] is None
        # the contour touches all four sides of the box (it is the outer boundary)
        assert c[:, 0].min() == x0 and c[:, 0].max() == x1 - 1
        assert c[:, 1].min() == y0 and c[:, 1].max() == y1 - 1


def test_split_instance_keeps_largest_piece_and_border_instance() -> None:
    inst = np.zeros((50, 60), np.int32)
    inst[0:10, 0:12] = 7  # touches the image corner
    inst[30:45, 30:55] = 9  # big piece of 9
    inst[2:5, 50:53] = 9  # small stray piece of 9
    info = instance_info(inst)
    assert info[7]["bbox"] == [0, 0, 12, 10]
    assert info[7]["contour"][0] == info[7]["contour"][-1]
    c7 = np.array(info[7]["contour"])
    assert c7.min() >= 0 and c7[:, 0].max() == 11 and c7[:, 1].max() == 9
    c9 = np.array(info[9]["contour"])
    assert (c9[:, 1] >= 30).all()  # the outline of the large piece only
    assert info[9]["area"] == 15 * 25 + 9
    assert info[9]["bbox"] == [30, 2, 55, 45]


def test_single_pixel_and_empty() -> None:
    inst = np.zeros((5, 5), np.int32)
    assert instance_info(inst) == {}
    inst[2, 3] = 1
    rec = instance_info(inst)[1]
    assert rec["area"] == 1 and rec["bbox"] == [3, 2, 4, 3] and rec["centroid"] == [3.0, 2.0]
    assert rec["contour"] == [[3, 2], [3, 2]]


def test_huge_sparse_ids() -> None:
    inst = np.zeros((30, 30), np.int64)
    inst[2:8, 2:9] = 10**12
    inst[20:25, 10:20] = 3
    info = instance_info(inst)
    assert sorted(info) == [3, 10**12]
    assert info[10**12]["area"] == 42 and info[3]["bbox"] == [10, 20, 20, 25]


def test_bad_inputs() -> None:
    with pytest.raises(ValueError, match="integer"):
        instance_info(np.zeros((4, 4), np.float32))
    with pytest.raises(ValueError, match="type_prob"):
        instance_info(np.zeros((4, 4), np.int32), np.zeros((4, 5, 3), np.float32))
    with pytest.raises(ValueError, match="negative"):
        instance_info(np.full((4, 4), -1, np.int32))
