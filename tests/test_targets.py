"""HV / NP / UNet targets against slow, obviously-correct references."""

from __future__ import annotations

import numpy as np
import pytest

from hovercrypt.data.targets import center_crop, compact_ids, hv_maps, np_target, seg_target, tp_target
from hovercrypt.testing.synthetic import random_ellipses


def slow_hv(inst: np.ndarray) -> np.ndarray:
    """Reference: one whole-image mask per instance, pixel offsets from the mean, per-side max scaling."""
    out = np.zeros(inst.shape + (2,), np.float64)
    for k in np.unique(inst):
        if k == 0:
            continue
        ys, xs = np.nonzero(inst == k)
        for c, coords in enumerate((xs, ys)):
            d = coords - coords.mean()
            neg, pos = d < 0, d > 0
            v = np.zeros_like(d)
            if neg.any():
                v[neg] = d[neg] / np.abs(d[neg]).max()
            if pos.any():
                v[pos] = d[pos] / d[pos].max()
            out[ys, xs, c] = v
    return out


def slow_seg(inst: np.ndarray, r: int) -> np.ndarray:
    h, w = inst.shape
    seg = (inst > 0).astype(np.int64)
    for y in range(h):
        for x in range(w):
            k = inst[y, x]
            if k == 0:
                continue
            for dy in range(-r, r + 1):
                for dx in range(-r, r + 1):
                    yy, xx = y + dy, x + dx
                    if dx * dx + dy * dy <= r * r and 0 <= yy < h and 0 <= xx < w and inst[yy, xx] != k:
                        seg[y, x] = 2
    return seg


@pytest.fixture(scope="module")
def layout() -> np.ndarray:
    return random_ellipses((160, 200), 12, radius_range=(6, 30), seed=3, allow_touching=True)


def test_hv_equals_slow_reference(layout):
    hv = hv_maps(layout)
    assert hv.dtype == np.float32 and hv.shape == layout.shape + (2,)
    np.testing.assert_allclose(hv, slow_hv(layout), atol=1e-5)


def test_hv_range_background_and_extremes(layout):
    hv = hv_maps(layout)
    assert hv.min() >= -1.0 and hv.max() <= 1.0
    assert np.all(hv[layout == 0] == 0)
    for k in np.unique(layout)[1:]:
        m = layout == k
        for c in range(2):  # every instance reaches both ends on both axes
            assert hv[m, c].min() == pytest.approx(-1.0) and hv[m, c].max() == pytest.approx(1.0)


def test_hv_sign_and_zero_at_centre_of_mass():
    inst = np.zeros((60, 80), np.int32)
    inst[10:31, 20:61] = 7  # 21 x 41 rectangle: centre of mass at (x=40, y=20), a pixel centre
    hv = hv_maps(inst)
    assert hv[20, 40, 0] == pytest.approx(0, abs=1e-6) and hv[20, 40, 1] == pytest.approx(0, abs=1e-6)
    assert np.all(hv[10:31, 20:40, 0] < 0) and np.all(hv[10:31, 41:61, 0] > 0)  # left / right of centre
    assert np.all(hv[10:20, 20:61, 1] < 0) and np.all(hv[21:31, 20:61, 1] > 0)  # above / below
    assert hv[20, 20, 0] == pytest.approx(-1) and hv[20, 60, 0] == pytest.approx(1)
    assert hv[10, 40, 1] == pytest.approx(-1) and hv[30, 40, 1] == pytest.approx(1)
    assert hv[20, 30, 0] == pytest.approx(-0.5)


def test_hv_arbitrary_ids_match_compact_ids(layout):
    sparse = np.where(layout > 0, layout * 1_000_003 + 17, 0).astype(np.int64)  # huge, non-consecutive
    np.testing.assert_allclose(hv_maps(sparse), hv_maps(layout), atol=1e-6)
    shifted = np.where(layout > 0, layout + 500, 0).astype(np.uint16)
    np.testing.assert_allclose(hv_maps(shifted), hv_maps(layout), atol=1e-6)
    ids, n = compact_ids(sparse)
    assert n == len(np.unique(layout)) and ids.dtype == np.int32


def test_hv_single_pixel_and_empty():
    inst = np.zeros((5, 5), np.int32)
    assert not hv_maps(inst).any()
    inst[2, 3] = 4
    assert not hv_maps(inst).any()  # a one-pixel instance is its own centre


def test_center_crop_hw_and_hwc():
    a = np.arange(10 * 12).reshape(10, 12)
    c = center_crop(a, 4)
    assert c.shape == (4, 4) and c[0, 0] == a[3, 4]
    b = np.stack([a, -a], -1)
    cb = center_crop(b, (6, 2))
    assert cb.shape == (6, 2, 2) and cb[0, 0, 1] == -a[2, 5]
    with pytest.raises(ValueError):
        center_crop(a, 11)


def test_np_and_tp_targets(layout):
    assert np.array_equal(np_target(layout), (layout > 0).astype(np.uint8))
    tmap = np.full(layout.shape, 2, np.int32)
    tp = tp_target(tmap, layout, size=100)
    assert tp.shape == (100, 100) and set(np.unique(tp)) <= {0, 2}
    assert np.array_equal(tp > 0, center_crop(layout, 100) > 0)


def test_seg_target_equals_slow_reference():
    inst = random_ellipses((48, 56), 6, radius_range=(5, 14), seed=1, allow_touching=True)
    for r in (1, 2):
        np.testing.assert_array_equal(seg_target(inst, 3, r), slow_seg(inst, r))
    seg2 = seg_target(inst, 2)
    assert seg2.dtype == np.int64 and set(np.unique(seg2)) <= {0, 1}
    assert np.array_equal(seg2, (inst > 0).astype(np.int64))


def test_seg_target_boundary_between_touching_instances():
    inst = np.zeros((20, 30), np.int32)
    inst[5:15, 5:15] = 1
    inst[5:15, 15:25] = 9  # touches instance 1 along x = 14 | 15
    seg = seg_target(inst, 3, boundary_px=1)
    assert np.all(seg[7:13, 14] == 2) and np.all(seg[7:13, 15] == 2)
    assert np.all(seg[7:13, 10] == 1)  # interior
