"""Validation after every epoch: losses, foreground Dice and (optionally) PQ / AJI.

Dice is pooled over all validation pixels (one ratio, not a mean of per-patch
ratios) so patches with little foreground do not dominate it. PQ and AJI run
the real post-processing on every validation patch, which is the number the
user cares about, but cost time; ``train.valid_instance_metrics`` turns them off.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from hovercrypt.config import Config

LossFn = Callable[[dict[str, torch.Tensor], dict[str, torch.Tensor]], tuple[torch.Tensor, dict[str, float]]]


def _instance_scores(
    model: torch.nn.Module, out: dict[str, torch.Tensor], batch: dict[str, torch.Tensor], cfg: Config
) -> tuple[list[float], list[float]]:
    from hovercrypt.metrics import aji, pq
    from hovercrypt.postproc import maps_to_instances

    params = cfg.postproc.pixels(cfg.proc_mpp)
    maps = {k: v.float().cpu().numpy() for k, v in model.to_maps(out).items()}
    true = batch["inst"].cpu().numpy()
    pq_counts = np.zeros(4)  # tp, fp, fn, iou_sum: PQ is pooled over all patches
    ajis = []
    for i in range(true.shape[0]):
        t = true[i].astype(np.int32)
        p = maps_to_instances({k: v[i] for k, v in maps.items()}, model.arch, params)
        if t.max() == 0 and p.max() == 0:
            continue  # nothing to find and nothing found: AJI undefined, adds nothing to PQ
        r = pq(t, p)
        pq_counts += [r["tp"], r["fp"], r["fn"], r["iou_sum"]]
        ajis.append(float(aji(t, p)))
    return pq_counts, ajis


def pooled_pq(counts: np.ndarray) -> float:
    """PQ = sum IoU of matches / (TP + FP/2 + FN/2) over all patches (1.0 when nothing anywhere)."""
    tp, fp, fn, iou_sum = counts
    denom = tp + 0.5 * fp + 0.5 * fn
    return float(iou_sum / denom) if denom > 0 else 1.0


@torch.no_grad()
def validate(
    model: torch.nn.Module,
    loader: Iterable[dict[str, torch.Tensor]],
    loss_fn: LossFn,
    cfg: Config,
    device: torch.device,
    autocast: Callable[[], Any],
    channels_last: bool = False,
    instance_metrics: bool = False,
    max_steps: int = 0,
    progress: bool = True,
) -> dict[str, float]:
    """Metrics of ``model`` on ``loader`` as ``{"valid/<name>": value}``."""
    was_training = model.training
    model.eval()
    from hovercrypt.models.registry import get_family

    family = get_family(model.arch, "arch")
    sums: dict[str, float] = {}
    n_seen = 0
    inter = total = 0.0
    pq_counts = np.zeros(4)
    ajis: list[float] = []
    try:
        total_steps = len(loader)  # type: ignore[arg-type]
    except TypeError:
        total_steps = None
    if max_steps and total_steps:
        total_steps = min(total_steps, max_steps)
    bar = tqdm(loader, total=total_steps, desc="valid", leave=False, disable=not progress)
    for step, batch in enumerate(bar):
        if max_steps and step >= max_steps:
            break
        batch = {k: v.to(device, non_blocking=True) for k, v in batch.items()}
        image = batch["image"]
        if channels_last:
            image = image.contiguous(memory_format=torch.channels_last)
        with autocast():
            out = model(image)
        out = {k: v.float() for k, v in out.items()}
        loss, parts = loss_fn(out, batch)
        n = image.shape[0]
        n_seen += n
        sums["loss"] = sums.get("loss", 0.0) + float(loss) * n
        for k, v in parts.items():  # "np_dice" the loss term must not clash with "np_dice" the score
            sums[f"{k}_loss"] = sums.get(f"{k}_loss", 0.0) + float(v) * n
        pred_fg, true_fg = family.foreground_masks(out, batch)
        inter += float((pred_fg & true_fg).sum())
        total += float(pred_fg.sum() + true_fg.sum())
        if instance_metrics:
            c, a = _instance_scores(model, out, batch, cfg)
            pq_counts += c
            ajis += a
    model.train(was_training)
    if n_seen == 0:
        return {}
    metrics = {f"valid/{k}": v / n_seen for k, v in sums.items()}
    metrics[family.valid_metric] = 2.0 * inter / total if total > 0 else 1.0
    if instance_metrics:
        metrics["valid/pq"] = pooled_pq(pq_counts)
        metrics["valid/aji"] = float(np.mean(ajis)) if ajis else 1.0
    return metrics
