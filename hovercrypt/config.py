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

from hovercrypt.typed_dicts import ConfigError, build_dataclass, plain

__all__ = ["ConfigError"]  # re-exported: every module raises it from here

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

    arch: str = "hovernet"  # "hovernet" | "unet"
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
        if self.arch not in ("hovernet", "unet"):
            raise ConfigError(f"model.arch must be 'hovernet' or 'unet', got {self.arch!r}")
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
class DataConfig:
    """Where annotated images live and how to read their labels and types."""

    image_dir: str = ""  # folder of images + label maps
    label_dir: str | None = None  # folder of label maps / .mat files if not beside the images
    anno_suffix: str = "_anno"  # <stem><anno_suffix>.<ext> is the instance label map
    label_format: str = "image"  # "image" (PNG/TIFF instance map) | "mat" (HoVer-Net .mat)
    type_source: str = "none"  # "none" | "csv" | "type_map" | "color"
    type_csv: str | None = None  # per-image CSV (GlaS grade.csv)
    type_csv_name_column: str = "name"
    type_csv_type_column: str = "grade_glas"
    type_csv_map: dict[str, int] = field(default_factory=dict)  # CSV value -> type id
    patient_column: str | None = "patient_id"  # patient id column in type_csv (for splits)
    type_map_suffix: str = "_type"  # <stem><suffix>.<ext> per-pixel type map
    class_mask_suffix: str = "_class"  # <stem><suffix>.<ext> colour-coded class mask
    image_mpp: float = 0.5  # resolution of the source images, um/px
    patch_dir: str = "data/patches"  # output of extract_patches.py (train/ and valid/ inside)
    patch_size: int = 540  # extraction window == augmentation window
    patch_step: int = 164
    tiling: str = "mirror"  # "mirror" | "valid"
    valid_fraction: float = 0.2  # patient-disjoint validation share
    split_seed: int = 0
    min_annotated_fraction: float = 0.0  # drop patches with fewer annotated pixels than this
    max_blank_fraction: float = 0.8  # drop patches that are mostly white glass or black stripes
    keep_unannotated: bool = False  # keep patches without any annotated pixel
    seg_boundary_px: int = 2  # UNet 3-class target: boundary width in pixels at proc_mpp
    white_level: int = 220  # a pixel with all channels >= this is blank glass
    black_level: int = 25  # a pixel with all channels <= this is a black stripe / scanner border

    def validate(self) -> None:
        if self.label_format not in ("image", "mat"):
            raise ConfigError(f"data.label_format must be 'image' or 'mat', got {self.label_format!r}")
        if self.type_source not in ("none", "csv", "type_map", "color"):
            raise ConfigError(
                f"data.type_source must be none/csv/type_map/color, got {self.type_source!r}"
            )
        if self.type_source == "csv" and not self.type_csv:
            raise ConfigError("data.type_source='csv' needs data.type_csv")
        if self.tiling not in ("mirror", "valid"):
            raise ConfigError(f"data.tiling must be 'mirror' or 'valid', got {self.tiling!r}")
        if self.image_mpp <= 0:
            raise ConfigError("data.image_mpp must be > 0")
        if self.patch_step <= 0:
            raise ConfigError("data.patch_step must be > 0")
        if not 0.0 <= self.valid_fraction < 1.0:
            raise ConfigError("data.valid_fraction must be in [0, 1)")
        if not 0.0 <= self.min_annotated_fraction <= 1.0 or not 0.0 <= self.max_blank_fraction <= 1.0:
            raise ConfigError("data.min_annotated_fraction and data.max_blank_fraction must be in [0, 1]")
        if not 0 <= self.black_level < self.white_level <= 255:
            raise ConfigError("data.black_level / white_level must satisfy 0 <= black < white <= 255")
        if self.patch_size < 1 or self.seg_boundary_px < 1:
            raise ConfigError("data.patch_size and data.seg_boundary_px must be >= 1")


