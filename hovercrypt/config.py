"""One typed configuration for the whole pipeline.

Every stage (patch extraction, training, post-processing, tile and slide
inference) reads its settings from a :class:`Config`. Sizes that depend on each
other (patch, network input and output windows) are derived and checked here,
in one place, so a bad combination fails at start-up instead of as a shape
error deep inside training. Physical sizes are given in micrometres and turned
into pixels with the processing resolution (``proc_mpp``), so changing the
resolution keeps the post-processing meaningful.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hovercrypt.config_data import AugmentConfig, DataConfig, SourceConfig
from hovercrypt.config_postproc import HoVerNetPostproc, PostprocSettings, UNetPostproc, settings_from_dict
from hovercrypt.typed_dicts import ConfigError, build_dataclass, plain

#: the name older code uses for the HoVer-Net settings (the default family's)
PostprocConfig = HoVerNetPostproc

# re-exported: every module imports the configuration classes and ConfigError from here
__all__ = [
    "AugmentConfig",
    "ConfigError",
    "DataConfig",
    "HoVerNetPostproc",
    "PostprocConfig",
    "PostprocSettings",
    "SourceConfig",
    "UNetPostproc",
]

#: network (input, output) window per model mode, in pixels at ``proc_mpp``.
MODE_WINDOWS: dict[str, tuple[int, int]] = {"original": (270, 80), "fast": (256, 164)}


@dataclass(frozen=True)
class Windows:
    """Patch / network-input / network-output window sizes (square, pixels)."""

    patch: int
    input: int
    output: int

    @classmethod
    def for_mode(cls, mode: str, patch: int) -> Windows:
        if mode not in MODE_WINDOWS:
            raise ConfigError(f"model.mode must be one of {sorted(MODE_WINDOWS)}, got {mode!r}")
        inp, out = MODE_WINDOWS[mode]
        if patch < inp:
            raise ConfigError(f"data.patch_size={patch} is smaller than the network input {inp} ({mode})")
        if (patch - inp) % 2 or (inp - out) % 2:
            raise ConfigError(
                f"windows {patch}/{inp}/{out} cannot be centre-aligned: differences must be even"
            )
        return cls(patch=patch, input=inp, output=out)


@dataclass
class ModelConfig:
    """Network architecture. ``arch`` is stored in checkpoints and checked on load."""

    arch: str = "hovernet"  # a registered model family (hovercrypt.models.registry): "hovernet" | "unet"
    mode: str = "original"  # "original" (270->80) | "fast" (256->164)
    encoder: str = "resnet50"  # any timm backbone with features_only support
    pretrained: str | None = None  # local state-dict file (no hub downloads)
    nr_types: int = 3  # including background; 0 disables the NC / type head
    decoder_width: float = 1.0  # channel multiplier: 1 = default widths, 0.5 etc. for small models
    dense_units: tuple[int, int] = (8, 4)  # dense-block units in the two deepest decoder stages
    # UNet baseline
    unet_classes: int = 2  # 2 = background/crypt, 3 = + crypt boundary
    unet_base_width: int = 16
    unet_levels: int = 5
    unet_encoder: str | None = None  # None = classic UNet; else a timm encoder name
    unet_upsample: str = "transpose"  # "transpose" | "resize"

    def validate(self) -> None:
        from hovercrypt.models.registry import get_family

        get_family(self.arch, "model.arch")
        if self.mode not in MODE_WINDOWS:
            raise ConfigError(f"model.mode must be one of {sorted(MODE_WINDOWS)}, got {self.mode!r}")
        if self.nr_types < 0 or self.nr_types == 1:
            raise ConfigError("model.nr_types must be 0 (no type head) or >= 2 (background + types)")
        if self.unet_classes not in (2, 3):
            raise ConfigError(f"model.unet_classes must be 2 or 3, got {self.unet_classes}")
        if not 3 <= self.unet_levels <= 6:
            raise ConfigError(f"model.unet_levels must be in 3..6, got {self.unet_levels}")
        if not self.decoder_width > 0:
            raise ConfigError("model.decoder_width must be > 0")
        if len(self.dense_units) != 2 or any(int(u) != u or u < 0 for u in self.dense_units):
            raise ConfigError(f"model.dense_units must be two integers >= 0, got {self.dense_units}")


@dataclass
class PhaseConfig:
    """One training phase. HoVer-Net trains decoders first, then everything."""

    name: str = "phase"
    epochs: int = 50
    freeze_encoder: bool = False
    lr: float = 1e-4
    step_size: int = 25  # StepLR period in epochs
    gamma: float = 0.1
    batch_size: int = 8
    optimizer: str = "adam"  # "adam" | "adamw"
    weight_decay: float = 0.0  # AdamW decoupled weight decay (Adam: L2, usually 0)
    schedule: str = "step"  # "step" (StepLR per epoch) | "cosine" (warm-up + cosine, per step) | "onecycle"
    warmup_steps: int = 0  # linear warm-up of the cosine schedule, in optimiser steps
    min_lr_ratio: float = 0.01  # cosine ends at lr * this
    accum_steps: int = 1  # gradient accumulation: optimiser step every N batches


@dataclass
class LossWeights:
    np_ce: float = 1.0
    np_dice: float = 1.0
    hv_mse: float = 1.0
    hv_msge: float = 1.0
    tp_ce: float = 1.0
    tp_dice: float = 1.0
    # UNet baseline
    seg_ce: float = 1.0
    seg_dice: float = 1.0


@dataclass
class TrainConfig:
    phases: list[PhaseConfig] = field(
        default_factory=lambda: [
            PhaseConfig(name="decoders", epochs=50, freeze_encoder=True, batch_size=8),
            PhaseConfig(name="all", epochs=50, freeze_encoder=False, batch_size=4),
        ]
    )
    loss: LossWeights = field(default_factory=LossWeights)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    seed: int = 0
    num_workers: int = 2
    amp: str = "auto"  # "auto" | "bf16" | "fp16" | "none"
    channels_last: bool = True
    best_metric: str = "valid/np_dice"  # a key of the per-epoch metrics
    best_mode: str = "max"  # "max" | "min"
    valid_instance_metrics: bool = True  # PQ / AJI on validation patches (needs post-processing)
    max_steps_per_epoch: int = 0  # > 0 caps train and validation batches per epoch (quick runs, tests)
    # a pretrained encoder keeps its ImageNet BatchNorm statistics (batches of 4 estimate them badly)
    freeze_encoder_bn: bool = True
    # object F1 / Dice (GlaS rule) on the whole validation images after the real tile inference
    valid_images: bool = False
    valid_every: int = 1  # image validation every N epochs (and always after the last one)
    valid_patches: bool = True  # losses / NP Dice on the validation patches every epoch
    # whole-model weights of a hovercrypt checkpoint of the same model config to start from
    # (fine-tuning, or continuing a finished run with a new schedule); None = encoder init only
    init_from: str | None = None

    def validate(self) -> None:
        if not self.phases:
            raise ConfigError("train.phases must hold at least one phase")
        for p in self.phases:
            if p.epochs < 0 or p.batch_size < 1 or p.lr <= 0:
                raise ConfigError(f"train phase {p.name!r}: epochs >= 0, batch_size >= 1, lr > 0 required")
        if self.amp not in ("auto", "bf16", "fp16", "none"):
            raise ConfigError(f"train.amp must be auto/bf16/fp16/none, got {self.amp!r}")
        if self.best_mode not in ("max", "min"):
            raise ConfigError(f"train.best_mode must be 'max' or 'min', got {self.best_mode!r}")
        if self.max_steps_per_epoch < 0 or self.num_workers < 0 or self.seed < 0:
            raise ConfigError("train.seed, train.max_steps_per_epoch and train.num_workers must be >= 0")
        if self.best_metric.startswith("valid/img_") and not self.valid_images:
            raise ConfigError(f"train.best_metric={self.best_metric!r} needs train.valid_images=True")
        if self.best_metric in ("valid/pq", "valid/aji") and not self.valid_instance_metrics:
            raise ConfigError(
                f"train.best_metric={self.best_metric!r} needs train.valid_instance_metrics=True"
            )
        for p in self.phases:
            if p.step_size < 1 or not 0 < p.gamma <= 1:
                raise ConfigError(f"train phase {p.name!r}: step_size >= 1 and 0 < gamma <= 1 required")
            if p.optimizer not in ("adam", "adamw") or p.schedule not in ("step", "cosine", "onecycle"):
                raise ConfigError(
                    f"train phase {p.name!r}: optimizer adam/adamw and schedule step/cosine/onecycle, "
                    f"got {p.optimizer!r} / {p.schedule!r}"
                )
            if p.weight_decay < 0 or p.warmup_steps < 0 or p.accum_steps < 1 or not 0 < p.min_lr_ratio <= 1:
                raise ConfigError(
                    f"train phase {p.name!r}: weight_decay >= 0, warmup_steps >= 0, accum_steps >= 1, "
                    "0 < min_lr_ratio <= 1 required"
                )
        if self.valid_every < 1:
            raise ConfigError("train.valid_every must be >= 1")
        self.augment.validate()


#: network execution backends of ``infer.backend`` (see :mod:`hovercrypt.infer.backends`)
BACKENDS = ("auto", "torch", "openvino", "onnxruntime")
#: arithmetic of the OpenVINO backend, ``infer.precision`` (see :mod:`hovercrypt.infer.backends`)
PRECISIONS = ("auto", "f32", "bf16")


@dataclass
class InferConfig:
    # 4: as fast as 8 in OpenVINO on the CPU, with a smaller activation arena (-120 MB peak RSS,
    # hovercrypt.infer.memory); raise it on a GPU
    batch_size: int = 4
    tta: bool = False  # flip test-time augmentation
    # whole-slide
    # processing region side (px at proc_mpp), post-processed as one piece. 1536: with the tile cache
    # smaller regions cost no network time, and up to three regions' maps are alive at once
    # (peak RSS 1.85 GB against 2.0 GB at 2048 on a 4.66 mm² slide, README "Throughput")
    tile_shape: int = 1536
    margin_um: float = 400.0  # region overlap; must exceed the largest crypt diameter
    tissue_thumb_mpp: float = 16.0  # thumbnail resolution for the automatic tissue mask
    min_tissue_area_um2: float = 40000.0
    postproc_workers: int = 2
    prefetch: int = 2
    # throughput (README "Throughput"); the defaults are the settings measured to pay off
    window: int = 0  # network input window at inference (px); 0 = the training window
    window_border: int = 0  # px dropped on each side of a large window's output (padded networks)
    tile_cache: bool = True  # wsi: every network tile computed once per slide, shared by regions
    # wsi, with the tile cache: run the tiles that touch tissue, then follow the predicted crypts:
    # any tile within follow_um of a foreground pixel of a tile already run is run too, until no
    # crypt reaches an unrun tile (> the post-processing's kernel reach: Sobel radius, blur, opening).
    # 0 = the rule before: every tile within margin_um of tissue (2.3x the tiles on the benchmark slide)
    follow_um: float = 32.0
    channels_last: bool = False  # NHWC weights too (activations are always NHWC)
    threads: int = 0  # torch intra-op threads; 0 = torch's default (one per core)
    # network execution: "auto" (OpenVINO on the CPU when installed, else torch) | "torch" |
    # "openvino" | "onnxruntime" (CPU only; same fp32 maps to float rounding, benchmarks/backends.py).
    # auto by default: OpenVINO runs the shipped model's training window 1.5x faster than torch
    # and its export + compile (~4 s) pays off from ~65 tiles on (README "Throughput")
    backend: str = "auto"
    # OpenVINO arithmetic: "auto" (bf16 where the CPU computes bf16 natively: AVX512_BF16 or AMX,
    # else f32) | "f32" | "bf16". bf16 ran the shipped model 2.1x faster than f32 here with the
    # same crypts (README "Throughput"); torch and ONNX Runtime always run f32 on the CPU
    precision: str = "auto"


@dataclass
class Config:
    """The whole configuration. ``proc_mpp`` is the resolution the network sees."""

    name: str = "default"
    proc_mpp: float = 0.93
    type_info: str = "type_info.json"
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    #: the post-processing settings of the model's family (``get_family(model.arch).settings``);
    #: None gives that family's defaults
    postproc: PostprocSettings | None = None
    infer: InferConfig = field(default_factory=InferConfig)

    def __post_init__(self) -> None:
        from hovercrypt.models.registry import get_family

        want = get_family(self.model.arch, "model.arch").settings_class()
        post = self.postproc
        # None, or another family's untouched defaults (``dataclasses.replace(cfg, model=...)``
        # switching the family), mean this family's defaults
        if post is None or (type(post) is not want and post == type(post)()):
            self.postproc = want()
        self.validate()

    @property
    def windows(self) -> Windows:
        return Windows.for_mode(self.model.mode, self.data.patch_size)

    def validate(self) -> None:
        if self.proc_mpp <= 0:
            raise ConfigError(f"proc_mpp must be > 0, got {self.proc_mpp}")
        self.model.validate()
        self.data.validate()
        self.train.validate()
        self._check_postproc_family()
        self.postproc.validate()
        if self.infer.backend not in BACKENDS:
            raise ConfigError(f"infer.backend must be one of {list(BACKENDS)}, got {self.infer.backend!r}")
        if self.infer.precision not in PRECISIONS:
            raise ConfigError(
                f"infer.precision must be one of {list(PRECISIONS)}, got {self.infer.precision!r}"
            )
        if not self.infer.follow_um >= 0:
            raise ConfigError(f"infer.follow_um must be >= 0 (0 = off), got {self.infer.follow_um}")
        _ = self.windows

    def _check_postproc_family(self) -> None:
        from hovercrypt.models.registry import get_family

        want = get_family(self.model.arch, "model.arch").settings_class()
        if type(self.postproc) is not want:
            raise ConfigError(
                f"postproc holds {type(self.postproc).__name__} settings, but model.arch={self.model.arch!r} "
                f"is post-processed with {want.__name__}"
            )

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Config:
        """A config from plain data; ``postproc`` is read with the settings class of ``model.arch``."""
        if not isinstance(d, dict):
            raise ConfigError(f"config: expected a mapping, got {type(d).__name__}")
        post = d.get("postproc")
        cfg = build_dataclass(cls, {k: v for k, v in d.items() if k != "postproc"}, "config")
        if post is None:
            return cfg
        if not isinstance(post, dict):
            post = plain(post)
        post = settings_from_dict(type(cfg.postproc), post, "config.postproc")
        return dataclasses.replace(cfg, postproc=post)

    def save_json(self, path: str | Path) -> None:
        from hovercrypt.io.atomic import atomic_write_text

        atomic_write_text(path, json.dumps(self.to_dict(), indent=2))

    def replace(self, **sections: Any) -> Config:
        """A copy with top-level fields replaced (validated again)."""
        return Config.from_dict({**self.to_dict(), **{k: plain(v) for k, v in sections.items()}})
