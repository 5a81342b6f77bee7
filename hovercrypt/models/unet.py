"""Semantic UNet baseline: the model most crypt-counting work uses, so HoVer-Net is measured against it.

Two variants share one decoder and the same heads:

* the classic UNet (``unet_encoder=None``): ``unet_levels`` levels of
  (conv + BN + ReLU) x 2, max-pool down, transposed-conv or bilinear up;
* a UNet decoder over any timm encoder (``features_only``), optionally
  initialised from a local weights file (no hub downloads).

The model takes the same input window as HoVer-Net in the same ``mode``, so the
same patches, training loop and overlap-tile inference work unchanged. It is a
padded ("same") UNet: it predicts the whole input window and returns the centre
``output_size`` crop, where every pixel has enough context.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from hovercrypt.config import MODE_WINDOWS, ConfigError, LossWeights, ModelConfig
from hovercrypt.models.losses import masked_ce, soft_dice_loss
from hovercrypt.models.unet_parts import ConvBlock, Normalize, Up, pad_to_multiple

ARCH = "unet"


class UNetBase(nn.Module):
    """Shared window handling, heads and ``to_maps``; subclasses provide ``features``."""

    arch = ARCH

    def __init__(self, cfg: ModelConfig, head_width: int) -> None:
        super().__init__()
        if cfg.mode not in MODE_WINDOWS:
            raise ConfigError(f"model.mode must be one of {sorted(MODE_WINDOWS)}, got {cfg.mode!r}")
        if cfg.unet_classes not in (2, 3):
            raise ConfigError(f"model.unet_classes must be 2 or 3, got {cfg.unet_classes}")
        if cfg.nr_types < 0 or cfg.nr_types == 1:
            raise ConfigError("model.nr_types must be 0 (no type head) or >= 2 (background + types)")
        self.input_size, self.output_size = MODE_WINDOWS[cfg.mode]
        self.nr_types = int(cfg.nr_types)
        self.nr_classes = int(cfg.unet_classes)
        self.normalize = Normalize()
        self.seg_head = nn.Conv2d(head_width, self.nr_classes, 1)
        # the type head gets its own conv block: type (benign / malignant) needs a little
        # capacity of its own on top of the features shared with the crypt segmentation
        self.tp_head = (
            nn.Sequential(ConvBlock(head_width, head_width), nn.Conv2d(head_width, self.nr_types, 1))
            if self.nr_types > 0
            else None
        )

    #: the pooling path needs the input size to be a multiple of this (padded internally)
    size_multiple: int = 1

    def features(self, x: torch.Tensor) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """x: float (N, 3, H, W) RGB in 0..1 -> logits cropped by the model's context margin.

        With the model's own ``input_size`` the output is ``output_size``; larger
        inputs give correspondingly larger outputs (same margin).
        """
        if x.ndim != 4 or x.shape[1] != 3:
            raise ValueError(f"UNet expects (N, 3, H, W) RGB input, got shape {tuple(x.shape)}")
        h, w = x.shape[-2:]
        margin = (self.input_size - self.output_size) // 2
        if min(h, w) <= 2 * margin:
            raise ValueError(f"input {h}x{w} is too small for the context margin {margin} px")
        xp, (top, left) = pad_to_multiple(self.normalize(x), self.size_multiple)
        feats = self.features(xp)
        # undo the internal padding and drop the context margin in one crop
        y0, x0 = top + margin, left + margin
        feats = feats[..., y0 : y0 + h - 2 * margin, x0 : x0 + w - 2 * margin]
        out = {"seg": self.seg_head(feats)}
        if self.tp_head is not None:
            out["tp"] = self.tp_head(feats)
        return out

    @torch.no_grad()
    def to_maps(self, out: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Logits -> channel-last float32 probabilities for inference and post-processing."""
        maps = {"seg": F.softmax(out["seg"].float(), dim=1).permute(0, 2, 3, 1).contiguous()}
        if "tp" in out:
            maps["tp"] = F.softmax(out["tp"].float(), dim=1).permute(0, 2, 3, 1).contiguous()
        return maps


