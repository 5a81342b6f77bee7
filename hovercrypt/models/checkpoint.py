"""Checkpoints: atomic save, validated load, model rebuild from the stored config, export.

A checkpoint holds everything needed to rebuild and resume: the model weights,
optimizer / scheduler state, phase and epoch, the full Config (so inference
uses exactly the training windows and model), the architecture and the library
version. Files are read with ``weights_only=True`` (no arbitrary pickles); the
numpy types a training run stores (RNG state, metrics) are allow-listed.
"""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

import hovercrypt
from hovercrypt.config import Config, ConfigError
from hovercrypt.errors import InputError
from hovercrypt.io.atomic import atomic_torch_save

REQUIRED_KEYS = ("model", "config", "arch", "version")
_RESERVED = ("model", "optimizer", "scheduler", "phase", "epoch", "config", "arch", "version", "extra")


def _safe_numpy_globals() -> list[Any]:
    """numpy objects that may appear in a checkpoint (RNG state, metric scalars)."""
    from numpy._core.multiarray import _reconstruct, scalar

    dtypes = [t for t in vars(np.dtypes).values() if isinstance(t, type)]
    return [_reconstruct, scalar, np.ndarray, np.dtype, *dtypes]


def unwrap_model(model: nn.Module) -> nn.Module:
    """The plain module inside DDP / DataParallel / torch.compile wrappers."""
    while True:
        if isinstance(model, nn.parallel.DistributedDataParallel | nn.DataParallel):
            model = model.module
        elif hasattr(model, "_orig_mod") and isinstance(model._orig_mod, nn.Module):
            model = model._orig_mod
        else:
            return model


def save_checkpoint(
    path: str | Path,
    model: nn.Module,
    config: Config,
    *,
    optimizer: Any = None,
    scheduler: Any = None,
    phase: int = 0,
    epoch: int = 0,
    extra: Any = None,
    **state: Any,
) -> None:
    """Write a checkpoint atomically (a killed run never leaves a half-written file).

    Additional keyword entries (e.g. AMP scaler state, history, RNG state) are
    stored as top-level keys beside the standard ones.
    """
    clash = sorted(set(state) & set(_RESERVED))
    if clash:
        raise ValueError(f"save_checkpoint: extra entries {clash} clash with standard keys")
    net = unwrap_model(model)
    ck = {
        "model": net.state_dict(),
        "optimizer": optimizer.state_dict() if hasattr(optimizer, "state_dict") else optimizer,
        "scheduler": scheduler.state_dict() if hasattr(scheduler, "state_dict") else scheduler,
        "phase": phase,
        "epoch": epoch,
        "config": config.to_dict(),
        "arch": getattr(net, "arch", config.model.arch),
        "version": hovercrypt.__version__,
        "extra": extra,
        **state,
    }
    atomic_torch_save(path, ck)


def _load_error_summary(e: Exception) -> str:
    """``Type: first sentence`` of a torch.load error, on one line.

    torch's weights-only errors span many lines and advise ``weights_only=False``
    (arbitrary code execution): that advice must not reach our users. The
    unpickler's own line (what was refused) is kept when present.
    """
    lines = [re.sub(r"\x1b\[[0-9;]*m", "", ln).strip() for ln in str(e).splitlines()]
    lines = [ln for ln in lines if ln]
    line = next((ln for ln in lines if ln.startswith("WeightsUnpickler error:")), lines[0] if lines else "")
    head, sep, _ = line.partition(". ")
    return f"{type(e).__name__}: {head}{'.' if sep else ''}"


def load_checkpoint(path: str | Path, map_location: Any = "cpu") -> dict[str, Any]:
    """Read and check a checkpoint; missing files, corrupt files or missing keys are clear errors."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: checkpoint file not found")
    try:
        with torch.serialization.safe_globals(_safe_numpy_globals()):
            ck = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # truncated / foreign files raise many types
        raise InputError(f"{path}: not a readable hovercrypt checkpoint ({_load_error_summary(e)})") from e
    if not isinstance(ck, dict):
        raise InputError(f"{path}: not a hovercrypt checkpoint (holds a {type(ck).__name__}, not a dict)")
    missing = [k for k in REQUIRED_KEYS if k not in ck]
    if missing:
        raise InputError(f"{path}: checkpoint lacks key(s) {missing} (present: {sorted(ck)})")
    return ck


def load_model(
    path: str | Path, device: Any = "cpu", expect_arch: str | None = None
) -> tuple[nn.Module, Config]:
    """Rebuild the network from the checkpoint's own config, load its weights, eval mode."""
    from hovercrypt.models import build_model

    path = Path(path)
    ck = load_checkpoint(path)
    arch = ck["arch"]
    if expect_arch is not None and expect_arch != arch:
        raise ConfigError(f"checkpoint {path} holds a {arch} model, but --model={expect_arch} was given")
    cfg = _stored_config(ck, path)
    # the weights come from the checkpoint: never re-read the (maybe absent) pretrained file
    model_cfg = dataclasses.replace(cfg.model, pretrained=None)
    model = build_model(model_cfg)
    _load_weights(model, ck, path, f"the {arch} model rebuilt from its config")
    return model.to(device).eval(), cfg


