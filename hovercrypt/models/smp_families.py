"""Semantic families from segmentation-models-pytorch (smp): UNet++, DeepLabV3+, FPN, SegFormer, UPerNet.

smp's UNet is here too, as ``smp_unet`` beside the hand-written ``unet`` baseline.

The networks are smp's own; hovercrypt only wraps them so that they behave exactly as the
UNet baseline does, which keeps the comparison between families fair:

* the same :class:`~hovercrypt.models.unet.UNetBase`: ImageNet normalisation inside the
  model, reflect padding of the window to the encoder's output stride, a padded network
  predicting the whole input window and returning the centre ``output_size`` crop
  (``fast`` 256 -> 164, ``original`` 270 -> 80), the same ``seg`` (crypt / background /
  boundary, ``model.unet_classes``) and ``tp`` (``model.nr_types``) heads, so the same
  targets, CE + Dice loss, semantic post-processing and tuning grid apply;
* smp's encoder + decoder are the feature extractor (smp's segmentation head is replaced
  by the identity). Decoders that stop at stride 4 (DeepLabV3+, FPN, SegFormer, UPerNet)
  are projected to ``model.unet_base_width`` channels by a 1x1 conv + BN + ReLU and
  bilinearly upsampled to the input resolution, so the heads see full-resolution features
  as the UNet's do; UNet and UNet++ decoders end at stride 1 with ``unet_base_width``
  channels (their decoder widths are ``unet_base_width`` x (16, 8, 4, 2, 1), smp's default
  at the default width 16);
* ``model.encoder`` is the smp encoder (trainer's frozen-encoder phase and BN freezing use it).

Weights are never downloaded (``encoder_weights=None``): ``model.pretrained`` is a local
state dict loaded into the encoder with the same checks and errors as HoVer-Net's
(:func:`hovercrypt.models.encoder.load_pretrained_encoder`). smp's ResNet / ResNeXt
encoders use torchvision's parameter names, so a torchvision ImageNet file loads directly;
``tu-<timm name>`` encoders take a timm state dict. smp is imported only when a family is
built, so configs and the registry stay cheap to import.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from hovercrypt.config import ConfigError, ModelConfig
from hovercrypt.models.unet import UNetBase

#: SegFormer's own encoders (Mix Transformer); the family is defined as MiT + all-MLP decoder
MIT_ENCODERS = tuple(f"mit_b{i}" for i in range(6))


@dataclass(frozen=True)
class SmpFamily:
    """What hovercrypt needs to know about one smp architecture."""

    name: str  # the hovercrypt family name (model.arch)
    smp_arch: str  # the name smp.create_model takes
    decoder_stride: int  # 1: the decoder ends at the input resolution; 4: a quarter of it
    encoders: str  # shown in errors and the README: which encoders the family takes
    only_encoders: tuple[str, ...] = ()  # non-empty: the family takes only these
    refused_prefixes: tuple[str, ...] = ()  # encoders smp cannot combine with this decoder

    def check_encoder(self, name: str) -> None:
        """A one-line :class:`ConfigError` for an encoder this family cannot take (before building)."""
        if self.only_encoders and name not in self.only_encoders:
            example = f"e.g. --encoder={self.only_encoders[0]}"
            raise ConfigError(f"model.encoder={name!r}: {self.name} takes {self.encoders}; {example}")
        if name.startswith(self.refused_prefixes):
            raise ConfigError(f"model.encoder={name!r}: {self.name} cannot take it; it takes {self.encoders}")
        if name.startswith("tu-"):
            return  # timm names are checked by timm when the encoder is built
        known = smp_encoder_names()
        if name not in known:
            raise ConfigError(
                f"model.encoder={name!r}: not a segmentation-models-pytorch encoder "
                f"(e.g. resnet18, resnet50, resnext50_32x4d, mit_b0, or tu-<timm name>); {self.name} takes "
                f"{self.encoders}"
            )


_ANY = "any smp encoder (resnet18 ... resnet152, resnext, mit_b*, efficientnet, ...) or tu-<timm name>"

#: the smp families, by hovercrypt name
SMP_FAMILIES: dict[str, SmpFamily] = {
    f.name: f
    for f in (
        SmpFamily("smp_unet", "unet", 1, _ANY),
        SmpFamily(
            "unetplusplus",
            "unetplusplus",
            1,
            "any smp encoder except mit_b* (resnet18 ... resnet152, resnext, ...) or tu-<timm name>",
            refused_prefixes=("mit_b",),
        ),
        SmpFamily(
            "deeplabv3plus",
            "deeplabv3plus",
            4,
            "any smp encoder that can be dilated (resnet*, resnext, mit_b*, ...; not vgg*) or tu-<timm name>",
            refused_prefixes=("vgg",),
        ),
        SmpFamily("fpn", "fpn", 4, _ANY),
        SmpFamily(
            "segformer",
            "segformer",
            4,
            "mit_b0 ... mit_b5 (its own Mix Transformer encoders)",
            only_encoders=MIT_ENCODERS,
        ),
        SmpFamily("upernet", "upernet", 4, _ANY),
    )
}


def smp_encoder_names() -> list[str]:
    import segmentation_models_pytorch as smp

    return list(smp.encoders.get_encoder_names())


def _one_line(e: BaseException, limit: int = 200) -> str:
    text = re.sub(r"\s+", " ", str(e)).strip()
    return text if len(text) <= limit else text[: limit - 3] + "..."


class SmpSemanticNet(UNetBase):
    """An smp encoder + decoder under the UNet baseline's window handling and heads.

    ``net`` is the smp model with its segmentation head removed; ``encoder`` is its
    encoder (a property, so each parameter is stored once, under ``net.encoder``).
    """

    def __init__(self, cfg: ModelConfig, family: SmpFamily) -> None:
        import segmentation_models_pytorch as smp

        base = int(cfg.unet_base_width)
        if base < 1:
            raise ConfigError(f"model.unet_base_width must be >= 1, got {base}")
        name = str(cfg.encoder)
        family.check_encoder(name)
        kwargs: dict[str, Any] = {}
        if family.decoder_stride == 1:
            kwargs["decoder_channels"] = tuple(base * m for m in (16, 8, 4, 2, 1))
        try:
            net = smp.create_model(family.smp_arch, name, encoder_weights=None, classes=1, **kwargs)
        except Exception as e:  # smp raises ValueError / KeyError / RuntimeError for bad combinations
            why = _one_line(e)
            raise ConfigError(f"model.encoder={name!r}: {family.name} cannot be built with it ({why})") from e
        super().__init__(cfg, head_width=base)
        self.arch = family.name
        head = net.segmentation_head
        channels = int(head[0].in_channels)  # smp's head: conv (decoder channels -> classes), upsampling
        net.segmentation_head = nn.Identity()
        self.net = net
        self.size_multiple = int(net.encoder.output_stride)
        self.project = (
            nn.Sequential(nn.Conv2d(channels, base, 1, bias=False), nn.BatchNorm2d(base), nn.ReLU(True))
            if family.decoder_stride > 1 or channels != base
            else None
        )
        if cfg.pretrained:
            load_smp_encoder_weights(net.encoder, cfg.pretrained)

    @property
    def encoder(self) -> nn.Module:
        return self.net.encoder

    def features(self, x: torch.Tensor) -> torch.Tensor:
        y = self.net(x)
        if self.project is not None:
            y = self.project(y)
        if y.shape[-2:] != x.shape[-2:]:
            y = F.interpolate(y, size=x.shape[-2:], mode="bilinear", align_corners=False)
        return y


def load_smp_encoder_weights(encoder: nn.Module, path: str) -> None:
    """Local ImageNet weights into an smp encoder, with HoVer-Net's checks and errors.

    smp's ResNet-style encoders are torchvision's modules without the classifier, so a
    torchvision (or timm: same names for ResNets) state dict maps one to one; a ``tu-``
    encoder wraps the timm model as ``encoder.model``, which takes the timm state dict.
    """
    from hovercrypt.models.encoder import load_pretrained_encoder

    inner = getattr(encoder, "model", None)
    is_timm = type(encoder).__name__ == "TimmUniversalEncoder" and isinstance(inner, nn.Module)
    target = inner if is_timm else encoder
    load_pretrained_encoder(target, path)


def build_smp_model(model_cfg: ModelConfig) -> SmpSemanticNet:
    """Registry builder of every smp family: the family is ``model_cfg.arch``."""
    family = SMP_FAMILIES.get(model_cfg.arch)
    if family is None:
        raise ConfigError(f"model.arch={model_cfg.arch!r} is not an smp family ({sorted(SMP_FAMILIES)})")
    return SmpSemanticNet(model_cfg, family)