@dataclass
class AugmentConfig:
    """Augmentations (torchvision.transforms.v2). Geometric ones move labels too."""

    flip: bool = True
    rot90: bool = True
    affine_prob: float = 0.5
    affine_degrees: float = 180.0
    affine_scale: tuple[float, float] = (0.8, 1.2)
    affine_shear: float = 5.0
    affine_translate: float = 0.01
    elastic_prob: float = 0.0
    hue: float = 0.04
    saturation: float = 0.2
    brightness: float = 0.1
    contrast: float = 0.2
    blur_prob: float = 0.2  # Gaussian or median blur, chosen at random
    elastic_alpha: float = 50.0  # elastic displacement magnitude (torchvision ElasticTransform units)
    elastic_sigma: float = 5.0  # smoothness of the elastic field, pixels
    blur_max_sigma: float = 1.5  # Gaussian blur sigma drawn from [0.1, this]
    median_ksize: int = 3  # median blur kernel (odd)
    fill: int = 255  # image value outside the rotated/sheared patch (white glass); labels get 0

    def validate(self) -> None:
        for name in ("affine_prob", "elastic_prob", "blur_prob"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ConfigError(f"augment.{name} must be in [0, 1], got {getattr(self, name)}")
        lo, hi = self.affine_scale
        if not 0 < lo <= hi:
            raise ConfigError(f"augment.affine_scale needs 0 < low <= high, got {self.affine_scale}")
        if not 0 <= self.hue <= 0.5:
            raise ConfigError(f"augment.hue must be in [0, 0.5], got {self.hue}")
        for name in ("saturation", "brightness", "contrast"):
            if not 0 <= getattr(self, name) < 1:
                raise ConfigError(f"augment.{name} must be in [0, 1), got {getattr(self, name)}")
        if min(self.affine_degrees, self.affine_shear, self.affine_translate) < 0:
            raise ConfigError("augment.affine_degrees / affine_shear / affine_translate must be >= 0")
        if self.elastic_alpha < 0 or self.elastic_sigma <= 0 or self.blur_max_sigma < 0.1:
            raise ConfigError("augment: need elastic_alpha >= 0, elastic_sigma > 0, blur_max_sigma >= 0.1")
        if self.median_ksize < 3 or self.median_ksize % 2 == 0:
            raise ConfigError(f"augment.median_ksize must be odd and >= 3, got {self.median_ksize}")
        if not 0 <= self.fill <= 255:
            raise ConfigError(f"augment.fill must be in 0..255, got {self.fill}")


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
        if self.best_metric in ("valid/pq", "valid/aji") and not self.valid_instance_metrics:
            raise ConfigError(
                f"train.best_metric={self.best_metric!r} needs train.valid_instance_metrics=True"
            )
        for p in self.phases:
            if p.step_size < 1 or not 0 < p.gamma <= 1:
                raise ConfigError(f"train phase {p.name!r}: step_size >= 1 and 0 < gamma <= 1 required")
        self.augment.validate()


@dataclass
class PostprocConfig:
    """HV-watershed parameters. Sizes are physical (um, um^2) and scaled by ``proc_mpp``.

    Defaults were tuned on GlaS ground-truth HV maps at 0.93 um/px (oracle PQ
    0.996 mean, 0.85 worst, over the 85 training images) and on noisy
    synthetic crypt maps.
    Crypts and glands span ~40-400 um, so HV slopes inside big glands are
    shallow; ``marker_thresh`` 0.6 (HoVer-Net's nuclei value is 0.4) keeps
    their interiors as markers after the whole-map gradient normalisation.
    """

    np_thresh: float = 0.5  # foreground probability threshold
    min_object_area_um2: float = 100.0  # foreground pieces smaller than this are dropped (~11 um across)
    sobel_ksize_um: float = 19.5  # Sobel kernel size for the HV gradient (21 px at 0.93 um/px; max 31 px)
    marker_thresh: float = 0.6  # normalised HV-edge strength below this is marker ("inside")
    marker_open_um: float = 2.0  # opening radius that cuts thin bridges between markers
    min_marker_area_um2: float = 40.0  # markers smaller than this are dropped
    blur_ksize: int = 3  # smoothing of the energy map, pixels (odd)
    watershed_levels: int = 4096  # energy quantisation levels of the bucket-queue watershed
    # --- UNet baseline instance extraction (hovercrypt.postproc.semantic; owned by the UNet part) ---
    unet_fg_thresh: float = 0.5  # crypt when P(crypt) (+ P(boundary), 3 classes) exceeds this
    unet_min_peak_distance_um: float = 20.0  # 2-class split: distance peaks at least this far apart; 0 = off
    unet_split_ratio: float = 0.4  # 2-class split: only where neck (saddle) <= ratio x the thinner crypt
    unet_min_seed_area_um2: float = 30.0  # 3-class: interior seeds smaller than this are noise
    unet_max_hole_area_um2: float = 2000.0  # background holes (lumen) up to this size are filled

    def validate(self) -> None:
        """Ranges the post-processors need; a hand-edited ``--postproc`` file fails here, by field."""
        for key in ("np_thresh", "unet_fg_thresh"):
            if not 0.0 <= getattr(self, key) < 1.0:
                raise ConfigError(f"postproc.{key} must be in [0, 1), got {getattr(self, key)}")
        if not 0.0 < self.marker_thresh <= 1.0:
            raise ConfigError(f"postproc.marker_thresh must be in (0, 1], got {self.marker_thresh}")
        if not 0.0 < self.unet_split_ratio <= 1.0:
            raise ConfigError(f"postproc.unet_split_ratio must be in (0, 1], got {self.unet_split_ratio}")
        if self.sobel_ksize_um <= 0:
            raise ConfigError(f"postproc.sobel_ksize_um must be > 0, got {self.sobel_ksize_um}")
        for f in dataclasses.fields(self):
            if (f.name.endswith("_um") or f.name.endswith("_um2")) and getattr(self, f.name) < 0:
                raise ConfigError(f"postproc.{f.name} must be >= 0, got {getattr(self, f.name)}")
        if self.blur_ksize < 1 or self.blur_ksize % 2 == 0:
            raise ConfigError(f"postproc.blur_ksize must be an odd number >= 1, got {self.blur_ksize}")
        if not 2 <= self.watershed_levels <= 65532:
            raise ConfigError(f"postproc.watershed_levels must be in [2, 65532], got {self.watershed_levels}")

    def pixels(self, mpp: float) -> dict[str, Any]:
        """The parameters in pixels at ``mpp`` µm/px (what ``instances_from_maps`` takes)."""
        if mpp <= 0:
            raise ConfigError(f"processing mpp must be > 0, got {mpp}")
        area = 1.0 / (mpp * mpp)
        ksize = max(3, int(round(self.sobel_ksize_um / mpp)) | 1)
        ksize = min(ksize, 31)  # cv2.Sobel supports odd sizes up to 31
        return {
            "np_thresh": self.np_thresh,
            "min_object_area": max(1, int(round(self.min_object_area_um2 * area))),
            "sobel_ksize": ksize,
            "marker_thresh": self.marker_thresh,
            "marker_open_radius": max(1, int(round(self.marker_open_um / mpp))),
            "min_marker_area": max(1, int(round(self.min_marker_area_um2 * area))),
            "blur_ksize": self.blur_ksize,
            "watershed_levels": self.watershed_levels,
            # --- UNet baseline (instances_from_semantic) ---
            "unet_fg_thresh": self.unet_fg_thresh,
            "unet_min_peak_distance": max(0, int(round(self.unet_min_peak_distance_um / mpp))),
            "unet_split_ratio": self.unet_split_ratio,
            "unet_min_seed_area": max(0, int(round(self.unet_min_seed_area_um2 * area))),
            "unet_max_hole_area": max(0, int(round(self.unet_max_hole_area_um2 * area))),
        }


@dataclass
class InferConfig:
    batch_size: int = 8
    tta: bool = False  # flip test-time augmentation
    # whole-slide
    tile_shape: int = 2048  # processing region side (px at proc_mpp); post-processed as one piece
    margin_um: float = 400.0  # region overlap; must exceed the largest crypt diameter
    tissue_thumb_mpp: float = 16.0  # thumbnail resolution for the automatic tissue mask
    min_tissue_area_um2: float = 40000.0
    postproc_workers: int = 2
    prefetch: int = 2


@dataclass
class Config:
    """The whole configuration. ``proc_mpp`` is the resolution the network sees."""

    name: str = "default"
    proc_mpp: float = 0.93
    type_info: str = "type_info.json"
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    postproc: PostprocConfig = field(default_factory=PostprocConfig)
    infer: InferConfig = field(default_factory=InferConfig)

    def __post_init__(self) -> None:
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
        self.postproc.validate()
        _ = self.windows

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Config:
        return build_dataclass(cls, d, "config")

    def save_json(self, path: str | Path) -> None:
        from hovercrypt.io.atomic import atomic_write_text

        atomic_write_text(path, json.dumps(self.to_dict(), indent=2))

    def replace(self, **sections: Any) -> Config:
        """A copy with top-level fields replaced (validated again)."""
        return Config.from_dict({**self.to_dict(), **{k: plain(v) for k, v in sections.items()}})
