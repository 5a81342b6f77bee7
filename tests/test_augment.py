"""Augmentation keeps labels valid and aligned with the image."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from hovercrypt.config import AugmentConfig, ConfigError
from hovercrypt.data.augment import Augmenter
from hovercrypt.testing.synthetic import random_ellipses

GEOM_ONLY = dict(hue=0, saturation=0, brightness=0, contrast=0, blur_prob=0)


def pattern(size: int = 128, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Instances painted in a unique colour each on white, plus (instance, type) labels."""
    inst = random_ellipses((size, size), 8, radius_range=(10, 22), seed=seed, min_gap=3)
    colours = np.random.default_rng(seed).integers(0, 200, size=(inst.max() + 1, 3)).astype(np.uint8)
    colours[0] = 255
    image = colours[inst]
    types = np.where(inst > 0, 1 + inst % 2, 0)
    return image, np.stack([inst, types], -1).astype(np.int32), colours


@pytest.mark.parametrize("seed", range(4))
def test_geometric_ids_are_a_subset_and_types_follow_instances(seed):
    image, labels, _ = pattern(seed=seed)
    aug = Augmenter(AugmentConfig(affine_prob=1.0, elastic_prob=1.0, **GEOM_ONLY))
    out_img, out_lab = aug.geometric(image, labels, np.random.default_rng(seed))
    assert out_img.shape == image.shape and out_img.dtype == np.uint8
    assert out_lab.shape == labels.shape and out_lab.dtype == np.int32
    assert set(np.unique(out_lab[..., 0])) <= set(np.unique(labels[..., 0]))
    assert set(np.unique(out_lab[..., 1])) <= set(np.unique(labels[..., 1]))
    inst, tp = out_lab[..., 0], out_lab[..., 1]
    assert np.array_equal(tp, np.where(inst > 0, 1 + inst % 2, 0))  # type and instance moved together
    assert not np.array_equal(out_lab, labels)  # something actually happened


@pytest.mark.parametrize("seed", range(4))
def test_drawn_pattern_moves_with_its_label(seed):
    image, labels, colours = pattern(seed=seed)
    elastic = seed % 2 == 1
    aug = Augmenter(AugmentConfig(affine_prob=1.0, elastic_prob=1.0 if elastic else 0.0, **GEOM_ONLY))
    # elastic fields stretch locally, so bilinear (image) and nearest (mask) differ a bit more near edges
    need = 0.95 if elastic else 0.99
    out_img, out_lab = aug.geometric(image, labels, np.random.default_rng(100 + seed))
    inst = out_lab[..., 0]
    checked = 0
    for k in np.unique(inst)[1:]:
        # interior pixels only: bilinear image resampling blends colours at edges
        interior = cv2.erode((inst == k).astype(np.uint8), np.ones((5, 5), np.uint8)) > 0
        if interior.sum() < 20:
            continue
        diff = np.abs(out_img[interior].astype(int) - colours[k].astype(int)).max(axis=1)
        assert np.mean(diff <= 3) > need, f"instance {k}: image colour does not follow the label"
        checked += 1
    assert checked >= 3


def test_flips_and_rot90_are_exact():
    image, labels, colours = pattern()
    aug = Augmenter(AugmentConfig(affine_prob=0.0, elastic_prob=0.0, **GEOM_ONLY))
    seen = set()
    for s in range(12):
        out_img, out_lab = aug.geometric(image, labels, np.random.default_rng(s))
        assert np.array_equal(out_img, colours[out_lab[..., 0]])  # pixel-exact alignment
        seen.add(out_lab[..., 0].tobytes())
    assert len(seen) > 3  # several distinct orientations were drawn


def test_photometric_changes_image_only_and_is_reproducible():
    image, _, _ = pattern()
    image = image.copy()
    aug = Augmenter(AugmentConfig(blur_prob=1.0))
    a = aug.photometric(image, np.random.default_rng(5))
    b = aug.photometric(image, np.random.default_rng(5))
    assert a.shape == image.shape and a.dtype == np.uint8
    assert np.array_equal(a, b)
    assert not np.array_equal(a, image)


def test_geometric_is_reproducible_per_seed():
    image, labels, _ = pattern()
    aug = Augmenter(AugmentConfig(affine_prob=1.0, elastic_prob=1.0))
    a = aug.geometric(image, labels, np.random.default_rng(7))
    b = aug.geometric(image, labels, np.random.default_rng(7))
    c = aug.geometric(image, labels, np.random.default_rng(8))
    assert np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1])
    assert not np.array_equal(a[1], c[1])


@pytest.mark.parametrize(
    "bad",
    [
        dict(affine_prob=1.5),
        dict(affine_scale=(1.2, 0.8)),
        dict(hue=0.7),
        dict(median_ksize=4),
        dict(fill=300),
    ],
)
def test_bad_augment_config_is_rejected(bad):
    with pytest.raises(ConfigError):
        Augmenter(AugmentConfig(**bad))
