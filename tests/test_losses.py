"""HoVer-Net losses on hand-made tensors: perfect predictions, hand-computed values, masking."""

from __future__ import annotations

import math

import pytest
import torch

from hovercrypt.config import ConfigError, LossWeights
from hovercrypt.models.losses import (
    DICE_SMOOTH,
    compute_loss,
    hovernet_loss,
    msge_loss,
    soft_dice_loss,
)


def _confident(labels: torch.Tensor, n: int) -> torch.Tensor:
    """Logits of +-20: softmax is 1 - 4e-18 on the true class, so CE is ~0."""
    return torch.nn.functional.one_hot(labels, n).permute(0, 3, 1, 2).float() * 40 - 20


def _batch(seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    np_t = torch.zeros(2, 12, 12, dtype=torch.long)
    np_t[:, 2:8, 3:10] = 1
    tp = np_t * torch.randint(1, 3, (2, 1, 1), generator=g)
    return {"np": np_t, "hv": torch.rand(2, 2, 12, 12, generator=g) * 2 - 1, "tp": tp}


def test_perfect_prediction_gives_zero():
    b = _batch()
    out = {"np": _confident(b["np"], 2), "hv": b["hv"].clone(), "tp": _confident(b["tp"], 3)}
    total, parts = hovernet_loss(out, b, LossWeights())
    assert set(parts) == {"np_ce", "np_dice", "hv_mse", "hv_msge", "tp_ce", "tp_dice"}
    assert float(total) < 1e-6 and all(float(v) < 1e-6 for v in parts.values())


def test_known_values():
    # 1 image of 2x2, top row foreground; logits all 0 -> p = 0.5 for both classes.
    # CE = -log(0.5) = ln 2. Dice per class: sum(p t) = 0.5 * 2 = 1, sum p = 2, sum t = 2, so
    # loss = 1 - (2 * 1 + s) / (2 + 2 + s) = 2 / (4 + s) for both classes (mean over classes, same).
    np_t = torch.tensor([[[1, 1], [0, 0]]])
    logits = torch.zeros(1, 2, 2, 2)
    hv = torch.zeros(1, 2, 2, 2)
    _, parts = hovernet_loss({"np": logits, "hv": hv}, {"np": np_t, "hv": hv}, LossWeights())
    assert float(parts["np_ce"]) == pytest.approx(math.log(2), rel=1e-6)
    assert float(parts["np_dice"]) == pytest.approx(2 / (4 + DICE_SMOOTH), rel=1e-6)
    assert "tp_ce" not in parts  # no NC branch in the output -> no NC terms

    # HV: target 0, prediction v = 2 at the centre of channel 0 of a 5x5 map, all foreground.
    # MSE = v^2 / (2 * 25) = 0.08. Sobel/8 d/dx of that spike: +-v/4 at the left/right neighbours
    # and +-v/8 at the 4 diagonal neighbours, so the squared sum is 2 v^2/16 + 4 v^2/64 = 3 v^2 / 16,
    # averaged over 2 channels x 25 foreground pixels: MSGE = 3 v^2 / 800 = 0.015.
    target = torch.zeros(1, 2, 5, 5)
    pred = target.clone()
    pred[0, 0, 2, 2] = 2.0
    fg = torch.ones(1, 5, 5, dtype=torch.long)
    _, parts = hovernet_loss({"np": _confident(fg, 2), "hv": pred}, {"np": fg, "hv": target}, LossWeights())
    assert float(parts["hv_mse"]) == pytest.approx(0.08, rel=1e-6)
    assert float(parts["hv_msge"]) == pytest.approx(0.015, rel=1e-5)
    # the same spike in channel 1 is differentiated along y: same value by symmetry
    pred_y = pred.flip(1)
    assert float(msge_loss(pred_y, target, fg > 0)) == pytest.approx(0.015, rel=1e-5)


def test_msge_ignores_background_errors():
    target = torch.zeros(1, 2, 10, 10)
    fg = torch.zeros(1, 10, 10, dtype=torch.bool)
    fg[:, :, :4] = True  # foreground: columns 0-3
    pred = target.clone()
    pred[:, :, 3:7, 7:] = torch.rand(2, 4, 3)  # errors only at columns 7-9 (2+ px from foreground)
    assert float(msge_loss(pred, target, fg)) == 0.0
    assert float(torch.nn.functional.mse_loss(pred, target)) > 0  # MSE does see them
    assert float(msge_loss(pred, target, fg.flip(-1))) > 1e-3  # the same errors on foreground count


def test_weights_combine_the_parts():
    b = _batch(1)
    g = torch.Generator().manual_seed(3)
    out = {k: torch.randn(2, c, 12, 12, generator=g) for k, c in (("np", 2), ("hv", 2), ("tp", 3))}
    w = LossWeights(np_ce=0.5, np_dice=2.0, hv_mse=3.0, hv_msge=0.0, tp_ce=1.5, tp_dice=0.25)
    total, parts = hovernet_loss(out, b, w)
    assert all(float(v) > 0 for v in parts.values())
    expected = sum(getattr(w, k) * v for k, v in parts.items())
    assert float(total) == pytest.approx(float(expected), rel=1e-6)
    total2, _ = compute_loss("hovernet", out, b, w)
    assert float(total2) == pytest.approx(float(total), rel=1e-6)


def test_float32_under_autocast_and_gradients_flow():
    b = _batch(2)
    g = torch.Generator().manual_seed(4)
    ref = {k: torch.randn(2, c, 12, 12, generator=g) for k, c in (("np", 2), ("hv", 2), ("tp", 3))}
    out = {k: v.to(torch.bfloat16).requires_grad_() for k, v in ref.items()}
    with torch.autocast("cpu", dtype=torch.bfloat16):
        total, parts = hovernet_loss(out, b, LossWeights())
    assert total.dtype == torch.float32 and all(v.dtype == torch.float32 for v in parts.values())
    ref_total, _ = hovernet_loss({k: v.to(torch.bfloat16).float() for k, v in ref.items()}, b, LossWeights())
    assert float(total.detach()) == pytest.approx(float(ref_total), rel=1e-6)
    total.backward()
    assert all(v.grad is not None and v.grad.abs().sum() > 0 for v in out.values())


def test_dice_of_absent_class_is_zero_and_errors_are_clear():
    labels = torch.zeros(1, 4, 4, dtype=torch.long)  # class 2 absent in target and prediction
    assert float(soft_dice_loss(_confident(labels, 3), labels)) < 1e-6
    b = _batch()
    bad = {"np": torch.zeros(2, 2, 10, 10), "hv": torch.zeros(2, 2, 10, 10)}
    with pytest.raises(ValueError, match="cropped to the network output"):
        hovernet_loss(bad, b, LossWeights())
    with pytest.raises(KeyError, match="hv"):
        hovernet_loss({"np": b["np"]}, {"np": b["np"]}, LossWeights())
    with pytest.raises(ConfigError, match="maskrcnn"):
        compute_loss("maskrcnn", bad, b, LossWeights())
