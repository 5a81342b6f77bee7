"""instances_from_maps: oracle maps from GlaS and synthetic crypts, edge cases, the reference recipe."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
from scipy import ndimage as ndi
from skimage.morphology import remove_small_objects
from skimage.segmentation import watershed as sk_watershed

from hovercrypt.config import PostprocConfig, UNetPostproc
from hovercrypt.data.targets import hv_maps
from hovercrypt.metrics import pq
from hovercrypt.postproc import instances_from_maps, maps_to_instances
from hovercrypt.testing.synthetic import ellipse_mask, noisy_maps, random_ellipses

P = PostprocConfig().pixels(0.93)


def oracle(inst: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    return (inst > 0).astype(np.float32), hv_maps(inst)


def reference_recipe(np_prob: np.ndarray, hv: np.ndarray, p: dict) -> np.ndarray:
    """The classic HoVer-Net recipe written plainly with scipy / skimage."""
    fg = ndi.label(np_prob >= p["np_thresh"])[0]
    fg = (remove_small_objects(fg, max_size=p["min_object_area"] - 1) > 0).astype(np.uint8)
    k = p["sobel_ksize"]
    x = cv2.normalize(np.ascontiguousarray(hv[..., 0]), None, 0, 1, cv2.NORM_MINMAX, cv2.CV_32F)
    y = cv2.normalize(np.ascontiguousarray(hv[..., 1]), None, 0, 1, cv2.NORM_MINMAX, cv2.CV_32F)
    gx = 1 - cv2.normalize(cv2.Sobel(x, cv2.CV_64F, 1, 0, ksize=k), None, 0, 1, cv2.NORM_MINMAX, cv2.CV_32F)
    gy = 1 - cv2.normalize(cv2.Sobel(y, cv2.CV_64F, 0, 1, ksize=k), None, 0, 1, cv2.NORM_MINMAX, cv2.CV_32F)
    edge = np.clip(np.maximum(gx, gy) - (1 - fg), 0, None)
    energy = -cv2.GaussianBlur((1.0 - edge) * fg, (3, 3), 0)
    marker = np.clip(fg.astype(np.int32) - (edge >= p["marker_thresh"]), 0, None)
    marker = ndi.binary_fill_holes(marker).astype(np.uint8)
    r = p["marker_open_radius"]
    marker = cv2.morphologyEx(
        marker, cv2.MORPH_OPEN, cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * r + 1,) * 2)
    )
    marker = remove_small_objects(ndi.label(marker)[0], max_size=p["min_marker_area"] - 1)
    return sk_watershed(energy, markers=marker, mask=fg > 0)


def check_ids(out: np.ndarray) -> None:
    assert out.dtype == np.int32
    ids = np.unique(out)
    assert ids[0] == 0 or out.min() > 0
    assert np.array_equal(ids[ids > 0], np.arange(1, int(out.max()) + 1))


def test_glas_oracle_recovers_glands(glas_dir: Path) -> None:
    scores = []
    for i in (1, 5, 11, 20):  # train_11 has big and small glands together
        lab = cv2.imread(str(glas_dir / f"train_{i}_anno.png"), cv2.IMREAD_UNCHANGED)
        assert lab is not None
        lab = np.ascontiguousarray(lab[::2, ::2]).astype(np.int32)  # 0.465 -> 0.93 um/px
        out = instances_from_maps(*oracle(lab), **P)
        check_ids(out)
        scores.append(pq(lab, out)["pq"])
    assert min(scores) >= 0.95, scores


def test_touching_crypts_are_split() -> None:
    inst = random_ellipses((256, 256), 12, (18, 40), seed=3, allow_touching=True)
    touching = np.logical_and(inst[:, 1:] > 0, inst[:, :-1] > 0) & (inst[:, 1:] != inst[:, :-1])
    assert touching.any(), "the layout must contain touching crypts"
    np_prob, hv = noisy_maps(inst, seed=1, noise=0.05)
    out = instances_from_maps(np_prob, hv, **P)
    check_ids(out)
    assert out.max() == inst.max()
    assert pq(inst, out)["pq"] >= 0.95
    # the whole foreground stays one 4-connected blob where crypts touch, yet it is cut into crypts
    n_blobs = ndi.label(inst > 0)[1]
    assert n_blobs < inst.max()


def test_two_touching_discs_exact_split() -> None:
    inst = np.zeros((100, 160), np.int32)
    m1, (y0, x0) = ellipse_mask(50, 50, 30, 30, 0, inst.shape)
    inst[y0 : y0 + m1.shape[0], x0 : x0 + m1.shape[1]][m1] = 1
    m2, (y0, x0) = ellipse_mask(110, 50, 30, 30, 0, inst.shape)
    inst[y0 : y0 + m2.shape[0], x0 : x0 + m2.shape[1]][
        m2 & (inst[y0 : y0 + m2.shape[0], x0 : x0 + m2.shape[1]] == 0)
    ] = 2
    out = instances_from_maps(*oracle(inst), **P)
    assert out.max() == 2
    assert pq(inst, out)["pq"] >= 0.97


def test_empty_maps_give_no_instances() -> None:
    z = np.zeros((64, 80), np.float32)
    out = instances_from_maps(z, np.zeros((64, 80, 2), np.float32), **P)
    assert out.shape == (64, 80) and out.dtype == np.int32 and not out.any()
    # foreground everywhere but far below threshold
    out = instances_from_maps(z + 0.2, np.zeros((64, 80, 2), np.float32), **P)
    assert not out.any()


def test_single_instance_and_border_instance() -> None:
    inst = np.zeros((120, 150), np.int32)
    m, (y0, x0) = ellipse_mask(70, 60, 35, 22, 0.4, inst.shape)
    inst[y0 : y0 + m.shape[0], x0 : x0 + m.shape[1]][m] = 1
    out = instances_from_maps(*oracle(inst), **P)
    assert out.max() == 1 and pq(inst, out)["pq"] >= 0.97

    border = np.zeros((120, 150), np.int32)
    m, (y0, x0) = ellipse_mask(0, 119, 40, 30, 0.0, border.shape)  # centre on the corner
    border[y0 : y0 + m.shape[0], x0 : x0 + m.shape[1]][m] = 5
    out = instances_from_maps(*oracle(border), **P)
    assert out.max() == 1 and pq(border, out)["pq"] >= 0.95


@pytest.mark.parametrize("seed", [0, 1])
def test_numba_path_matches_reference_recipe(seed: int) -> None:
    inst = random_ellipses((300, 300), 25, (12, 45), seed=seed, allow_touching=True)
    np_prob, hv = noisy_maps(inst, seed=seed, noise=0.1)
    ours = instances_from_maps(np_prob, hv, **P)
    ref = reference_recipe(np_prob, hv, P)
    check_ids(ours)
    assert pq(ref, ours)["pq"] >= 0.97
    # and also with the original nuclei-style parameters
    p2 = {**P, "marker_thresh": 0.4, "marker_open_radius": 3, "sobel_ksize": 15}
    assert pq(reference_recipe(np_prob, hv, p2), instances_from_maps(np_prob, hv, **p2))["pq"] >= 0.97


def test_timings() -> None:
    """The profiling wrapper times every stage and gives the very same instances."""
    from hovercrypt.postproc.profile import timed_instances_from_maps

    inst = random_ellipses((128, 128), 4, (15, 25), seed=2)
    t: dict[str, float] = {}
    out = timed_instances_from_maps(*oracle(inst), t, **P)
    assert set(t) == {"threshold", "sobel", "energy", "markers", "watershed"}
    assert out.max() == inst.max() and np.array_equal(out, instances_from_maps(*oracle(inst), **P))
    with pytest.raises(TypeError, match="np_treshold"):
        timed_instances_from_maps(*oracle(inst), t, np_treshold=0.5)


def test_unknown_postproc_keys_are_errors_naming_them() -> None:
    """A misspelt or another family's key does something: it fails (it used to be ignored)."""
    from hovercrypt.postproc.semantic import instances_from_semantic

    np_prob, hv = oracle(random_ellipses((64, 64), 2, (10, 15), seed=2))
    for key in ("unet_fg_thresh", "np_treshold"):
        with pytest.raises(TypeError, match=key):
            instances_from_maps(np_prob, hv, **{**P, key: 0.3})
    with pytest.raises(TypeError, match="marker_thresh"):
        seg = np.zeros((8, 8, 2), np.float32)
        instances_from_semantic(seg, **UNetPostproc().pixels(1.0), marker_thresh=0.4)


