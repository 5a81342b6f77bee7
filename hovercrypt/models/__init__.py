"""Networks (HoVer-Net, UNet baseline), their losses and checkpoints.

``build_model`` is the one entry point: it dispatches on ``model.arch`` so the
training loop, inference and checkpoint loading never name a class directly.
"""

from __future__ import annotations

from torch import nn

from hovercrypt.config import ConfigError, ModelConfig


def build_model(model_cfg: ModelConfig) -> nn.Module:
    """Build the network of ``model_cfg.arch``; loads ``model_cfg.pretrained`` into the encoder if set."""
    model_cfg.validate()
    if model_cfg.arch == "hovernet":
        from hovercrypt.models.hovernet import HoVerNet

        model: nn.Module = HoVerNet(model_cfg)
    elif model_cfg.arch == "unet":
        from hovercrypt.models.unet import build_unet

        model = build_unet(model_cfg)
        return model  # the UNet builder handles its own (optional) pretrained encoder
    else:  # validate() already rejects this; kept for a clear message if arches are added
        raise ConfigError(f"model.arch {model_cfg.arch!r} is not supported")
    if model_cfg.pretrained:
        from hovercrypt.models.encoder import load_pretrained_encoder

        load_pretrained_encoder(model.encoder, model_cfg.pretrained)
    return model


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


__all__ = ["build_model", "count_parameters"]
