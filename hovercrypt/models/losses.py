"""HoVer-Net losses: NP (CE + Dice), HV (MSE + MSGE), NC (CE + Dice).

All terms are computed in float32 with autocast disabled: bf16 has too few
mantissa bits for the small squared HV errors and the Dice sums over a batch.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from hovercrypt.config import LossWeights

DICE_SMOOTH = 1e-3  # keeps Dice defined (and = 1 -> loss 0) for classes absent from target and prediction
# 3x3 Sobel divided by 8, so that d/dx of a unit ramp is exactly 1
_SOBEL_X = torch.tensor([[-1.0, 0.0, 1.0], [-2.0, 0.0, 2.0], [-1.0, 0.0, 1.0]]) / 8.0


def soft_dice_loss(
    logits: torch.Tensor, target: torch.Tensor, valid: torch.Tensor | None = None
) -> torch.Tensor:
    """Mean over classes of ``1 - (2 sum(p t) + s) / (sum p + sum t + s)``, sums over the whole batch.

    ``logits`` (N, C, H, W), ``target`` int64 (N, H, W) class ids, ``valid`` optional (N, H, W)
    weights: pixels with 0 count neither in the prediction nor in the target sums.
    """
    prob = torch.softmax(logits, dim=1)
    onehot = F.one_hot(target, logits.shape[1]).permute(0, 3, 1, 2).to(prob.dtype)
    if valid is not None:
        m = valid.to(prob.dtype).unsqueeze(1)
        prob, onehot = prob * m, onehot * m
    dims = (0, 2, 3)
    inter = (prob * onehot).sum(dims)
    denom = prob.sum(dims) + onehot.sum(dims)
    return (1.0 - (2.0 * inter + DICE_SMOOTH) / (denom + DICE_SMOOTH)).mean()


def sobel_gradients(hv: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """d/dx of channel 0 and d/dy of channel 1 (3x3 Sobel / 8, replicate-padded), each (N, H, W)."""
    kx = _SOBEL_X.to(device=hv.device, dtype=hv.dtype).view(1, 1, 3, 3)
    ky = kx.transpose(-1, -2)
    padded = F.pad(hv, (1, 1, 1, 1), mode="replicate")
    gx = F.conv2d(padded[:, 0:1], kx)[:, 0]
    gy = F.conv2d(padded[:, 1:2], ky)[:, 0]
    return gx, gy


def msge_loss(pred: torch.Tensor, target: torch.Tensor, fg: torch.Tensor) -> torch.Tensor:
    """Mean squared error of HV gradients over foreground pixels (both channels counted).

    The HV gradient only matters inside objects, where its sharp change at
    borders between touching objects is what the watershed uses; background
    pixels are excluded so errors there cost nothing here.
    """
    px, py = sobel_gradients(pred)
    tx, ty = sobel_gradients(target)
    mask = fg.to(pred.dtype)
    sq = ((px - tx) ** 2 + (py - ty) ** 2) * mask
    return sq.sum() / (2.0 * mask.sum() + 1e-8)


def masked_ce(logits: torch.Tensor, target: torch.Tensor, valid: torch.Tensor | None) -> torch.Tensor:
    """Cross-entropy averaged over valid pixels only (all pixels when ``valid`` is None)."""
    if valid is None:
        return F.cross_entropy(logits, target)
    m = valid.to(logits.dtype)
    return (F.cross_entropy(logits, target, reduction="none") * m).sum() / m.sum().clamp_min(1.0)


def masked_mse(pred: torch.Tensor, target: torch.Tensor, valid: torch.Tensor | None) -> torch.Tensor:
    """Mean squared error over valid pixels of (N, C, H, W) maps."""
    if valid is None:
        return F.mse_loss(pred, target)
    m = valid.to(pred.dtype).unsqueeze(1)
    return (((pred - target) ** 2) * m).sum() / (m.sum() * pred.shape[1]).clamp_min(1.0)


def _interior(valid: torch.Tensor) -> torch.Tensor:
    """Valid pixels whose whole 3x3 neighbourhood is valid.

    The 3x3 Sobel of the MSGE term reads each pixel's neighbours, so an ignored
    pixel next to a counted one would still get a gradient through it.
    """
    invalid = (valid <= 0).to(torch.float32).unsqueeze(1)
    return F.max_pool2d(invalid, 3, stride=1, padding=1)[:, 0] == 0


def _check_batch(out: dict[str, torch.Tensor], batch: dict[str, torch.Tensor], keys: tuple[str, ...]) -> None:
    for k in keys:
        if k not in batch:
            raise KeyError(f"loss needs batch[{k!r}] (present: {sorted(batch)})")
        if tuple(out[k].shape[-2:]) != tuple(batch[k].shape[-2:]):
            raise ValueError(
                f"output {k} is {tuple(out[k].shape[-2:])} but target is {tuple(batch[k].shape[-2:])}: "
                "patch targets must be cropped to the network output window"
            )


def hovernet_loss(
    out: dict[str, torch.Tensor], batch: dict[str, torch.Tensor], weights: LossWeights
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Weighted total and the unweighted, detached parts (``np_ce``, ``np_dice``, ``hv_mse``, ...).

    ``batch["valid"]`` (optional, (N, H, W), 1 = real pixel) removes ignored pixels from every
    term of every branch, so they receive no gradient.
    """
    keys = ("np", "hv", "tp") if "tp" in out else ("np", "hv")
    _check_batch(out, batch, keys)
    with torch.autocast(device_type=out["np"].device.type, enabled=False):
        np_logits = out["np"].float()
        np_t = batch["np"].long()
        valid = batch.get("valid")
        valid = None if valid is None else valid.float()
        hv_p, hv_t = out["hv"].float(), batch["hv"].float()
        fg = np_t > 0 if valid is None else (np_t > 0) & _interior(valid)
        parts = {
            "np_ce": masked_ce(np_logits, np_t, valid),
            "np_dice": soft_dice_loss(np_logits, np_t, valid),
            "hv_mse": masked_mse(hv_p, hv_t, valid),
            "hv_msge": msge_loss(hv_p, hv_t, fg),
        }
        if "tp" in out:
            tp_logits, tp_t = out["tp"].float(), batch["tp"].long()
            parts["tp_ce"] = masked_ce(tp_logits, tp_t, valid)
            parts["tp_dice"] = soft_dice_loss(tp_logits, tp_t, valid)
        total = sum(getattr(weights, k) * v for k, v in parts.items())
    return total, {k: v.detach() for k, v in parts.items()}


def compute_loss(
    arch: str, out: dict[str, torch.Tensor], batch: dict[str, torch.Tensor], weights: LossWeights
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Loss of the model family ``arch`` (asked from the registry), so the training loop never names one."""
    from hovercrypt.models.registry import get_family

    return get_family(arch, "model arch").compute_loss(out, batch, weights)