def test_input_checks() -> None:
    with pytest.raises(ValueError, match="hv"):
        instances_from_maps(np.zeros((8, 8), np.float32), np.zeros((8, 9, 2), np.float32))
    with pytest.raises(ValueError, match="sobel_ksize"):
        instances_from_maps(np.zeros((8, 8), np.float32), np.zeros((8, 8, 2), np.float32), sobel_ksize=4)
    # (H, W, 1) NP maps are accepted as well
    inst = random_ellipses((96, 96), 3, (15, 20), seed=4)
    np_prob, hv = oracle(inst)
    assert np.array_equal(
        instances_from_maps(np_prob[..., None], hv, **P), instances_from_maps(np_prob, hv, **P)
    )


def test_maps_to_instances_asks_the_family_registry() -> None:
    from hovercrypt.postproc.semantic import instances_from_semantic

    inst = random_ellipses((96, 96), 3, (15, 20), seed=6)
    np_prob, hv = oracle(inst)
    direct = instances_from_maps(np_prob, hv, **P)
    via = maps_to_instances({"np": np_prob[..., None], "hv": hv}, "hovernet", P)
    assert np.array_equal(direct, via)

    seg = np.stack([inst == 0, inst > 0], -1).astype(np.float32)
    unet = UNetPostproc().pixels(0.93)
    assert np.array_equal(maps_to_instances({"seg": seg}, "unet", unet), instances_from_semantic(seg, **unet))
    with pytest.raises(TypeError, match="np_thresh"):  # HoVer-Net settings for UNet maps
        maps_to_instances({"seg": seg}, "unet", P)

    with pytest.raises(ValueError, match="arch must be one of"):
        maps_to_instances({}, "maskrcnn", P)
    with pytest.raises(ValueError, match="hv"):
        maps_to_instances({"np": np_prob[..., None]}, "hovernet", P)
    with pytest.raises(ValueError, match="seg"):
        maps_to_instances({"np": np_prob[..., None]}, "unet", unet)


