"""Output branches of HoVer-Net and the conversion of their logits into inference maps."""

from __future__ import annotations

import torch

#: branch name -> fixed channel count (``tp`` has ``nr_types`` channels)
BRANCH_CHANNELS = {"np": 2, "hv": 2}


def branch_channels(nr_types: int) -> dict[str, int]:
    """The branches a model with ``nr_types`` types has (no NC branch when ``nr_types == 0``)."""
    ch = dict(BRANCH_CHANNELS)
    if nr_types > 0:
        ch["tp"] = nr_types
    return ch


def hovernet_maps(out: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Logits -> channel-last float32 maps: NP foreground probability, HV offsets, NC softmax.

    HV is clipped to [-1, 1], the range of its targets, so a stray large value
    cannot dominate the Sobel energy used by the watershed.
    """
    maps = {
        "np": torch.softmax(out["np"].float(), dim=1)[:, 1:2].permute(0, 2, 3, 1),
        "hv": out["hv"].float().clamp(-1.0, 1.0).permute(0, 2, 3, 1),
    }
    if "tp" in out:
        maps["tp"] = torch.softmax(out["tp"].float(), dim=1).permute(0, 2, 3, 1)
    return {k: v.contiguous() for k, v in maps.items()}


def hovernet_foreground(
    out: dict[str, torch.Tensor], batch: dict[str, torch.Tensor]
) -> tuple[torch.Tensor, torch.Tensor]:
    """(predicted, true) NP foreground (N, h, w) for the validation Dice (registry hook)."""
    return out["np"].argmax(1) == 1, batch["np"] == 1
