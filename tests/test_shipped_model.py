"""The model shipped inside the package: size, loading, and a sanity floor on real GlaS data."""

from __future__ import annotations

import numpy as np
import pytest

from hovercrypt.models.checkpoint import default_model_path, load_checkpoint

MAX_MB = 62.0  # ResNet50 HoVer-Net, fp16: 29.4 M parameters


def test_shipped_checkpoint_is_small_fp16_and_complete() -> None:
    path = default_model_path()
    size_mb = path.stat().st_size / 1e6
    assert size_mb <= MAX_MB, f"{path} is {size_mb:.1f} MB > {MAX_MB} MB"
    ckpt = load_checkpoint(path)
    assert ckpt["arch"] == "hovernet"
    floats = [t for t in ckpt["model"].values() if t.is_floating_point()]
    assert floats and all(t.dtype.itemsize == 2 for t in floats), "shipped weights must be fp16"
    assert ckpt["config"]["proc_mpp"] == pytest.approx(0.93)


def test_shipped_model_finds_glands_on_a_glas_image(glas_dir) -> None:
    """Tile inference with the shipped model on one GlaS image: object F1 >= 0.7 (a floor, not the goal).

    ``train_12`` (patient 13, benign) is the first image, by name, of the patient-disjoint
    validation split, so the model never trained on it (benchmarks/accuracy.py scores the whole split).
    """
    from hovercrypt.infer.predictor import NetworkPredictor
    from hovercrypt.infer.tile import segment_image
    from hovercrypt.io.images import read_label, read_rgb
    from hovercrypt.metrics import object_f1

    pred = NetworkPredictor.from_checkpoint(default_model_path(), batch_size=4)
    cfg = pred.config
    image = read_rgb(glas_dir / "train_12.png")
    true = read_label(glas_dir / "train_12_anno.png")
    inst, info = segment_image(pred, image, cfg.proc_mpp, cfg.postproc.pixels(cfg.proc_mpp), input_mpp=0.465)
    assert inst.shape == true.shape
    assert len(info) == len(np.unique(inst)) - 1
    f1 = object_f1(true, inst)["f1"]
    assert f1 >= 0.7, f"object F1 {f1:.3f} on train_12"