class ClassicUNet(UNetBase):
    """Ronneberger-style UNet with padded convs and BN; ``encoder`` is the contracting path."""

    def __init__(self, cfg: ModelConfig) -> None:
        if cfg.unet_base_width < 1:
            raise ConfigError(f"model.unet_base_width must be >= 1, got {cfg.unet_base_width}")
        if cfg.pretrained:
            raise ConfigError(
                "model.pretrained is set but the classic UNet has no pretrained encoder; "
                "set model.unet_encoder to a timm name or clear model.pretrained"
            )
        levels = int(cfg.unet_levels)
        widths = [cfg.unet_base_width * 2**i for i in range(levels)]
        super().__init__(cfg, head_width=widths[0])
        self.size_multiple = 2 ** (levels - 1)
        down: list[nn.Module] = [ConvBlock(3, widths[0])]
        for i in range(1, levels):
            down.append(nn.Sequential(nn.MaxPool2d(2), ConvBlock(widths[i - 1], widths[i])))
        self.encoder = nn.ModuleList(down)
        self.decoder = nn.ModuleList(
            [Up(widths[i + 1], widths[i], widths[i], cfg.unet_upsample) for i in reversed(range(levels - 1))]
        )

    def features(self, x: torch.Tensor) -> torch.Tensor:
        skips = []
        for stage in self.encoder:
            x = stage(x)
            skips.append(x)
        x = skips.pop()
        for up in self.decoder:
            x = up(x, skips.pop())
        return x


