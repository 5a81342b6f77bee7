"""Networks (HoVer-Net, UNet baseline), their losses and checkpoints.

``build_model`` is the one entry point: it asks the family registry
(:mod:`hovercrypt.models.registry`) for ``model.arch``, so the training loop,
inference and checkpoint loading never name a class directly. torch is imported
only when a model is built: configs check ``model.arch`` against the registry
without it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from hovercrypt.config import ModelConfig

if TYPE_CHECKING:
    from torch import nn


def build_model(model_cfg: ModelConfig) -> nn.Module:
    """Build the network of ``model_cfg.arch``; the family's builder loads ``model_cfg.pretrained``."""
    from hovercrypt.models.registry import get_family

    model_cfg.validate()
    return get_family(model_cfg.arch, "model.arch").build_model(model_cfg)


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


__all__ = ["build_model", "count_parameters"]