def test_pixels_scale_with_resolution() -> None:
    cfg = PostprocConfig()
    a, b = cfg.pixels(0.93), cfg.pixels(0.465)
    assert b["min_object_area"] == pytest.approx(4 * a["min_object_area"], rel=0.02)
    assert b["marker_open_radius"] == 2 * a["marker_open_radius"]
    assert a["sobel_ksize"] % 2 == 1 and b["sobel_ksize"] % 2 == 1 and b["sobel_ksize"] <= 31


def test_components_fall_back_to_32_bit_labels() -> None:
    from hovercrypt.postproc.morphology import components

    few = np.zeros((20, 20), np.uint8)
    few[2:5, 2:5] = 1
    labels, area = components(few)
    assert labels.dtype == np.uint16 and area.tolist() == [391, 9]
    many = np.zeros((600, 600), np.uint8)
    many[::2, ::2] = 1  # 90,000 isolated pixels: more labels than uint16 holds
    labels, area = components(many)
    assert labels.dtype == np.int32 and len(area) == 90_001 and (area[1:] == 1).all()


def test_fill_holes_matches_scipy() -> None:
    from hovercrypt.postproc.morphology import fill_holes

    rng = np.random.default_rng(3)
    for _ in range(5):
        m = ndi.binary_opening(rng.random((60, 70)) > 0.45)
        assert np.array_equal(fill_holes(m) > 0, ndi.binary_fill_holes(m))


def test_compiled_sobel_is_bit_equal_to_cv2():
    """The fused numba Sobel must reproduce cv2.Sobel exactly (derivatives and their min/max)."""
    from hovercrypt.postproc.hv import _sobel_cv2, _sobel_pair

    rng = np.random.default_rng(0)
    for k in (7, 21, 31):
        for h, w in ((40, 44), (33, 64), (17, 36)):
            hv = rng.uniform(-1, 1, (h, w, 2)).astype(np.float32)
            a, b = _sobel_pair(hv, k), _sobel_cv2(hv, k)
            assert all(np.array_equal(x, y) for x, y in zip(a[:2], b[:2]))
            assert tuple(a[2:]) == tuple(b[2:])


def test_components_where_matches_opencv_and_drops_small():
    """The run-based labelling gives OpenCV's 4-connected labels and areas, and drops small pieces."""
    from hovercrypt.postproc.morphology import components_where

    rng = np.random.default_rng(1)
    f = rng.random((60, 70)).astype(np.float32)
    lab, area = components_where(f, np.float32(0.4))
    _, ref = cv2.connectedComponents((f >= np.float32(0.4)).view(np.uint8), connectivity=4)
    assert np.array_equal(lab, ref)
    assert area.tolist() == np.bincount(ref.ravel()).tolist()
    kept, a2 = components_where(f, np.float32(0.4), 5)
    assert (a2[1:] >= 5).all()
    assert np.array_equal(kept > 0, np.isin(ref, np.nonzero(area >= 5)[0][1:]))