class TimmUNet(UNetBase):
    """UNet decoder over a timm ``features_only`` encoder (``encoder`` = the timm model).

    A small full-resolution stem supplies the last skip connection, so the
    output keeps full-resolution boundaries even though timm's first feature
    map is usually at stride 2. The stem is not part of ``encoder``: freezing a
    pretrained encoder in phase 1 still trains it.
    """

    def __init__(self, cfg: ModelConfig) -> None:
        import timm

        if cfg.unet_base_width < 1:
            raise ConfigError(f"model.unet_base_width must be >= 1, got {cfg.unet_base_width}")
        name = str(cfg.unet_encoder)
        try:
            try:  # the first unet_levels feature maps; fewer when the backbone has fewer stages
                encoder = timm.create_model(
                    name, features_only=True, pretrained=False, out_indices=tuple(range(cfg.unet_levels))
                )
            except IndexError:
                encoder = timm.create_model(name, features_only=True, pretrained=False)
        except Exception as e:  # unknown name or no features_only support
            raise ConfigError(
                f"model.unet_encoder {name!r}: timm cannot build it as features_only ({e})"
            ) from e
        chans = list(encoder.feature_info.channels())  # of the kept (out_indices) stages only
        reds = list(encoder.feature_info.reduction())
        n = len(chans)
        base = cfg.unet_base_width
        super().__init__(cfg, head_width=base)
        self.encoder = encoder
        if cfg.pretrained:
            load_encoder_weights(self.encoder, cfg.pretrained, name)
        self.size_multiple = int(max(reds))
        self.stem = ConvBlock(3, base)
        dec_w = [base * 2 ** (i + 1) for i in range(n)]
        ups = []
        cur = chans[-1]
        for i in reversed(range(n - 1)):
            ups.append(Up(cur, chans[i], dec_w[i], cfg.unet_upsample, scale=max(1, reds[i + 1] // reds[i])))
            cur = dec_w[i]
        ups.append(Up(cur, base, base, cfg.unet_upsample, scale=max(1, int(reds[0]))))
        self.decoder = nn.ModuleList(ups)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        skips = list(self.encoder(x))
        y = skips.pop()
        for up in self.decoder[:-1]:
            y = up(y, skips.pop())
        return self.decoder[-1](y, self.stem(x))


def load_encoder_weights(encoder: nn.Module, path: str, name: str) -> None:
    """Initialise a (possibly truncated) timm encoder from a local weights file.

    The file is checked against the *full* features_only encoder by the shared
    ``load_pretrained_encoder`` (same rules and error messages as HoVer-Net);
    the stages this UNet keeps are then copied over, so ``unet_levels`` below
    the backbone's depth still works with a complete ImageNet file.
    """
    from hovercrypt.models.encoder import build_encoder, load_pretrained_encoder

    full = build_encoder(name)
    load_pretrained_encoder(full, path)
    full_sd = full.state_dict()
    own = encoder.state_dict()
    missing = [k for k in own if k not in full_sd]
    if missing:
        raise ConfigError(
            f"model.unet_encoder {name!r}: truncated encoder keys not in the full one: {missing[:5]}"
        )
    encoder.load_state_dict({k: full_sd[k] for k in own}, strict=True)


def build_unet(model_cfg: ModelConfig) -> UNetBase:
    """The UNet baseline described by ``model_cfg`` (classic, or decoder over a timm encoder)."""
    if model_cfg.unet_upsample not in ("transpose", "resize"):
        raise ConfigError(
            f"model.unet_upsample must be 'transpose' or 'resize', got {model_cfg.unet_upsample!r}"
        )
    if not 3 <= model_cfg.unet_levels <= 6:
        raise ConfigError(f"model.unet_levels must be in 3..6, got {model_cfg.unet_levels}")
    if model_cfg.unet_encoder:
        return TimmUNet(model_cfg)
    return ClassicUNet(model_cfg)


def _ce_dice(
    logits: torch.Tensor, target: Any, key: str, valid: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    if not torch.is_tensor(target):
        raise ValueError(f"batch[{key!r}] must be a tensor, got {type(target).__name__}")
    logits = logits.float()  # losses in float32 even under autocast
    target = target.to(device=logits.device, dtype=torch.long)
    if target.shape != (logits.shape[0], *logits.shape[2:]):
        raise ValueError(
            f"batch[{key!r}] has shape {tuple(target.shape)}, the model output {key!r} is "
            f"{tuple(logits.shape)}: targets must be (N, H, W) at the output size"
        )
    lo, hi = int(target.min()), int(target.max())
    if lo < 0 or hi >= logits.shape[1]:
        raise ValueError(
            f"batch[{key!r}] holds class ids {lo}..{hi} but the model predicts {logits.shape[1]} classes "
            "(check model.unet_classes / model.nr_types against the targets)"
        )
    if valid is not None:
        valid = valid.to(device=logits.device, dtype=logits.dtype)
    return masked_ce(logits, target, valid), soft_dice_loss(logits, target, valid)


def unet_loss(
    out: dict[str, torch.Tensor], batch: dict[str, Any], weights: LossWeights
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """CE + Dice on the semantic map (and on the type map when the model has a type head).

    Returns the weighted total (with gradient) and the detached unweighted parts for logging.
    """
    if "seg" not in batch:
        raise ValueError("UNet training needs batch['seg'] (build the dataset with targets='unet')")
    valid = batch.get("valid")  # ignored pixels (outside the valid-pixel mask) carry no loss
    ce, dice = _ce_dice(out["seg"], batch["seg"], "seg", valid)
    total = weights.seg_ce * ce + weights.seg_dice * dice
    parts = {"seg_ce": ce.detach(), "seg_dice": dice.detach()}
    if "tp" in out:
        if "tp" not in batch:
            raise ValueError("the model has a type head (nr_types > 0) but the batch holds no 'tp' targets")
        tce, tdice = _ce_dice(out["tp"], batch["tp"], "tp", valid)
        total = total + weights.tp_ce * tce + weights.tp_dice * tdice
        parts.update(tp_ce=tce.detach(), tp_dice=tdice.detach())
    return total, parts


def semantic_foreground(
    out: dict[str, torch.Tensor], batch: dict[str, Any]
) -> tuple[torch.Tensor, torch.Tensor]:
    """(predicted, true) crypt pixels (N, h, w) for the validation Dice (registry hook).

    Class 1 is the crypt; class 2, when present, is the crypt boundary and does not count.
    """
    return out["seg"].argmax(1) == 1, batch["seg"] == 1
