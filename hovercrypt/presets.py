"""Ready configurations (presets) and loading a configuration from a name or a file.

Kept apart from the dataclasses in :mod:`hovercrypt.config` so that module stays a
plain description of the settings.
"""

from __future__ import annotations

import json
import runpy
from pathlib import Path

from hovercrypt.config import Config, ConfigError, DataConfig, ModelConfig


def glas_config(root: str | Path = "../shared/data/glas/train") -> Config:
    """Ready configuration for the GlaS training set (two types: benign, malignant).

    GlaS is scanned at 0.465 um/px; processing at 0.93 um/px (an exact 2x
    downsample) puts a typical gland (100-250 um) inside the 270 px input window.
    """
    root = str(root)
    return Config(
        name="glas",
        proc_mpp=0.93,
        type_info="type_info.json",
        model=ModelConfig(nr_types=3),
        data=DataConfig(
            image_dir=root,
            anno_suffix="_anno",
            type_source="csv",
            type_csv=f"{root}/grade.csv",
            type_csv_type_column="grade_glas",
            type_csv_map={"benign": 1, "malignant": 2},
            patient_column="patient_id",
            image_mpp=0.465,
            patch_dir="data/patches/glas",
        ),
    )


PRESETS = {"default": Config, "glas": glas_config}


def load_config(spec: str | Path | None = None) -> Config:
    """Load a configuration from a preset name, a ``.json`` file or a ``.py`` file defining ``CONFIG``."""
    if spec is None:
        return Config()
    spec = str(spec)
    if spec in PRESETS:
        return PRESETS[spec]()
    path = Path(spec)
    if not path.is_file():
        raise ConfigError(f"config {spec!r} is neither a preset {sorted(PRESETS)} nor an existing file")
    if path.suffix == ".json":
        try:
            data = json.loads(path.read_text())
        except json.JSONDecodeError as e:
            raise ConfigError(f"{path}: not valid JSON ({e})") from e
        try:
            return Config.from_dict(data)
        except (ConfigError, TypeError) as e:
            raise ConfigError(f"{path}: {e}") from e
    if path.suffix == ".py":
        try:
            ns = runpy.run_path(str(path))
        except Exception as e:  # a user file can raise anything; report it as a config problem
            raise ConfigError(f"{path}: cannot run config file ({type(e).__name__}: {e})") from e
        cfg = ns.get("CONFIG")
        if not isinstance(cfg, Config):
            raise ConfigError(f"{path}: must define CONFIG = hovercrypt.config.Config(...)")
        return cfg
    raise ConfigError(f"{path}: config files must be .json or .py")
