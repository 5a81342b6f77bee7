"""PatchDataset: output dict, alignment of image and targets, exact HV after augmentation, reproducibility."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from hovercrypt.config import AugmentConfig, Config, DataConfig, ModelConfig, TrainConfig
from hovercrypt.data.dataset import PatchDataset
from hovercrypt.data.targets import center_crop, hv_maps, seg_target
from hovercrypt.errors import InputError
from hovercrypt.testing.synthetic import random_ellipses

P = 300  # patch; the "original" mode network window is 270 -> 80


def make_cfg(nr_types: int = 3, photometric: bool = False, **model) -> Config:
    aug = AugmentConfig(affine_prob=1.0) if photometric else AugmentConfig(
        affine_prob=1.0, hue=0, saturation=0, brightness=0, contrast=0, blur_prob=0
    )
    return Config(
        model=ModelConfig(nr_types=nr_types, **model),
        data=DataConfig(patch_size=P),
        train=TrainConfig(augment=aug),
    )


@pytest.fixture(scope="module")
def patch_files(tmp_path_factory):
    d = tmp_path_factory.mktemp("patches")
    files = []
    for s in range(4):
        inst = random_ellipses((P, P), 30, radius_range=(8, 24), seed=s, min_gap=3)
        colours = np.random.default_rng(s).integers(0, 200, size=(inst.max() + 1, 3))
        colours[0] = 255
        types = np.where(inst > 0, 1 + inst % 2, 0)
        patch = np.concatenate([colours[inst], inst[..., None], types[..., None]], -1)
        f = d / f"p{s}.npy"
        np.save(f, patch.astype(np.int32))
        files.append(f)
    return files, d


def test_output_dict_hovernet(patch_files):
    files, _ = patch_files
    ds = PatchDataset(files, make_cfg(), train=True)
    item = ds[0]
    assert set(item) == {"image", "np", "hv", "tp", "inst", "valid"}
    assert item["image"].dtype == torch.float32 and item["image"].shape == (3, 270, 270)
    assert 0.0 <= float(item["image"].min()) and float(item["image"].max()) <= 1.0
    assert item["np"].dtype == torch.int64 and item["np"].shape == (80, 80)
    assert item["hv"].dtype == torch.float32 and item["hv"].shape == (2, 80, 80)
    assert item["tp"].dtype == torch.int64 and item["inst"].dtype == torch.int32
    inst = item["inst"].numpy()
    assert np.array_equal(item["np"].numpy(), (inst > 0).astype(np.int64))
    assert np.array_equal(item["tp"].numpy(), np.where(inst > 0, 1 + inst % 2, 0))


def test_output_dict_unet_and_no_types(patch_files):
    files, _ = patch_files
    ds = PatchDataset(files, make_cfg(nr_types=0, arch="unet", unet_classes=3), train=False, targets="unet")
    item = ds[1]
    assert set(item) == {"image", "np", "seg", "inst", "valid"}
    seg, inst = item["seg"].numpy(), item["inst"].numpy()
    assert item["seg"].dtype == torch.int64 and seg.shape == (80, 80)
    assert np.array_equal(seg > 0, inst > 0) and (seg == 2).any() and (seg == 1).any()
    full = np.load(files[1])[..., 3]  # no augmentation: equals the target of the whole patch, cropped
    assert np.array_equal(seg, center_crop(seg_target(full, 3, 2), 80))


@pytest.mark.parametrize("train", [False, True])
def test_image_and_targets_are_aligned(patch_files, train):
    files, _ = patch_files
    ds = PatchDataset(files, make_cfg(), train=train)
    colours = np.random.default_rng(2).integers(0, 200, size=(200, 3))
    item = ds[2]
    img = (item["image"].numpy().transpose(1, 2, 0) * 255).round().astype(int)
    centre = img[95:175, 95:175]  # the output window inside the input window
    inst = item["inst"].numpy()
    fg = inst > 0
    diff = np.abs(centre[fg] - colours[inst[fg]]).max(axis=1)
    # exact without augmentation; bilinear image vs nearest labels only differ on instance edges
    assert np.mean(diff <= 2) > (0.999 if not train else 0.85)


def test_hv_is_exact_after_augmentation(patch_files):
    files, _ = patch_files
    ds = PatchDataset(files, make_cfg(), train=True)
    checked = 0
    for i in range(len(ds)):
        item = ds[i]
        inst, hv = item["inst"].numpy(), item["hv"].numpy().transpose(1, 2, 0)
        border = set(np.unique(np.concatenate([inst[0], inst[-1], inst[:, 0], inst[:, -1]])))
        whole = [k for k in np.unique(inst)[1:] if k not in border]  # instances fully inside the window
        ref = hv_maps(np.where(np.isin(inst, whole), inst, 0))
        m = np.isin(inst, whole)
        np.testing.assert_allclose(hv[m], ref[m], atol=1e-5)
        checked += len(whole)
        assert np.all(hv[inst == 0] == 0) and hv.min() >= -1 and hv.max() <= 1
    assert checked > 0


def test_reproducible_per_seed_epoch_index_and_across_workers(patch_files):
    files, _ = patch_files
    cfg = make_cfg(photometric=True)
    a = PatchDataset(files, cfg, train=True, seed=3)
    b = PatchDataset(files, cfg, train=True, seed=3)  # e.g. a resumed run
    a.set_epoch(2)
    b.set_epoch(2)
    x, y = a[1], b[1]
    assert all(torch.equal(x[k], y[k]) for k in x)
    b.set_epoch(3)
    assert not torch.equal(x["image"], b[1]["image"])
    serial = next(iter(DataLoader(a, batch_size=2, num_workers=0)))
    parallel = next(iter(DataLoader(a, batch_size=2, num_workers=2)))
    assert all(torch.equal(serial[k], parallel[k]) for k in serial)


def test_from_dir_and_bad_patch(patch_files, tmp_path):
    _, d = patch_files
    ds = PatchDataset.from_dir(d, make_cfg(), train=False)
    assert len(ds) == 4
    np.save(tmp_path / "bad.npy", np.zeros((P, P, 3), np.int32))
    with pytest.raises(InputError, match=r"bad\.npy: patch must have shape \(P, P, 5\)"):
        PatchDataset.from_dir(tmp_path, make_cfg(), train=False)[0]
    with pytest.raises(InputError, match="patch folder not found"):
        PatchDataset.from_dir(tmp_path / "none", make_cfg(), train=False)
