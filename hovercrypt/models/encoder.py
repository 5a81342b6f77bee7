"""Encoder: a timm ``features_only`` backbone, plus loading of local pretrained weights.

Weights can never be downloaded here, so the backbone is always built with
``pretrained=False`` and ImageNet weights come from a local timm or torchvision
state dict. ResNet parameter names are identical in timm and torchvision, so
the only difference is the classifier (``fc.*``), which the encoder lacks.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import torch
from torch import nn

from hovercrypt.config import ConfigError
from hovercrypt.errors import InputError

#: ImageNet statistics; the model normalises 0..1 RGB with these so pretrained encoders work.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class Normalize(nn.Module):
    """0..1 RGB in, ImageNet-normalised out (buffers move with ``.to(device)``, not saved).

    The one input normalisation of every model family (pretrained encoders expect it).
    """

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean.to(x.dtype)) / self.std.to(x.dtype)

#: classifier / pooling heads present in full-model state dicts but not in a features_only encoder
_HEAD_PREFIXES = ("fc.", "classifier.", "head.", "head_drop.", "global_pool.", "last_linear.", "AuxLogits.")
#: wrappers that training scripts put around a state dict or its keys
_WRAPPER_KEYS = ("state_dict", "model", "model_state", "state_dict_ema", "model_ema")
_KEY_PREFIXES = ("module.", "model.", "encoder.", "backbone.", "_orig_mod.")


def build_encoder(name: str) -> nn.Module:
    """A timm feature extractor returning a list of maps at increasing strides (no downloads)."""
    import timm

    try:
        enc = timm.create_model(name, pretrained=False, features_only=True)
    except RuntimeError as e:  # timm raises RuntimeError for unknown names
        raise ConfigError(f"model.encoder={name!r}: not a timm model with features_only support ({e})") from e
    except Exception as e:  # some backbones raise other errors for features_only
        raise ConfigError(f"model.encoder={name!r}: cannot build a features_only encoder ({e})") from e
    strides = list(enc.feature_info.reduction())
    if strides != sorted(strides) or len(set(strides)) != len(strides):
        raise ConfigError(f"model.encoder={name!r}: feature strides {strides} are not strictly increasing")
    bad = [s for s in strides if s & (s - 1)]
    if bad:
        raise ConfigError(f"model.encoder={name!r}: feature strides must be powers of two, got {strides}")
    return enc


def encoder_strides(enc: nn.Module) -> list[int]:
    return list(enc.feature_info.reduction())


def encoder_channels(enc: nn.Module) -> list[int]:
    return list(enc.feature_info.channels())


def _unwrap(obj: Any, path: Path) -> dict[str, torch.Tensor]:
    """The tensor dict inside a saved object (plain state dict or a training checkpoint)."""
    for _ in range(3):
        if isinstance(obj, dict) and not any(isinstance(v, torch.Tensor) for v in obj.values()):
            inner = next((obj[k] for k in _WRAPPER_KEYS if isinstance(obj.get(k), dict)), None)
            if inner is None:
                break
            obj = inner
    if isinstance(obj, nn.Module):
        obj = obj.state_dict()
    if not isinstance(obj, dict) or not any(isinstance(v, torch.Tensor) for v in obj.values()):
        raise InputError(f"{path}: no state dict (name -> tensor mapping) found in this file")
    return {k: v for k, v in obj.items() if isinstance(v, torch.Tensor)}


def _strip_prefixes(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Remove wrapper prefixes (``module.``, ``encoder.`` ...) shared by every key."""
    changed = True
    while changed:
        changed = False
        for p in _KEY_PREFIXES:
            if sd and all(k.startswith(p) for k in sd):
                sd = {k[len(p) :]: v for k, v in sd.items()}
                changed = True
    return sd


def _flat_alias(key: str) -> str:
    """timm feature wrappers may flatten ``blocks.1.x`` into ``blocks_1.x``; compare in one form."""
    head, _, rest = key.partition(".")
    head = re.sub(r"_(\d+)$", r".\1", head)
    return f"{head}.{rest}" if rest else head


def _examples(keys: list[str], n: int = 5) -> str:
    shown = ", ".join(keys[:n])
    return f"{shown}{', ...' if len(keys) > n else ''} ({len(keys)} total)"


def load_pretrained_encoder(encoder: nn.Module, path: str | Path) -> None:
    """Load a local timm/torchvision state dict into ``encoder``; any mismatch is a clear error.

    Classifier keys are dropped; every encoder parameter and buffer must be
    present with the right shape, otherwise nothing is loaded and the error lists
    a few missing / unexpected / mismatched keys with the file name.
    """
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: pretrained weights file not found (weights cannot be downloaded here)")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # corrupt or non-torch files raise many types
        raise InputError(f"{path}: cannot read pretrained weights ({type(e).__name__}: {e})") from e
    target = encoder.state_dict()
    sd = _strip_prefixes(_unwrap(obj, path))
    sd = {k: v for k, v in sd.items() if not k.startswith(_HEAD_PREFIXES)}
    alias = {_flat_alias(k): k for k in target}
    mapped: dict[str, torch.Tensor] = {}
    unexpected: list[str] = []
    for k, v in sd.items():
        name = k if k in target else alias.get(_flat_alias(k))
        if name is None:
            unexpected.append(k)
        else:
            mapped[name] = v
    # BN batch counters are bookkeeping only; a torchvision file may lack them
    missing = [k for k in target if k not in mapped and not k.endswith("num_batches_tracked")]
    mismatched = [
        f"{k} {tuple(v.shape)} vs encoder {tuple(target[k].shape)}"
        for k, v in mapped.items()
        if v.shape != target[k].shape
    ]
    if missing or unexpected or mismatched:
        parts = []
        if missing:
            parts.append(f"missing keys: {_examples(missing)}")
        if unexpected:
            parts.append(f"unexpected keys: {_examples(unexpected)}")
        if mismatched:
            parts.append(f"shape mismatches: {_examples(mismatched, 3)}")
        raise InputError(
            f"{path}: pretrained weights do not fit the encoder ({'; '.join(parts)}). "
            "Is model.encoder the same architecture the file was saved from?"
        )
    for k, t in target.items():
        if k not in mapped:
            mapped[k] = t
    encoder.load_state_dict({k: v.to(target[k].dtype) for k, v in mapped.items()}, strict=True)