def _stored_config(ck: dict[str, Any], path: Path) -> Config:
    """The checkpoint's own Config; one written by an incompatible version is an error naming the file."""
    try:
        return Config.from_dict(ck["config"])
    except (ConfigError, TypeError) as e:
        raise InputError(f"{path}: stored config is invalid for this hovercrypt version ({e})") from e


def _load_weights(model: nn.Module, ck: dict[str, Any], path: Path, what: str) -> None:
    """fp16 exports load into fp32 models; any key mismatch is an error naming the file."""
    state = {k: v.float() if torch.is_floating_point(v) else v for k, v in ck["model"].items()}
    result = model.load_state_dict(state, strict=False)
    if result.missing_keys or result.unexpected_keys:
        raise InputError(
            f"{path}: weights do not match {what} "
            f"(missing: {result.missing_keys[:5]}, unexpected: {result.unexpected_keys[:5]})"
        )


def load_init_weights(model: nn.Module, path: str | Path, model_cfg: Any) -> None:
    """Start a new run from a finished checkpoint's weights (``train.init_from``).

    Unlike ``--resume`` this begins a fresh schedule (phases, optimiser, epochs)
    under the new config; only the weights are taken, so the model definition must
    match the checkpoint's exactly (the encoder's ``pretrained`` file aside).
    """
    path = Path(path)
    ck = load_checkpoint(path)
    theirs = _stored_config(ck, path).model
    differ = [
        f.name for f in dataclasses.fields(theirs)
        if f.name != "pretrained" and getattr(theirs, f.name) != getattr(model_cfg, f.name)
    ]
    if differ:
        shown = ", ".join(f"{k}={getattr(theirs, k)!r} (this run: {getattr(model_cfg, k)!r})" for k in differ)
        raise ConfigError(f"train.init_from={path}: the checkpoint's model differs from this run's: {shown}")
    _load_weights(model, ck, path, "the model of this run's config")


def export_for_inference(src: str | Path, dst: str | Path, half: bool = True) -> Path:
    """Keep only what inference needs (weights, fp16 by default, + config/arch/version): small files."""
    ck = load_checkpoint(src)
    weights = {k: v.half() if half and torch.is_floating_point(v) else v for k, v in ck["model"].items()}
    out = {"model": weights, "config": ck["config"], "arch": ck["arch"], "version": ck["version"]}
    atomic_torch_save(dst, out)
    return Path(dst)


def update_stored_config(path: str | Path, **sections: Any) -> None:
    """Replace whole sections of a checkpoint's config (``postproc=``, ``infer=``); weights untouched, atomic.

    Post-processing is tuned after training, on the trained network's maps, and inference
    settings are measured after it (README "Throughput"); the checkpoint's stored config is
    where ``run_infer.py`` takes its defaults from, so that is where the result goes.
    """
    ck = load_checkpoint(path)
    cfg = _stored_config(ck, Path(path))
    unknown = sorted(set(sections) - {f.name for f in dataclasses.fields(cfg)})
    if unknown:
        raise ConfigError(f"{path}: no config section(s) {unknown}")
    ck["config"] = dataclasses.replace(cfg, **sections).to_dict()
    atomic_torch_save(path, ck)


def default_model_path() -> Path:
    """The GlaS model shipped inside the package (``hovercrypt/weights/hovercrypt_glas.pt``)."""
    path = Path(hovercrypt.__file__).parent / "weights" / "hovercrypt_glas.pt"
    if not path.is_file():
        raise InputError(
            f"{path}: the bundled GlaS model is missing; pass a checkpoint with --model_path "
            "or train one with run_train.py"
        )
    return path
