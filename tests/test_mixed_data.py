"""Several datasets in one run, valid-pixel (ignore) masks, random crops, stain augmentation, recipe."""

from __future__ import annotations

import csv
import math

import numpy as np
import pytest
import torch
from PIL import Image

from hovercrypt.config import AugmentConfig, Config, DataConfig, ModelConfig, PhaseConfig, SourceConfig
from hovercrypt.data.augment import hed_jitter
from hovercrypt.data.crops import CropDataset, mirror_crop
from hovercrypt.data.patches import extract_patches, mirror_pad
from hovercrypt.data.readers import list_records
from hovercrypt.errors import InputError
from hovercrypt.models.losses import hovernet_loss
from hovercrypt.train.optim import make_optimizer


def _write_dataset(folder, size: int, radius: int, valid: bool, name: str = "img") -> None:
    """One image with two discs (instances 1, 2) and, optionally, a valid mask (right quarter invalid)."""
    folder.mkdir(parents=True, exist_ok=True)
    yy, xx = np.mgrid[:size, :size]
    inst = np.zeros((size, size), np.uint16)
    inst[(yy - size // 3) ** 2 + (xx - size // 3) ** 2 < radius**2] = 1
    inst[(yy - 2 * size // 3) ** 2 + (xx - size // 3) ** 2 < radius**2] = 2
    rgb = np.full((size, size, 3), 200, np.uint8)
    rgb[inst > 0] = (120, 60, 150)
    Image.fromarray(rgb).save(folder / f"{name}.png")
    Image.fromarray(inst).save(folder / f"{name}_anno.png")
    if valid:
        v = np.full((size, size), 255, np.uint8)
        v[:, 3 * size // 4 :] = 0
        Image.fromarray(v).save(folder / f"{name}_valid.png")


def _two_source_cfg(tmp_path, **data) -> Config:
    a, b = tmp_path / "a", tmp_path / "b"
    _write_dataset(a, 100, 12, valid=False)  # 0.5 um/px
    _write_dataset(b, 200, 24, valid=True)  # 0.25 um/px: the same scene at twice the pixels
    src_b = SourceConfig(name="b", image_dir=str(b), image_mpp=0.25, valid_suffix="_valid",
                         type_source="fixed", fixed_type=1, keep_unannotated=True)
    d = DataConfig(name="a", image_dir=str(a), image_mpp=0.5, type_source="fixed", fixed_type=2,
                   extra_sources=[src_b], patch_size=300, patch_step=200, patch_dir=str(tmp_path / "p"),
                   **data)
    return Config(proc_mpp=1.0, model=ModelConfig(mode="original", encoder="resnet18", nr_types=3), data=d)


def test_two_resolutions_give_images_and_patches_at_the_processing_resolution(tmp_path):
    cfg = _two_source_cfg(tmp_path)
    report = extract_patches(cfg, cfg.data.patch_dir, progress=False)
    with open(tmp_path / "p" / "images" / "train" / "manifest.csv") as f:
        rows = {r["source"]: r for r in csv.DictReader(f)}
    assert {k: (int(r["height"]), int(r["width"])) for k, r in rows.items()} == {"a": (50, 50), "b": (50, 50)}
    whole_a = np.load(tmp_path / "p" / "images" / "train" / "img.npy")
    whole_b = np.load(tmp_path / "p" / "images" / "train" / "b__img.npy")
    # the same drawn scene: crypt areas agree after resampling, types come from each source's fixed type
    assert abs(int((whole_a[..., 3] > 0).sum()) - int((whole_b[..., 3] > 0).sum())) < 20
    assert set(np.unique(whole_a[..., 4])) == {0, 2} and set(np.unique(whole_b[..., 4])) == {0, 1}
    assert whole_a[..., 5].all() and not whole_b[:, 38:, 5].any() and whole_b[:, :37, 5].all()
    patches = sorted((tmp_path / "p" / "train").glob("*.npy"))
    shapes = {p.name.startswith("b__"): np.load(p).shape for p in patches}
    assert shapes == {False: (300, 300, 5), True: (300, 300, 6)}
    assert report.kept["train"] == len(patches)


def test_missing_valid_mask_is_an_error_naming_the_file(tmp_path):
    cfg = _two_source_cfg(tmp_path)
    (tmp_path / "b" / "img_valid.png").unlink()
    with pytest.raises(InputError, match=r"img\.png: missing valid-pixel mask .*img_valid\.png"):
        list_records(cfg.data.sources()[1])


def test_patches_mostly_outside_the_valid_area_are_dropped(tmp_path):
    cfg = _two_source_cfg(tmp_path)
    cfg.data.min_valid_fraction = 0.9
    report = extract_patches(cfg, cfg.data.patch_dir, progress=False)
    assert report.dropped["invalid_pixels"] > 0
    for p in (tmp_path / "p" / "train").glob("b__*.npy"):
        assert np.load(p)[..., 5].mean() >= 0.9


def _batch(n=2, size=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    out = {
        "np": torch.randn(n, 2, size, size, generator=g, requires_grad=True),
        "hv": torch.randn(n, 2, size, size, generator=g, requires_grad=True),
        "tp": torch.randn(n, 3, size, size, generator=g, requires_grad=True),
    }
    inst = torch.zeros(n, size, size, dtype=torch.long)
    inst[:, 3:12, 3:12] = 1
    batch = {"np": inst, "hv": torch.randn(n, 2, size, size, generator=g), "tp": inst * 2}
    valid = torch.ones(n, size, size)
    valid[:, :, 8:] = 0  # the right half is ignored, cutting through the object
    batch["valid"] = valid
    return out, batch


def test_ignored_pixels_receive_zero_gradient_in_every_branch():
    from hovercrypt.config import LossWeights

    out, batch = _batch()
    loss, _ = hovernet_loss(out, batch, LossWeights())
    loss.backward()
    for key in ("np", "hv", "tp"):
        g = out[key].grad
        assert g[..., 8:].abs().max() == 0, key
        assert g[..., :8].abs().max() > 0, key


def test_loss_ignores_whatever_the_invalid_pixels_predict():
    from hovercrypt.config import LossWeights

    out, batch = _batch()
    loss1, _ = hovernet_loss(out, batch, LossWeights())
    changed = {k: v.detach().clone() for k, v in out.items()}
    for v in changed.values():
        v[..., 8:] = 1000.0
    loss2, _ = hovernet_loss(changed, batch, LossWeights())
    assert float(loss1.detach()) == pytest.approx(float(loss2), rel=1e-6)


def test_mirror_crop_matches_patch_extraction_mirroring():
    rng = np.random.default_rng(0)
    arr = np.zeros((30, 40, 6), np.uint16)
    arr[..., :3] = rng.integers(0, 255, (30, 40, 3))
    arr[5:12, 0:8, 3] = 1
    arr[20:28, 30:40, 3] = 2
    arr[..., 4] = (arr[..., 3] > 0) * 1
    arr[..., 5] = 1
    crop = mirror_crop(arr, -10, -5, 64)  # leaves the image on every side: whole-image mirroring
    img, inst, _ = mirror_pad(arr[..., :3], arr[..., 3].astype(np.int32), arr[..., 4], (5, 29, 10, 14))
    assert np.array_equal(crop[..., :3], img) and np.array_equal(crop[..., 3], inst)
    inside = mirror_crop(arr, 3, 2, 20)
    assert np.array_equal(inside, arr[2:22, 3:23].astype(np.int32))


def test_crop_dataset_is_deterministic_and_carries_the_valid_mask(tmp_path):
    cfg = _two_source_cfg(tmp_path, sampling="crops", crops_per_epoch=12)
    extract_patches(cfg, cfg.data.patch_dir, progress=False)
    ds = CropDataset(tmp_path / "p" / "images" / "train", cfg, train=True, seed=3)
    assert len(ds) == 12
    a, b = ds[5], ds[5]
    assert all(torch.equal(a[k], b[k]) for k in a)
    ds.set_epoch(1)
    assert not torch.equal(ds[5]["image"], a["image"])
    win = cfg.windows
    assert a["image"].shape == (3, win.input, win.input) and a["valid"].shape == (win.output, win.output)
    assert any(float(ds[i]["valid"].min()) == 0.0 for i in range(12))  # source b's ignored quarter
    for i in range(12):
        item = ds[i]
        assert not (item["np"].bool() & (item["valid"] == 0)).any()  # no target inside ignored pixels


def test_hed_jitter_is_exact_at_identity_and_scales_the_stains():
    from skimage.color import rgb2hed

    rng = np.random.default_rng(0)
    img = rng.integers(30, 250, (32, 32, 3)).astype(np.uint8)
    assert np.array_equal(hed_jitter(img, (1.0, 1.0)), img)
    more_h = hed_jitter(img, (1.3, 1.0))
    assert rgb2hed(more_h)[..., 0].mean() > rgb2hed(img)[..., 0].mean()
    cfg = AugmentConfig(hed_prob=1.0, hue=0, saturation=0, brightness=0, contrast=0, blur_prob=0)
    from hovercrypt.data.augment import Augmenter

    out = Augmenter(cfg).photometric(img, np.random.default_rng(1))
    assert out.shape == img.shape and not np.array_equal(out, img)


def test_cosine_schedule_warms_up_then_decays_to_the_floor():
    p = torch.nn.Parameter(torch.zeros(1))
    phase = PhaseConfig(lr=1.0, optimizer="adamw", weight_decay=0.01, schedule="cosine", warmup_steps=4,
                        min_lr_ratio=0.1)
    opt, sched = make_optimizer(phase, [p], total_steps=20)
    assert isinstance(opt, torch.optim.AdamW) and sched.per_step
    lrs = []
    for _ in range(20):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert lrs[:5] == pytest.approx([0.2, 0.4, 0.6, 0.8, 1.0])
    assert all(a >= b for a, b in zip(lrs[4:], lrs[5:]))
    assert opt.param_groups[0]["lr"] == pytest.approx(0.1)
    assert lrs[12] == pytest.approx(0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 8 / 16)))


def test_gradient_accumulation_equals_one_large_batch():
    from hovercrypt.train.amp import Precision

    torch.manual_seed(0)
    x, y = torch.randn(8, 3), torch.randn(8, 1)
    ref, acc = torch.nn.Linear(3, 1), torch.nn.Linear(3, 1)
    acc.load_state_dict(ref.state_dict())
    prec = Precision(torch.device("cpu"), None)
    o1 = torch.optim.SGD(ref.parameters(), lr=0.1)
    prec.backward_step(torch.nn.functional.mse_loss(ref(x), y), o1)
    o2 = torch.optim.SGD(acc.parameters(), lr=0.1)
    prec.backward_step(torch.nn.functional.mse_loss(acc(x[:4]), y[:4]), o2, accum=2, step=False)
    prec.backward_step(torch.nn.functional.mse_loss(acc(x[4:]), y[4:]), o2, accum=2, step=True)
    for a, b in zip(ref.parameters(), acc.parameters()):
        assert torch.allclose(a, b, atol=1e-6)


def test_image_validation_scores_an_oracle_perfectly_and_ignores_invalid_pixels():
    from hovercrypt.testing.oracle import OraclePredictor, render_instances
    from hovercrypt.train.validate_images import score_images

    ellipses = np.array([[40, 40, 15, 12, 0.3, 1], [110, 50, 14, 14, 0.0, 1], [60, 110, 18, 10, 1.0, 1]])
    inst = render_instances(ellipses, 0, 0, 160, 150)
    arr = np.zeros((150, 160, 6), np.uint16)
    arr[..., :3] = 200
    arr[..., 3] = inst
    arr[..., 4] = (inst > 0) * 1
    arr[..., 5] = 1
    cfg = Config(proc_mpp=1.0)
    pred = OraclePredictor(ellipses, input_size=96, output_size=64)
    perfect = score_images(pred, [("a", "img", arr)], cfg)
    assert perfect["valid/img_obj_f1"] == 1.0 and perfect["valid/img_obj_f1_a"] == 1.0
    assert perfect["valid/img_obj_dice"] > 0.99
    # an annotation missing one crypt costs a false positive ...
    missing = arr.copy()
    missing[..., 3][inst == 3] = 0
    assert score_images(pred, [("a", "img", missing)], cfg)["valid/img_obj_f1"] == pytest.approx(0.8)
    # ... unless that crypt lies in pixels marked invalid, which are not scored at all
    missing[..., 5][inst == 3] = 0
    missing[..., 5][np.roll(inst == 3, 3, axis=0)] = 0
    assert score_images(pred, [("a", "img", missing)], cfg)["valid/img_obj_f1"] == 1.0


def test_glas_hubmap_preset_reads_both_real_datasets_with_their_split(glas_dir, hubmap_dir):
    from hovercrypt.data.patches import dataset_splits
    from hovercrypt.data.readers import iter_samples
    from hovercrypt.presets import glas_hubmap_config

    cfg = glas_hubmap_config(glas_dir, hubmap_dir)
    (glas, g_tr, g_va), (hub, h_tr, h_va) = dataset_splits(cfg)
    assert (len(g_tr), len(g_va)) == (68, 17)
    assert not {r.patient for r in g_tr} & {r.patient for r in g_va}  # patient-disjoint
    assert [r.name for r in h_va] == ["HandE_B005_CL_b_RGB_bottomright"]
    assert [r.name for r in h_tr] == ["HandE_B005_CL_b_RGB_topleft"]
    (s,) = iter_samples(cfg, h_va, source=hub)
    assert s.valid is not None and s.valid.shape == s.inst.shape
    assert s.inst.shape == (round(2816 * 0.4 / 0.93), round(4608 * 0.4 / 0.93))  # at the processing mpp
    assert len(np.unique(s.inst)) - 1 == 23 and set(np.unique(s.type_map)) == {0, 1}
    assert not (s.inst[~s.valid] > 0).any()  # no crypt in invalid pixels
