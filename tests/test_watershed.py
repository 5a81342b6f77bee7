"""The compiled bucket-queue watershed against hand-made cases, its Python twin and scikit-image."""

from __future__ import annotations

import numpy as np
import pytest
from skimage.segmentation import watershed as sk_watershed

from hovercrypt.postproc.watershed import watershed
from hovercrypt.testing.reference import watershed_reference


def test_ridge_splits_two_basins() -> None:
    # a 1-row valley-ridge-valley profile: the ridge at x=4 is where the floods meet
    energy = np.array([[0, 1, 2, 3, 9, 3, 2, 1, 0]], np.float32)
    markers = np.zeros_like(energy, np.int32)
    markers[0, 0], markers[0, 8] = 1, 2
    out = watershed(energy, markers)
    assert out.dtype == np.int32
    assert out[0, :4].tolist() == [1, 1, 1, 1]
    assert out[0, 5:].tolist() == [2, 2, 2, 2]
    assert out[0, 4] in (1, 2)
    assert np.array_equal(out, watershed_reference(energy, markers))


def test_low_basin_wins_more_ground() -> None:
    # marker 1 sits in a deep valley, marker 2 on a slope: 1 floods the shared low ground first
    energy = np.array([[5, 0, 0, 0, 0, 0, 4, 3]], np.float32)
    markers = np.array([[0, 1, 0, 0, 0, 0, 0, 2]], np.int32)
    out = watershed(energy, markers)
    assert out[0].tolist() == [1, 1, 1, 1, 1, 1, 1, 2]


def test_mask_limits_and_unreached_regions() -> None:
    energy = np.zeros((5, 7), np.float32)
    mask = np.zeros((5, 7), bool)
    mask[:, :3] = True  # left block, has a marker
    mask[:, 4:] = True  # right block, no marker: must stay 0
    markers = np.zeros((5, 7), np.int32)
    markers[2, 1] = 3
    markers[0, 3] = 4  # outside the mask: dropped
    out = watershed(energy, markers, mask)
    assert (out[:, :3] == 3).all()
    assert (out[:, 3:] == 0).all()


def test_plateau_is_shared_fairly() -> None:
    energy = np.zeros((1, 11), np.float32)
    markers = np.zeros((1, 11), np.int32)
    markers[0, 0], markers[0, 10] = 1, 2
    out = watershed(energy, markers)
    n1, n2 = int((out == 1).sum()), int((out == 2).sum())
    assert n1 + n2 == 11 and abs(n1 - n2) <= 1
    assert np.array_equal(out, watershed_reference(energy, markers))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_matches_reference_and_skimage_on_random_tiny_maps(seed: int) -> None:
    rng = np.random.default_rng(seed)
    h, w = 23, 31
    # distinct integer energies: no ties, so every correct flood gives the same answer
    energy = rng.permutation(h * w).reshape(h, w).astype(np.float32)
    mask = rng.random((h, w)) > 0.15
    markers = np.zeros((h, w), np.int32)
    ys, xs = rng.integers(0, h, 9), rng.integers(0, w, 9)
    markers[ys, xs] = np.arange(1, 10)
    ours = watershed(energy, markers, mask, nlev=h * w)
    ref = watershed_reference(energy, markers, mask)
    sk = sk_watershed(energy.astype(np.float64), markers=markers, mask=mask)
    assert np.array_equal(ours, ref)
    assert np.array_equal(ours, sk)
    assert (ours[~mask] == 0).all()


def test_smooth_random_energy_agrees_with_skimage() -> None:
    rng = np.random.default_rng(5)
    from scipy import ndimage as ndi

    energy = ndi.gaussian_filter(rng.random((64, 64)), 3).astype(np.float32)
    markers = np.zeros((64, 64), np.int32)
    markers[rng.integers(0, 64, 12), rng.integers(0, 64, 12)] = np.arange(1, 13)
    ours = watershed(energy, markers)
    sk = sk_watershed(energy.astype(np.float64), markers=markers)
    # quantisation to 4096 levels may only reorder near-ties: a few pixels at most
    assert (ours != sk).mean() < 0.01


def test_bad_arguments() -> None:
    e = np.zeros((3, 3), np.float32)
    with pytest.raises(ValueError, match="nlev"):
        watershed(e, np.ones((3, 3), np.int32), nlev=1)
    with pytest.raises(ValueError, match="shape"):
        watershed(e, np.ones((2, 3), np.int32))
    with pytest.raises(ValueError, match="non-negative"):
        watershed(e, -np.ones((3, 3), np.int32))
    assert not watershed(e, np.ones((3, 3), np.int32), np.zeros((3, 3), bool)).any()


@pytest.mark.parametrize("shape", [(40, 57), (3, 9), (1, 12), (2, 2)])
@pytest.mark.parametrize("k", [3, 5])
def test_lazy_smoothing_equals_cv2_gaussian_blur(shape: tuple[int, int], k: int) -> None:
    import cv2

    from hovercrypt.postproc.watershed import flood_prepared

    rng = np.random.default_rng(k)
    energy = -rng.random(shape).astype(np.float32)
    mask = rng.random(shape) > 0.1
    mask[0, 0] = True
    markers = np.zeros(shape, np.int32)
    markers[0, 0] = 1
    markers[-1, -1] = 2 if mask[-1, -1] and shape != (1, 1) else 0
    blurred = cv2.GaussianBlur(energy, (k, k), 0)
    comp = mask.astype(np.int32)
    keep = np.array([False, True])
    lut = np.arange(3, dtype=np.int32)
    kernel = cv2.getGaussianKernel(k, 0, cv2.CV_64F).ravel()
    lazy = flood_prepared(energy, comp, keep, markers, lut, (-1.0, 0.0), 1 << 14, kernel)
    eager = flood_prepared(blurred, comp, keep, markers, lut, (-1.0, 0.0), 1 << 14)
    assert (lazy != eager).mean() <= 0.01
    assert np.array_equal(lazy > 0, eager > 0)


def test_huge_marker_values_are_kept() -> None:
    energy = np.zeros((4, 6), np.float32)
    markers = np.zeros((4, 6), np.int64)
    markers[0, 0], markers[3, 5] = 2_000_000_000, 7
    out = watershed(energy, markers)
    assert set(np.unique(out).tolist()) == {7, 2_000_000_000}
    assert out[0, 0] == 2_000_000_000 and out[3, 5] == 7
