"""UNet baseline through the shared tools: overlap-tile inference + post-processing with an exact
UNet oracle, checkpoint -> run_infer.py tile, run_train.py --model=unet, and the architecture
stored in the checkpoint guarding against wrong flags."""

from __future__ import annotations

import csv
import dataclasses
import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from hovercrypt.config import (
    Config,
    ConfigError,
    DataConfig,
    ModelConfig,
    PhaseConfig,
    TrainConfig,
    UNetPostproc,
)
from hovercrypt.data.targets import seg_target
from hovercrypt.infer.tile import segment_image
from hovercrypt.metrics import pq
from hovercrypt.testing.oracle import render_instances
from hovercrypt.testing.synthetic import random_ellipses, render_he

REPO = Path(__file__).resolve().parents[1]


class UNetOracle:
    """Exact UNet maps (one-hot 2- or 3-class) of known ellipses, for the tile pipeline.

    Boundaries are computed on a window wider than the output, as a network with
    context would see them: a boundary between two crypts on a tile edge is kept.
    """

    arch = "unet"
    nr_types = 0

    def __init__(self, ellipses: np.ndarray, classes: int, input_size: int = 160, output_size: int = 128):
        self.ellipses, self.classes = ellipses, classes
        self.input_size, self.output_size = input_size, output_size

    def predict(self, tiles: np.ndarray, origins: np.ndarray) -> dict[str, np.ndarray]:
        m, o, pad = (self.input_size - self.output_size) // 2, self.output_size, 4
        maps = []
        for ox, oy in origins:
            inst = render_instances(
                self.ellipses, int(ox) + m - pad, int(oy) + m - pad, o + 2 * pad, o + 2 * pad
            )
            seg = seg_target(inst, self.classes, 2)[pad:-pad, pad:-pad]
            maps.append(np.eye(self.classes, dtype=np.float32)[seg])
        return {"seg": np.stack(maps)}


