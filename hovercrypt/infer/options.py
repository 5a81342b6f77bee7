"""``run_infer.py`` options written into the model's :class:`~hovercrypt.config.Config`, once.

The checkpoint's stored configuration holds every inference default (``infer``: batch
size, TTA, windows, region size, workers, ...; ``postproc``). The command line changes
only what it names, in :func:`config_from_args`; the engines then read the result and
nothing else, so there is one place where a default lives and one rule for which value wins.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from hovercrypt.config import BACKENDS, PRECISIONS, Config, PostprocSettings
from hovercrypt.errors import ConfigError, InputError
from hovercrypt.models.registry import family_names


def float_opt(args: Mapping[str, Any], key: str, allow_zero: bool = False) -> float | None:
    """A positive (or, with ``allow_zero``, non-negative) number option, or None when not given."""
    v = args.get(key)
    if v in (None, ""):
        return None
    try:
        f = float(v)
    except ValueError as e:
        raise InputError(f"{key} must be a number, got {v!r}") from e
    if f < 0 or (f == 0 and not allow_zero):
        raise InputError(f"{key} must be {'>=' if allow_zero else '>'} 0, got {v}")
    return f


def int_opt(args: Mapping[str, Any], key: str, default: int, minimum: int = 1) -> int:
    """An integer option of at least ``minimum``; ``default`` (the config's value) when not given."""
    v = args.get(key)
    try:
        n = int(v) if v not in (None, "") else default
    except ValueError as e:
        raise InputError(f"{key} must be an integer, got {v!r}") from e
    if n < minimum:
        raise InputError(f"{key} must be >= {minimum}, got {n}")
    return n


def choice_opt(args: Mapping[str, Any], key: str, choices: Sequence[str], default: str) -> str:
    """``args[key]`` checked against ``choices`` (``--backend``, ``--precision``), else ``default``."""
    v = args.get(key) or default
    if v not in choices:
        raise InputError(f"{key} must be one of {', '.join(choices)}, got {v!r}")
    return str(v)


def checkpoint_path(args: Mapping[str, Any]) -> Path:
    """``--model_path`` (default: the shipped model), checked to exist."""
    model_path = args.get("--model_path")
    if not model_path:
        from hovercrypt.models.checkpoint import default_model_path

        model_path = default_model_path()
    if not Path(model_path).is_file():
        hint = "give one with --model_path"
        if str(model_path) in family_names():  # docopt reads --model=unet as --model_path=unet
            hint = "the architecture comes from the checkpoint; give the checkpoint file with --model_path"
        raise InputError(f"{model_path}: model checkpoint not found ({hint})")
    return Path(model_path)


def check_args(args: Mapping[str, Any], wsi: bool = False) -> None:
    """Check the values of the inference options before any checkpoint is read (one-line errors)."""
    config_from_args({k: v for k, v in args.items() if k != "--postproc"}, Config(), wsi)


def load_predictor(args: Mapping[str, Any], device: str | None = None, wsi: bool = False) -> Any:
    """The checkpoint of ``--model_path`` as a NetworkPredictor whose ``config`` holds the options.

    ``device``: None = from ``--gpu``. The predictor reads its batch size, TTA, window and CPU
    settings from ``config.infer``, the engines the rest.
    """
    from hovercrypt.infer.predictor import NetworkPredictor

    model_path = checkpoint_path(args)
    if device is None:
        from hovercrypt.devices import resolve_device

        device = resolve_device(args.get("--gpu"))
    pred = NetworkPredictor.from_checkpoint(model_path, device)
    if pred.config is None:
        raise InputError(f"{model_path}: checkpoint holds no config (proc_mpp, post-processing)")
    pred.config = config_from_args(args, pred.config, wsi)
    try:
        pred.apply_settings(pred.config.infer)
    except ValueError as e:
        raise InputError(str(e)) from e
    return pred


def config_from_args(args: Mapping[str, Any], cfg: Config, wsi: bool = False) -> Config:
    """``cfg`` with the inference options given on the command line written into it.

    Options left out keep the checkpoint's values; flags (``--tta``, ``--channels_last``)
    turn a setting on, ``--no_tile_cache`` off. ``wsi`` adds the whole-slide options.
    """
    infer = cfg.infer
    changes: dict[str, Any] = {
        "batch_size": int_opt(args, "--batch_size", int(infer.batch_size)),
        "tta": bool(infer.tta) or bool(args.get("--tta")),
        "window": int_opt(args, "--window", int(infer.window), minimum=0),
        "window_border": int_opt(args, "--window_border", int(infer.window_border), minimum=0),
        "channels_last": bool(infer.channels_last) or bool(args.get("--channels_last")),
        "threads": int_opt(args, "--threads", int(infer.threads), minimum=0),
        "backend": choice_opt(args, "--backend", BACKENDS, str(infer.backend)),
        "precision": choice_opt(args, "--precision", PRECISIONS, str(infer.precision)),
    }
    if wsi:
        changes["tile_shape"] = int_opt(args, "--tile_shape", int(infer.tile_shape))
        changes["postproc_workers"] = int_opt(args, "--workers", int(infer.postproc_workers), minimum=0)
        changes["tile_cache"] = bool(infer.tile_cache) and not args.get("--no_tile_cache")
        follow = float_opt(args, "--follow_um", allow_zero=True)
        changes["follow_um"] = float(infer.follow_um) if follow is None else follow
    post = load_postproc_overrides(args["--postproc"], cfg) if args.get("--postproc") else cfg.postproc
    return dataclasses.replace(cfg, infer=dataclasses.replace(infer, **changes), postproc=post)


def load_postproc_overrides(spec: str | Path, cfg: Any) -> PostprocSettings:
    """The checkpoint's post-processing settings with the fields given by ``spec`` replaced.

    ``spec`` is a JSON file or an inline JSON object (``{"np_thresh": 0.6}``).
    Post-processing is tuned after training (``benchmarks/tune_postproc.py`` writes such a
    file), so it can change without touching the model. Only the keys given are replaced;
    unknown keys, wrong types or out-of-range values are errors that name the source.
    """
    text, where = str(spec), "--postproc"
    if not text.lstrip().startswith("{"):
        path = Path(spec)
        if not path.is_file():
            raise InputError(f"{path}: --postproc file not found (give a JSON file or an inline JSON object)")
        try:
            text, where = path.read_text(encoding="utf-8"), str(path)
        except (OSError, UnicodeDecodeError) as e:
            raise InputError(f"{path}: cannot read --postproc file ({e})") from e
    try:
        overrides = json.loads(text)
    except json.JSONDecodeError as e:
        raise InputError(f"{where}: not valid JSON ({e})") from e
    if not isinstance(overrides, dict):
        raise InputError(f"{where}: expected a JSON object of post-processing fields")
    try:
        post = cfg.postproc.with_overrides(overrides)  # the settings class of the model's family
    except ConfigError as e:
        raise InputError(f"{where}: {e}") from e
    return post
