"""Training loop: loss goes down, encoder freezing, exact resume, logs; plus the small helpers."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from hovercrypt.config import Config, ConfigError, DataConfig, ModelConfig, PhaseConfig, TrainConfig
from hovercrypt.devices import parse_gpus
from hovercrypt.errors import InputError
from hovercrypt.models.precision import resolve_amp
from hovercrypt.testing.synthetic import random_ellipses, render_he
from hovercrypt.train import state as st
from hovercrypt.train.logs import read_csv, write_csv

PATCH = 270  # = the "original" input window (270 -> 80): no crop, smallest legal patch


def write_patches(root: Path, n_train: int = 2, n_valid: int = 1, size: int = PATCH) -> Path:
    """Synthetic patches in the extract_patches.py format: int32 (P, P, 5) = RGB, instance, type."""
    for split, n, offset in (("train", n_train, 0), ("valid", n_valid, 100)):
        (root / split).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            inst = random_ellipses((size, size), 8, radius_range=(12, 35), seed=offset + i)
            patch = np.zeros((size, size, 5), np.int32)
            patch[..., :3] = render_he(inst, seed=offset + i)
            patch[..., 3] = inst
            patch[..., 4] = np.where(inst > 0, 1 + (inst % 2), 0)  # two crypt types
            np.save(root / split / f"p{offset + i:03d}.npy", patch)
    return root


def tiny_config(
    patch_dir: Path, epochs: tuple[int, ...] = (1, 1), pretrained: str | None = None, **train: object
) -> Config:
    """resnet18 encoder, slim decoders, "original" windows (small output): the cheapest real HoVer-Net."""
    phases = [
        PhaseConfig(name=f"p{i}", epochs=e, freeze_encoder=i == 0 and len(epochs) > 1, lr=1e-3, batch_size=1)
        for i, e in enumerate(epochs)
    ]
    kw: dict = {"num_workers": 0, "amp": "none", "valid_instance_metrics": False, "max_steps_per_epoch": 1}
    kw.update(train)
    return Config(
        name="tiny",
        model=ModelConfig(
            mode="original",
            encoder="resnet18",
            nr_types=3,
            decoder_width=0.25,
            dense_units=(1, 1),
            pretrained=pretrained,
        ),
        data=DataConfig(patch_dir=str(patch_dir), patch_size=PATCH),
        train=TrainConfig(phases=phases, **kw),
    )


@pytest.fixture(scope="module")
def patch_dir(tmp_path_factory) -> Path:
    return write_patches(tmp_path_factory.mktemp("patches"))


def test_steps_on_one_batch_reduce_loss_and_phase1_freezes_encoder(patch_dir, tmp_path):
    import timm

    from hovercrypt.data.dataset import PatchDataset
    from hovercrypt.train.trainer import Trainer

    weights = tmp_path / "resnet18_local.pth"  # stands in for a downloaded ImageNet file
    torch.save(timm.create_model("resnet18", pretrained=False).state_dict(), weights)
    cfg = tiny_config(patch_dir, epochs=(1, 1), pretrained=str(weights))
    trainer = Trainer(cfg, tmp_path / "log", progress=False)
    ds = PatchDataset.from_dir(patch_dir / "train", cfg, train=False)
    batch = torch.utils.data.default_collate([ds[0]])

    trainer.enter_phase(0)  # encoder frozen
    trainer.train_mode()
    enc_before = [p.detach().clone() for p in trainer.model.encoder.parameters()]
    bn_before = [b.clone() for b in trainer.model.encoder.buffers()]
    named = trainer.model.named_parameters
    dec_before = [p.detach().clone() for n, p in named() if not n.startswith("encoder.")]
    losses = [trainer.train_step(batch)[0]]
    assert all(torch.equal(a, p) for a, p in zip(enc_before, trainer.model.encoder.parameters()))
    assert all(torch.equal(a, b) for a, b in zip(bn_before, trainer.model.encoder.buffers()))  # BN stats kept
    dec_after = [p for n, p in named() if not n.startswith("encoder.")]
    assert any(not torch.equal(a, p) for a, p in zip(dec_before, dec_after))

    trainer.enter_phase(1)  # everything trains
    trainer.train_mode()
    for _ in range(3):
        losses.append(trainer.train_step(batch)[0])
    assert not all(torch.equal(a, p) for a, p in zip(enc_before, trainer.model.encoder.parameters()))
    assert np.isfinite(losses).all()
    assert losses[-1] < 0.9 * losses[0] and losses[-1] == min(losses), losses


def test_phase1_trains_a_random_encoder_with_a_notice(patch_dir, tmp_path, capsys):
    """Without --pretrained the encoder is random: freezing it would waste phase 1, so it trains."""
    from hovercrypt.data.dataset import PatchDataset
    from hovercrypt.train.trainer import Trainer

    cfg = tiny_config(patch_dir, epochs=(1, 1))
    trainer = Trainer(cfg, tmp_path / "log", progress=False)
    ds = PatchDataset.from_dir(patch_dir / "train", cfg, train=False)
    batch = torch.utils.data.default_collate([ds[0]])
    trainer.enter_phase(0)
    trainer.train_mode()
    before = [p.detach().clone() for p in trainer.model.encoder.parameters()]
    trainer.train_step(batch)
    assert any(not torch.equal(a, p) for a, p in zip(before, trainer.model.encoder.parameters()))
    captured = capsys.readouterr()
    assert "random weights" in captured.out + captured.err


def test_resume_equals_uninterrupted_run(patch_dir, tmp_path):
    from hovercrypt.models.checkpoint import load_checkpoint
    from hovercrypt.train.logs import CSV_NAME
    from hovercrypt.train.trainer import LAST, Trainer

    # uninterrupted 2-epoch run; keep a copy of last.pt as it was after epoch 1 (= a run stopped there)
    full = Trainer(tiny_config(patch_dir, epochs=(2,)), tmp_path / "full", progress=False)
    save = full._save

    def save_and_copy(name: str, epoch_done: int) -> None:
        save(name, epoch_done)
        if name == LAST and epoch_done == 1:
            shutil.copy(tmp_path / "full" / LAST, tmp_path / "stopped.pt")

    full._save = save_and_copy
    full.fit()

    ck = load_checkpoint(tmp_path / "stopped.pt")
    assert ck["epoch"] == 1 and ck["phase"] == 0 and ck["global_step"] == 1
    torch.manual_seed(12345)  # the resumed process starts from unrelated RNG states
    np.random.seed(54321)
    resumed = Trainer(Config.from_dict(ck["config"]), tmp_path / "resumed", resume_state=ck, progress=False)
    assert resumed.start_epoch == 1
    resumed.fit()

    a, b = full.model.state_dict(), resumed.model.state_dict()
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=1e-6, msg=k)
    oa, ob = full.optimizer.state_dict()["state"], resumed.optimizer.state_dict()["state"]
    assert oa.keys() == ob.keys() and all(torch.equal(oa[i]["exp_avg"], ob[i]["exp_avg"]) for i in oa)
    rows_full = read_csv(tmp_path / "full" / CSV_NAME)
    rows_res = read_csv(tmp_path / "resumed" / CSV_NAME)  # rewritten from the checkpoint's history
    assert len(rows_full) == len(rows_res) == 2
    for rf, rr in zip(rows_full, rows_res):
        assert rf["train/loss"] == rr["train/loss"] and rf["valid/np_dice"] == rr["valid/np_dice"]
    assert (tmp_path / "full" / "best.pt").is_file()


def test_parse_epochs_and_gpus():
    assert st.parse_epochs("2", 2) == [2, 2]
    assert st.parse_epochs("2,3", 2) == [2, 3]
    for bad in ("2,3,4", "x", "-1"):
        with pytest.raises(ConfigError):
            st.parse_epochs(bad, 2)
    assert parse_gpus("") == [] and parse_gpus(None) == []
    assert parse_gpus("0,1") == [0, 1]
    with pytest.raises(InputError):
        parse_gpus("0,a")


def test_schedule_and_epoch_seeds():
    phases = [PhaseConfig(epochs=2), PhaseConfig(epochs=0), PhaseConfig(epochs=1)]
    cfg = Config(train=TrainConfig(phases=phases))
    slots = st.schedule(cfg)
    assert [(s.epoch, s.phase, s.epoch_in_phase) for s in slots] == [(0, 0, 0), (1, 0, 1), (2, 2, 0)]
    assert st.epoch_seed(0, 3) == st.epoch_seed(0, 3)
    assert len({st.epoch_seed(0, e) for e in range(50)} | {st.epoch_seed(1, 0)}) == 51


def test_resolve_amp_on_cpu():
    cpu = torch.device("cpu")
    assert resolve_amp("none", cpu) is None
    assert resolve_amp("bf16", cpu) == torch.bfloat16
    with pytest.raises(ConfigError, match="CUDA"):
        resolve_amp("fp16", cpu)


@pytest.mark.parametrize("amx", [True, False])
def test_auto_amp_on_cpu_uses_bf16_only_where_it_pays_off(monkeypatch, amx):
    """bf16 autocast measured slower than fp32 on AVX512-BF16 without AMX: "auto" follows the AMX check,
    in training and in inference alike."""
    from hovercrypt.models import precision
    from hovercrypt.train import amp

    monkeypatch.setattr(amp, "cpu_bf16_pays_off", lambda: amx)
    monkeypatch.setattr(precision, "cpu_bf16_pays_off", lambda: amx)
    want = torch.bfloat16 if amx else None
    assert resolve_amp("auto", torch.device("cpu")) == want
    assert precision.resolve_amp("auto", "cpu") == want  # inference uses the same function
    assert precision.resolve_amp("bf16", "cpu") == torch.bfloat16  # an explicit choice still wins


def test_csv_rewrite_keeps_all_columns(tmp_path):
    hist = [
        {"epoch": 1, "phase": 1, "train/loss": 1.5},
        {"epoch": 2, "phase": 1, "train/loss": 1.0, "valid/pq": 0.5},
    ]
    write_csv(tmp_path / "m.csv", hist)
    rows = read_csv(tmp_path / "m.csv")
    assert [r["epoch"] for r in rows] == ["1", "2"]
    assert rows[0]["valid/pq"] == "" and float(rows[1]["valid/pq"]) == 0.5
    assert float(rows[1]["train/loss"]) == 1.0


def test_unknown_best_metric_fails_before_training(tmp_path):
    from hovercrypt.train.trainer import Trainer

    cfg = tiny_config(tmp_path / "none", best_metric="valid/acuracy")
    with pytest.raises(ConfigError, match="best_metric"):
        Trainer(cfg, tmp_path / "log", progress=False)


@pytest.mark.parametrize("freeze_bn", [True, False])
def test_pretrained_encoder_keeps_its_batchnorm_statistics_while_it_trains(patch_dir, tmp_path, freeze_bn):
    import timm

    from hovercrypt.data.dataset import PatchDataset
    from hovercrypt.train.trainer import Trainer

    weights = tmp_path / "resnet18_local.pth"
    torch.save(timm.create_model("resnet18", pretrained=False).state_dict(), weights)
    cfg = tiny_config(patch_dir, epochs=(1, 1), pretrained=str(weights), freeze_encoder_bn=freeze_bn)
    trainer = Trainer(cfg, tmp_path / "log", progress=False)
    ds = PatchDataset.from_dir(patch_dir / "train", cfg, train=True)
    batch = torch.utils.data.default_collate([ds[0], ds[1]])
    trainer.enter_phase(1)  # the encoder trains
    trainer.train_mode()
    stats = [b.clone() for n, b in trainer.model.encoder.named_buffers() if "running_mean" in n]
    params = [p.detach().clone() for p in trainer.model.encoder.parameters()]
    trainer.train_step(batch)
    after = [b for n, b in trainer.model.encoder.named_buffers() if "running_mean" in n]
    assert not all(torch.equal(a, p) for a, p in zip(params, trainer.model.encoder.parameters()))
    assert all(torch.equal(a, b) for a, b in zip(stats, after)) == freeze_bn


def test_init_from_starts_a_new_schedule_from_the_checkpoint_weights(patch_dir, tmp_path):
    """train.init_from copies every weight of a finished run (fp16 export too) and restarts epochs at 0."""
    import dataclasses

    from hovercrypt.models.checkpoint import export_for_inference
    from hovercrypt.train.trainer import LAST, Trainer

    first = Trainer(tiny_config(patch_dir, epochs=(1,)), tmp_path / "first", progress=False)
    first.fit()
    half = export_for_inference(tmp_path / "first" / LAST, tmp_path / "first_fp16.pt")

    cfg = tiny_config(patch_dir, epochs=(0, 1))
    cfg = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, init_from=str(half)))
    second = Trainer(cfg, tmp_path / "second", progress=False)
    assert second.start_epoch == 0 and second.global_step == 0
    a, b = first.model.state_dict(), second.model.state_dict()
    for k in a:  # fp16 rounding only
        torch.testing.assert_close(b[k].float(), a[k].float(), rtol=1e-3, atol=1e-3, msg=k)
    # the encoder is trained, not random (no --pretrained here): phase 1 may freeze it, and
    # train.freeze_encoder_bn keeps its BatchNorm layers in eval mode while it trains
    assert second.encoder_trained and not cfg.model.pretrained
    frozen_cfg = dataclasses.replace(cfg, train=dataclasses.replace(
        cfg.train, phases=tiny_config(patch_dir, epochs=(1, 1)).train.phases))
    frozen = Trainer(frozen_cfg, tmp_path / "frozen", progress=False)
    frozen.enter_phase(0)
    assert not any(q.requires_grad for q in frozen.model.encoder.parameters())
    second.enter_phase(1)
    second.train_mode()
    bns = [m for m in second.model.encoder.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert bns and not any(m.training for m in bns)
    assert any(q.requires_grad for q in second.model.encoder.parameters())

    fresh = Trainer(tiny_config(patch_dir, epochs=(0, 1)), tmp_path / "fresh", progress=False)
    conv = "encoder.conv1.weight" if "encoder.conv1.weight" in a else next(iter(a))
    assert not torch.allclose(fresh.model.state_dict()[conv].float(), a[conv].float())

    # another model definition is a one-line config error naming the checkpoint and the field
    other = dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, decoder_width=0.5))
    with pytest.raises(ConfigError, match=r"first_fp16\.pt.*decoder_width"):
        Trainer(other, tmp_path / "other", progress=False)