def _touching_chains(w: int, h: int, r: float = 22.0) -> np.ndarray:
    """Rows (cx, cy, ra, rb, theta, type): chains of touching discs, many across 128-px tile edges."""
    rows = []
    for cy in np.arange(40, h - 40, 70):
        for cx in np.arange(40 + (cy // 70 % 2) * 30, w - 2 * r - 40, 2 * r + 40):
            rows.append((cx, cy, r, r, 0.0, 1))
            rows.append((cx + 2 * r - 1, cy + 3, r, r * 0.8, 0.3, 1))  # touches both neighbours
    return np.array(rows, np.float64)


@pytest.mark.parametrize("classes", [2, 3])
def test_tile_inference_with_exact_unet_maps_recovers_touching_crypts(classes):
    h, w = 300, 420
    ell = _touching_chains(w, h)
    truth = render_instances(ell, 0, 0, w, h)
    assert len(np.unique(truth)) - 1 == len(ell)
    # demanding: the crypts touch in chains, so plain connected components would merge most of them
    from scipy import ndimage as ndi

    assert ndi.label(truth > 0)[1] <= len(ell) // 4
    params = UNetPostproc(min_object_area_um2=50.0).pixels(1.0)
    image = np.zeros((h, w, 3), np.uint8)
    inst, info = segment_image(UNetOracle(ell, classes), image, 1.0, params, batch_size=4)
    assert inst.shape == (h, w) and len(info) == len(ell)
    res = pq(truth, inst)
    assert res["fp"] == 0 and res["fn"] == 0 and res["pq"] >= 0.9, res


@pytest.fixture(scope="module")
def checkpoint():
    return pytest.importorskip("hovercrypt.models.checkpoint", reason="model checkpoints not available yet")


def _script(name: str):
    spec = importlib.util.spec_from_file_location(name.removesuffix(".py"), REPO / name)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _unet_config(patch_dir: str = "", nr_types: int = 0, classes: int = 2) -> Config:
    """A tiny UNet (fast windows 256 -> 164, base width 4, 4 levels) that runs in a second on a CPU."""
    return Config(
        name="unet_tiny",
        proc_mpp=1.0,
        model=ModelConfig(
            arch="unet",
            mode="fast",
            nr_types=nr_types,
            unet_classes=classes,
            unet_base_width=4,
            unet_levels=4,
        ),
        data=DataConfig(patch_dir=patch_dir, patch_size=256, image_mpp=1.0),
        train=TrainConfig(
            phases=[PhaseConfig(name="all", epochs=1, freeze_encoder=False, lr=1e-3, batch_size=2)],
            num_workers=0,
            amp="none",
            channels_last=False,
        ),
    )


@pytest.fixture(scope="module")
def unet_ckpt(tmp_path_factory, checkpoint) -> Path:
    """A random-weight UNet saved with the shared save_checkpoint."""
    torch.manual_seed(0)
    cfg = _unet_config(nr_types=3)
    from hovercrypt.models import build_model

    model = build_model(cfg.model)
    path = tmp_path_factory.mktemp("ckpt") / "unet.pt"
    checkpoint.save_checkpoint(path, model, cfg, epoch=0)
    return path


def test_checkpoint_stores_the_architecture_and_wrong_expectation_fails(unet_ckpt, checkpoint):
    loaded = checkpoint.load_model(unet_ckpt, "cpu")
    model = loaded[0] if isinstance(loaded, tuple) else loaded
    assert model.arch == "unet" and model.nr_types == 3
    assert checkpoint.load_checkpoint(unet_ckpt)["arch"] == "unet"
    with pytest.raises((ConfigError, ValueError), match="(?i)unet"):
        checkpoint.load_model(unet_ckpt, "cpu", expect_arch="hovernet")


def test_unet_checkpoint_runs_through_run_infer_tile(unet_ckpt, tmp_path):
    inp, out = tmp_path / "in", tmp_path / "out"
    inp.mkdir()
    shape = (230, 300)  # not a multiple of the 164 px output window
    rgb = render_he(random_ellipses(shape, 6, radius_range=(15, 35), seed=3), seed=3)
    from hovercrypt.io.images import write_png

    write_png(inp / "tile1.png", rgb)
    run_infer = _script("run_infer.py")
    rc = run_infer.main(
        ["tile", f"--input_dir={inp}", f"--output_dir={out}", f"--model_path={unet_ckpt}", "--batch_size=4"]
    )
    assert rc == 0
    for sub, ext in (("json", "json"), ("mat", "mat"), ("overlay", "png"), ("geojson", "geojson")):
        assert (out / sub / f"tile1.{ext}").is_file(), sub
    from scipy.io import loadmat

    mat = loadmat(out / "mat" / "tile1.mat")
    assert mat["inst_map"].shape == shape
    n_inst = len(np.unique(mat["inst_map"])) - (1 if (mat["inst_map"] == 0).any() else 0)
    meta = json.loads((out / "json" / "tile1.json").read_text())
    assert meta.get("arch", meta.get("meta", {}).get("arch")) == "unet"
    with open(out / "counts.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [r["image"] for r in rows] == ["tile1.png"] and int(rows[0]["total"]) == n_inst


def _write_patches(root: Path, n_train: int = 2, n_valid: int = 1) -> None:
    for split, n in (("train", n_train), ("valid", n_valid)):
        (root / split).mkdir(parents=True)
        for i in range(n):
            inst = random_ellipses((256, 256), 8, radius_range=(12, 30), seed=10 + i, allow_touching=True)
            types = np.where(inst > 0, 1 + inst % 2, 0)
            patch = np.dstack([render_he(inst, seed=i), inst, types]).astype(np.int32)
            np.save(root / split / f"p{i}.npy", patch)


def test_run_train_model_unet_one_step_then_wrong_flags_fail(tmp_path, checkpoint, capsys):
    patches = tmp_path / "patches"
    _write_patches(patches)
    cfg_path = tmp_path / "unet.json"
    cfg = _unet_config(str(patches), nr_types=0, classes=3)
    # a HoVer-Net config file (with HoVer-Net post-processing); the architecture comes from --model=unet
    cfg = dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, arch="hovernet"))
    cfg.save_json(cfg_path)
    log_dir = tmp_path / "log"
    run_train = _script("run_train.py")
    common = ["--gpu=", "--no_progress", "--max_steps_per_epoch=1", "--num_workers=0", "--amp=none"]
    rc = run_train.main(
        [f"--config={cfg_path}", "--model=unet", f"--log_dir={log_dir}", "--epochs=1", *common]
    )
    assert rc == 0
    ck = checkpoint.load_checkpoint(log_dir / "last.pt")
    assert ck["arch"] == "unet" and ck["config"]["model"]["unet_classes"] == 3
    model = checkpoint.load_model(log_dir / "last.pt", "cpu")
    model = model[0] if isinstance(model, tuple) else model
    assert model.arch == "unet" and model.nr_classes == 3
    # the checkpoint's architecture wins: asking for HoVer-Net on resume is a clear error
    assert run_train.main([f"--resume={log_dir}", "--model=hovernet", *common]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--model" in err[0] and err[0].startswith("error:")
    with pytest.raises((ConfigError, ValueError), match="(?i)unet"):
        checkpoint.load_model(log_dir / "last.pt", "cpu", expect_arch="hovernet")
