"""UNETR (MONAI) as a semantic family: a ViT encoder with a convolutional UNet-style decoder.

The network is MONAI's ``UNETR`` in 2-D; hovercrypt wraps it like the smp families
(:mod:`hovercrypt.models.smp_families`) so it trains and runs exactly as the UNet
baseline: the same normalisation, ``seg`` / ``tp`` heads, targets, loss and
post-processing. MONAI's output block is replaced by the identity, so the heads read its
last decoder stage (``model.unet_base_width`` channels = MONAI's ``feature_size``, full
resolution).

Why the window rules are stricter than the other families': the ViT cuts the input into
16 px patches and learns one position embedding per patch of a *fixed* ``img_size``, so
the network input must be exactly the training window and a multiple of 16. ``fast``
mode (256 px) fits; ``original`` (270 px) is refused, and so is running it on another
inference window (``run_infer.py --window``). The encoder (``model.encoder``: ``vit_tiny``,
``vit_small``, ``vit_base``; 12 layers, as UNETR taps layers 3, 6, 9 and 12) starts from
random weights: there are no local UNETR weights, so ``model.pretrained`` is refused.
BatchNorm (not MONAI's default instance norm) keeps every pixel's output independent of
the rest of the tile, as in the other families.
"""

from __future__ import annotations

import torch
from torch import nn

from hovercrypt.config import MODE_WINDOWS, ConfigError, ModelConfig
from hovercrypt.models.unet import UNetBase

ARCH = "unetr"
#: MONAI's UNETR uses 16 px patches (fixed inside the network)
PATCH_SIZE = 16
#: encoder name -> (hidden size, MLP size, attention heads); 12 layers each
VIT_SIZES: dict[str, tuple[int, int, int]] = {
    "vit_tiny": (192, 768, 3),
    "vit_small": (384, 1536, 6),
    "vit_base": (768, 3072, 12),
}


def check_unetr_config(cfg: ModelConfig) -> int:
    """The input window of a valid UNETR config; a one-line :class:`ConfigError` otherwise."""
    if cfg.encoder not in VIT_SIZES:
        raise ConfigError(
            f"model.encoder={cfg.encoder!r}: unetr takes its own ViT encoder, one of {sorted(VIT_SIZES)} "
            "(e.g. --encoder=vit_base)"
        )
    if cfg.pretrained:
        raise ConfigError(
            "model.pretrained is set but unetr has no local pretrained weights (its ViT starts from "
            "random weights); drop --pretrained"
        )
    if cfg.mode not in MODE_WINDOWS:
        raise ConfigError(f"model.mode must be one of {sorted(MODE_WINDOWS)}, got {cfg.mode!r}")
    window = MODE_WINDOWS[cfg.mode][0]
    if window % PATCH_SIZE:
        ok = [m for m, (w, _) in MODE_WINDOWS.items() if w % PATCH_SIZE == 0]
        raise ConfigError(
            f"model.mode={cfg.mode!r}: its {window} px input window is not a multiple of unetr's "
            f"{PATCH_SIZE} px ViT patch (the window is fixed by the position embeddings); use --mode={ok[0]}"
        )
    if cfg.unet_base_width < 1:
        raise ConfigError(f"model.unet_base_width must be >= 1, got {cfg.unet_base_width}")
    return window


class UNETRNet(UNetBase):
    """MONAI UNETR under the UNet baseline's heads; ``encoder`` is its ViT."""

    arch = ARCH

    def __init__(self, cfg: ModelConfig) -> None:
        from monai.networks.nets import UNETR

        window = check_unetr_config(cfg)
        super().__init__(cfg, head_width=int(cfg.unet_base_width))
        hidden, mlp, heads = VIT_SIZES[cfg.encoder]
        net = UNETR(
            in_channels=3,
            out_channels=1,
            img_size=window,
            feature_size=int(cfg.unet_base_width),
            hidden_size=hidden,
            mlp_dim=mlp,
            num_heads=heads,
            norm_name="batch",
            spatial_dims=2,
        )
        net.out = nn.Identity()  # the heads of UNetBase replace MONAI's 1x1 output block
        self.net = net
        self.window = window
        self.size_multiple = PATCH_SIZE

    @property
    def encoder(self) -> nn.Module:
        return self.net.vit

    def features(self, x: torch.Tensor) -> torch.Tensor:
        if tuple(x.shape[-2:]) != (self.window, self.window):
            raise ValueError(
                f"unetr runs on exactly its {self.window} px training window (fixed ViT position "
                f"embeddings), got {tuple(x.shape[-2:])}: do not set an inference --window for it"
            )
        return self.net(x)


def build_unetr(model_cfg: ModelConfig) -> UNETRNet:
    """Registry builder of the ``unetr`` family."""
    return UNETRNet(model_cfg)
