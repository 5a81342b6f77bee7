"""``run_train.py`` logic: options -> Config -> Trainer.

Command-line overrides are written into the Config (which every checkpoint
stores), so a checkpoint always says exactly how it was trained. On
``--resume`` the checkpoint's Config is used; only options that do not change
what is being trained (data location, epochs, workers, precision, step cap)
may be given again.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from hovercrypt.config import Config, ConfigError
from hovercrypt.errors import InputError
from hovercrypt.models.registry import describe_families, get_family
from hovercrypt.presets import load_config
from hovercrypt.train import state as st
from hovercrypt.train.amp import parse_gpus, resolve_amp
from hovercrypt.train.distributed import cleanup, needs_relaunch, relaunch_with_torchrun, setup
from hovercrypt.train.trainer import LAST, Trainer, resolve_resume

#: options that define the model / optimisation and therefore cannot change on --resume
_FIXED_ON_RESUME = (
    "--config", "--encoder", "--pretrained", "--mode", "--model", "--batch_size", "--seed", "--init_from",
)


def _int(args: dict[str, Any], key: str) -> int | None:
    v = args.get(key)
    if v is None or v == "":
        return None
    try:
        return int(v)
    except ValueError as e:
        raise ConfigError(f"{key} must be an integer, got {v!r}") from e


def _existing_file(args: dict[str, Any], key: str) -> str:
    """The path given for ``key``, checked to exist (a one-line error before any model is built)."""
    if not Path(args[key]).is_file():
        raise ConfigError(f"{key}={args[key]}: file not found")
    return str(args[key])


def runtime_overrides(cfg: Config, args: dict[str, Any]) -> Config:
    """Options allowed both for new runs and on resume."""
    d = cfg.to_dict()
    if args.get("--data_dir"):
        d["data"]["patch_dir"] = args["--data_dir"]
    if args.get("--epochs"):
        phases = d["train"]["phases"]
        for phase, n in zip(phases, st.parse_epochs(args["--epochs"], len(phases))):
            phase["epochs"] = n
    for opt, key in (("--num_workers", "num_workers"), ("--max_steps_per_epoch", "max_steps_per_epoch")):
        v = _int(args, opt)
        if v is not None:
            d["train"][key] = v
    if args.get("--amp"):
        d["train"]["amp"] = args["--amp"]
    return Config.from_dict(d)


def model_overrides(cfg: Config, args: dict[str, Any]) -> Config:
    """Options that define a new run."""
    d = cfg.to_dict()
    m = d["model"]
    if args.get("--model") and args["--model"] != m["arch"]:
        m["arch"] = args["--model"]
        # the post-processing settings are the family's own: another family starts from its defaults
        d.pop("postproc")
    family = get_family(m["arch"], "--model")
    if args.get("--mode"):
        m["mode"] = args["--mode"]
    if args.get("--encoder"):
        none = family.encoder_optional and args["--encoder"].lower() == "none"
        m[family.encoder_field] = None if none else args["--encoder"]
    if args.get("--pretrained"):
        m["pretrained"] = _existing_file(args, "--pretrained")
    if args.get("--init_from"):
        d["train"]["init_from"] = _existing_file(args, "--init_from")
    bs = _int(args, "--batch_size")
    if bs is not None:
        for phase in d["train"]["phases"]:
            phase["batch_size"] = bs
    seed = _int(args, "--seed")
    if seed is not None:
        d["train"]["seed"] = seed
    return Config.from_dict(d)


def prepare(args: dict[str, Any], default_config: str | Path | None = None):
    """(config, log_dir, checkpoint dict or None) for the parsed docopt ``args``."""
    if args.get("--resume"):
        from hovercrypt.models.checkpoint import load_checkpoint

        given = [k for k in _FIXED_ON_RESUME if args.get(k)]
        if given:
            raise ConfigError(
                f"{', '.join(given)} cannot be changed on --resume: the checkpoint's config is used"
            )
        path = resolve_resume(args["--resume"])
        ck = load_checkpoint(path)
        cfg = runtime_overrides(Config.from_dict(ck["config"]), args)
        log_dir = Path(args.get("--log_dir") or path.parent)
        return cfg, log_dir, ck
    if args.get("--config"):
        cfg = load_config(args["--config"])
    else:
        cfg = load_config(default_config if default_config and Path(default_config).is_file() else None)
    cfg = runtime_overrides(model_overrides(cfg, args), args)
    log_dir = Path(args.get("--log_dir") or f"logs/{cfg.name}_{cfg.model.arch}")
    if (log_dir / LAST).exists():
        raise ConfigError(
            f"{log_dir} already holds {LAST}: continue it with --resume={log_dir} or choose another --log_dir"
        )
    return cfg, log_dir, None


def run(args: dict[str, Any], script: str, argv: list[str], default_config: str | Path | None = None) -> int:
    """Entry point behind ``run_train.py``; returns the process exit code.

    User errors (bad config, options or data) print one ``error: ...`` line and
    exit with 2, like ``extract_patches.py``; anything else is a bug and keeps
    its traceback.
    """
    try:
        return _run(args, script, argv, default_config)
    except (ConfigError, InputError) as e:
        print(f"error: {e}", file=sys.stderr, flush=True)
        return 2


def _run(args: dict[str, Any], script: str, argv: list[str], default_config: str | Path | None) -> int:
    if args.get("--list_models"):
        print(describe_families(), flush=True)
        return 0
    gpus = parse_gpus(args.get("--gpu"))
    if needs_relaunch(gpus):
        return relaunch_with_torchrun(gpus, script, argv)
    info = setup(gpus)
    try:
        cfg, log_dir, ck = prepare(args, default_config)
        precision = resolve_amp(cfg.train.amp, info.device)
        if info.is_main:
            amp = {None: "fp32"}.get(precision, str(precision).replace("torch.", ""))
            print(f"{info.notice or f'training on {info.device}'} [{amp}]", flush=True)
        trainer = Trainer(cfg, log_dir, info, resume_state=ck, progress=not args.get("--no_progress"))
        history = trainer.fit()
        if info.is_main:
            last = history[-1] if history else {}
            shown = {k: round(v, 4) for k, v in last.items() if "/" in k and isinstance(v, float)}
            print(f"done: {len(history)} epochs, last {shown}; best {trainer.best_key}={trainer.best}; "
                  f"checkpoints and logs in {log_dir}", flush=True)
    finally:
        cleanup(info)
    return 0

