"""The model-family registry: a new family is one module plus one ``register`` call.

``TinySeg`` stands in for a new semantic family (the pattern of segmentation_models_pytorch
networks): its own network, the UNet's targets, loss and post-processing. Registered for this
module only, it must build from a config, train one step through the real trainer, run tile
inference through the real engine from its checkpoint, and be listed by ``--list_models``.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from hovercrypt.config import (
    MODE_WINDOWS,
    Config,
    ConfigError,
    DataConfig,
    ModelConfig,
    PhaseConfig,
    TrainConfig,
    UNetPostproc,
)
from hovercrypt.models import build_model, registry
from hovercrypt.testing.synthetic import random_ellipses, render_he

NAME = "tinyseg"


class TinySeg(nn.Module):
    """Two padded convolutions; predicts the whole window and returns its centre (like the UNet)."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.input_size, self.output_size = MODE_WINDOWS[cfg.mode]
        self.nr_types = cfg.nr_types
        self.body = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, cfg.unet_classes, 1))

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        m = (x.shape[-1] - self.output_size) // 2
        seg = self.body(x)
        return {"seg": seg[..., m : m + self.output_size, m : m + self.output_size]}

    @torch.no_grad()
    def to_maps(self, out: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return {"seg": torch.softmax(out["seg"].float(), dim=1).permute(0, 2, 3, 1).contiguous()}


def build_tinyseg(cfg: ModelConfig) -> TinySeg:
    return TinySeg(cfg)


@pytest.fixture(scope="module")
def family():
    entry = registry.register(registry.UNET.derive(NAME, "tiny test family (UNet recipe)", build_tinyseg))
    yield entry
    registry.unregister(NAME)
    assert NAME not in registry.family_names()
    with pytest.raises(ConfigError, match="model.arch must be one of"):
        ModelConfig(arch=NAME).validate()


def _model_cfg() -> ModelConfig:
    return ModelConfig(arch=NAME, mode="fast", nr_types=0, unet_classes=3)


def test_builtin_families_and_errors() -> None:
    assert {"hovernet", "unet"} <= set(registry.family_names())
    assert registry.get_family("unet").settings_class() is UNetPostproc
    with pytest.raises(ConfigError, match=r"model.arch must be one of \[.*'hovernet'.*'unet'.*maskrcnn"):
        ModelConfig(arch="maskrcnn").validate()
    with pytest.raises(ValueError, match="already registered"):
        registry.register(registry.UNET)
    with pytest.raises(ValueError, match="module:attribute"):
        registry.resolve("no_colon_here")


def test_new_family_builds_from_a_config_with_its_settings(family) -> None:
    cfg = Config(model=_model_cfg())
    assert isinstance(cfg.postproc, UNetPostproc)  # the settings of the recipe it reuses
    model = build_model(cfg.model)
    assert isinstance(model, TinySeg) and model.arch == NAME  # stamped by the registry
    assert Config.from_dict(cfg.to_dict()) == cfg


def test_new_family_is_listed_by_run_train(family, capsys) -> None:
    spec = importlib.util.spec_from_file_location("run_train", Path(__file__).parents[1] / "run_train.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    assert mod.main(["--list_models"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [ln.split()[0] for ln in lines] == registry.family_names()
    assert any(ln.startswith(NAME) and "tiny test family" in ln for ln in lines)


def _write_patches(root: Path, size: int) -> None:
    for split, seed in (("train", 0), ("valid", 1)):
        (root / split).mkdir(parents=True)
        inst = random_ellipses((size, size), 6, radius_range=(12, 30), seed=seed)
        patch = np.zeros((size, size, 5), np.int32)
        patch[..., :3] = render_he(inst, seed=seed)
        patch[..., 3] = inst
        np.save(root / split / f"p{seed}.npy", patch)


def test_new_family_trains_and_runs_tile_inference(family, tmp_path) -> None:
    from hovercrypt.infer.predictor import NetworkPredictor
    from hovercrypt.infer.tile import segment_image
    from hovercrypt.models.checkpoint import load_checkpoint
    from hovercrypt.train.trainer import Trainer

    size = MODE_WINDOWS["fast"][0]
    _write_patches(tmp_path / "patches", size)
    cfg = Config(
        name="tiny",
        model=_model_cfg(),
        data=DataConfig(patch_dir=str(tmp_path / "patches"), patch_size=size),
        train=TrainConfig(
            phases=[PhaseConfig(name="all", epochs=1, lr=1e-3, batch_size=1)],
            num_workers=0,
            amp="none",
            max_steps_per_epoch=1,
            channels_last=False,
        ),
    )
    trainer = Trainer(cfg, tmp_path / "log", progress=False)
    assert trainer.best_key == "valid/crypt_dice"  # the family's validation metric
    (row,) = trainer.fit()
    # the UNet loss terms and the family's validation hooks ran
    assert {"valid/seg_ce_loss", "valid/crypt_dice", "valid/pq"} <= set(row), sorted(row)
    assert np.isfinite(row["train/loss"])
    ckpt = tmp_path / "log" / "last.pt"
    assert load_checkpoint(ckpt)["arch"] == NAME

    pred = NetworkPredictor.from_checkpoint(ckpt, batch_size=2, amp="none")
    assert pred.arch == NAME and isinstance(pred.config.postproc, UNetPostproc)
    image = render_he(random_ellipses((200, 230), 5, radius_range=(12, 25), seed=4), seed=4)
    params = pred.config.postproc.pixels(pred.config.proc_mpp)
    inst, info = segment_image(pred, image, pred.config.proc_mpp, params, batch_size=2)
    assert inst.shape == (200, 230) and inst.dtype == np.int32 and len(info) == int(inst.max())
