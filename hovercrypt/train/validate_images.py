"""Image-level validation: the real tile inference and post-processing on whole validation images.

Patch losses and NP Dice say little about what users get: whether each crypt
comes out as one object. Here every whole validation image (written by
``extract_patches.py`` to ``<patch_dir>/images/valid``) goes through the same
overlap-tile inference and watershed as ``run_infer.py``, and the GlaS object
F1 / object Dice and PQ are pooled over all images. Pixels outside an image's
valid-pixel mask are removed from both the prediction and the annotation.
"""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from hovercrypt.config import Config
from hovercrypt.data.crops import load_image_array
from hovercrypt.errors import InputError


def load_valid_images(folder: Path) -> list[tuple[str, str, np.ndarray]]:
    """``(source, name, (H, W, 6) array)`` of every whole validation image."""
    manifest = folder / "manifest.csv"
    if not manifest.is_file():
        raise InputError(
            f"{manifest}: no whole validation images; train.valid_images needs extract_patches.py --split"
        )
    with manifest.open(newline="") as f:
        rows = list(csv.DictReader(f))
    return [(r["source"], r["name"], load_image_array(folder / r["file"])) for r in rows]


def score_images(
    predictor: Any, images: list[tuple[str, str, np.ndarray]], cfg: Config, progress: bool = False
) -> dict[str, float]:
    """Pooled object F1 / Dice / PQ over ``images``, overall and per source (``img_obj_f1_<source>``)."""
    from hovercrypt.infer.tile import segment_image
    from hovercrypt.metrics.evaluate import aggregate, evaluate_detailed

    params = cfg.postproc.pixels(cfg.proc_mpp)
    per_source: dict[str, list] = {}
    for source, _name, arr in tqdm(images, desc="valid images", leave=False, disable=not progress):
        valid = arr[..., 5] > 0
        inst, _ = segment_image(predictor, np.ascontiguousarray(arr[..., :3].astype(np.uint8)),
                                cfg.proc_mpp, params)
        pred = np.where(valid, inst, 0).astype(np.int32)
        true = np.where(valid, arr[..., 3], 0).astype(np.int32)
        m, raw = evaluate_detailed(true, pred, mpp=cfg.proc_mpp, hausdorff=False)
        per_source.setdefault(source, []).append((m, raw))
    out: dict[str, float] = {}
    everything = [r for rs in per_source.values() for r in rs]
    for key, rs in [("", everything)] + [(f"_{s}", rs) for s, rs in sorted(per_source.items())]:
        pooled = aggregate([m for m, _ in rs], [r for _, r in rs])["pooled"]
        out[f"valid/img_obj_f1{key}"] = float(pooled["obj_f1"])
        out[f"valid/img_obj_dice{key}"] = float(pooled["obj_dice"])
        out[f"valid/img_pq{key}"] = float(pooled["pq"])
    out["valid/img_score"] = (out["valid/img_obj_f1"] + out["valid/img_obj_dice"]) / 2
    return out


@torch.no_grad()
def validate_images(
    model: torch.nn.Module, images: list, cfg: Config, device: torch.device, progress: bool = False
) -> dict[str, float]:
    """Score the model being trained; its train/eval mode is restored afterwards."""
    from hovercrypt.infer.predictor import NetworkPredictor

    was_training = model.training
    try:
        pred = NetworkPredictor(model, device=device, batch_size=8, amp="none", config=cfg)
        return score_images(pred, images, cfg, progress)
    finally:
        model.train(was_training)
