"""Ready configurations (presets) and loading a configuration from a name or a file.

Kept apart from the dataclasses in :mod:`hovercrypt.config` so that module stays a
plain description of the settings.
"""

from __future__ import annotations

import dataclasses
import json
import os
import runpy
from pathlib import Path

from hovercrypt.config import (
    AugmentConfig,
    Config,
    ConfigError,
    DataConfig,
    ModelConfig,
    PhaseConfig,
    SourceConfig,
    TrainConfig,
)

#: environment variable naming the folder that holds the datasets (``glas/train``, ``hubmap_crypts``)
DATA_ENV = "HOVERCRYPT_DATA"
#: its default: the layout of a development checkout, with the data beside the repository
DEFAULT_DATA_ROOT = "../shared/data"


def data_root() -> Path:
    """``$HOVERCRYPT_DATA``, else ``../shared/data``: where the presets look for their datasets."""
    return Path(os.environ.get(DATA_ENV) or DEFAULT_DATA_ROOT)


def hubmap_source(root: str | Path | None = None) -> SourceConfig:
    """HuBMAP full-thickness normal colon (two quarter images, 45 crypts, another lab and stain).

    Its crypts are normal colonic crypts, so they are typed benign (1); everything else in
    the section (muscle, submucosa, fat) is background, which is what GlaS cannot teach.
    The bottom-right quarter is held out whole for validation (a region split: both
    quarters come from one section, so a random split of windows would leak).
    ``root`` defaults to ``<data_root()>/hubmap_crypts``.
    """
    return SourceConfig(
        name="hubmap",
        image_dir=str(root if root is not None else data_root() / "hubmap_crypts"),
        anno_suffix="_anno",
        type_source="fixed",
        fixed_type=1,
        type_csv=None,
        patient_column=None,
        valid_suffix="_valid",
        image_mpp=0.4,  # not recorded in the release; see its README
        valid_names=["HandE_B005_CL_b_RGB_bottomright"],
        keep_unannotated=True,
        sample_weight=3.0,
    )


def real_slide_recipe() -> TrainConfig:
    """The training recipe for models meant for real slides (issue 13): see README "Training recipe"."""
    return TrainConfig(
        phases=[
            PhaseConfig(name="decoders", epochs=2, freeze_encoder=True, batch_size=4, lr=1e-3,
                        optimizer="adamw", weight_decay=0.01, schedule="cosine", warmup_steps=30),
            PhaseConfig(name="all", epochs=5, freeze_encoder=False, batch_size=4, lr=2e-4,
                        optimizer="adamw", weight_decay=0.01, schedule="cosine", warmup_steps=30),
        ],
        augment=AugmentConfig(
            affine_prob=0.8, affine_scale=(0.7, 1.4), hed_prob=0.8, hed_scale=(0.65, 1.35), hed_shift=0.02,
        ),
        freeze_encoder_bn=True,
        valid_instance_metrics=False,
        valid_patches=False,
        valid_images=True,
        valid_every=3,
        best_metric="valid/img_obj_f1",
    )


def glas_hubmap_config(glas_root: str | Path | None = None, hubmap_root: str | Path | None = None) -> Config:
    """GlaS + HuBMAP crypts, patch files, stain and scale augmentation, `fast` ResNet50 HoVer-Net."""
    base = glas_config(glas_root)
    data = dataclasses.replace(
        base.data, extra_sources=[hubmap_source(hubmap_root)], patch_dir="data/patches/glas_hubmap"
    )
    return dataclasses.replace(base, name="glas_hubmap", data=data)


def glas_config(root: str | Path | None = None) -> Config:
    """Ready configuration for the GlaS training set (two types: benign, malignant).

    GlaS is scanned at 0.465 um/px; processing at 0.93 um/px (an exact 2x
    downsample) puts a typical gland (100-250 um) inside the 256 px input window.
    Training uses the patch files (the ablation winner) and the real-slide recipe.
    ``root`` defaults to ``<data_root()>/glas/train``.
    """
    root = str(root if root is not None else data_root() / "glas" / "train")
    return Config(
        name="glas",
        proc_mpp=0.93,
        type_info="type_info.json",
        model=ModelConfig(nr_types=3, mode="fast", encoder="resnet50"),
        data=DataConfig(
            name="glas",
            image_dir=root,
            anno_suffix="_anno",
            type_source="csv",
            type_csv=f"{root}/grade.csv",
            type_csv_type_column="grade_glas",
            type_csv_map={"benign": 1, "malignant": 2},
            patient_column="patient_id",
            image_mpp=0.465,
            patch_dir="data/patches/glas",
            # the patch files won the short-budget ablation (README "Recipe ablation": GlaS
            # object F1 0.618 vs 0.377 for random crops at 120 steps); crops remain an option
            sampling="patches",
            crops_per_epoch=400,
        ),
        train=real_slide_recipe(),
    )


PRESETS = {"default": Config, "glas": glas_config, "glas_hubmap": glas_hubmap_config}


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
