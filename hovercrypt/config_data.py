"""Configuration of the training data: datasets (sources), patches, crops and augmentation.

Part of the one typed configuration of :mod:`hovercrypt.config` (which re-exports
these classes); kept in its own module so each stays short.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path

from hovercrypt.typed_dicts import ConfigError


@dataclass
class SourceConfig:
    """One annotated dataset: where its images live, how to read labels, types and valid pixels.

    A training run can mix several sources (``DataConfig.extra_sources``), each with
    its own folder, label format and resolution; all are resampled to one ``proc_mpp``.
    """

    name: str = ""  # short id used in patch file names and reports ("" = the folder name)
    image_dir: str = ""  # folder of images + label maps
    label_dir: str | None = None  # folder of label maps / .mat files if not beside the images
    anno_suffix: str = "_anno"  # <stem><anno_suffix>.<ext> is the instance label map
    label_format: str = "image"  # "image" (PNG/TIFF instance map) | "mat" (HoVer-Net .mat)
    type_source: str = "none"  # "none" | "csv" | "type_map" | "color" | "fixed"
    fixed_type: int = 1  # type_source="fixed": every instance gets this type id
    type_csv: str | None = None  # per-image CSV (GlaS grade.csv)
    type_csv_name_column: str = "name"
    type_csv_type_column: str = "grade_glas"
    type_csv_map: dict[str, int] = field(default_factory=dict)  # CSV value -> type id
    patient_column: str | None = "patient_id"  # patient id column in type_csv (for splits)
    type_map_suffix: str = "_type"  # <stem><suffix>.<ext> per-pixel type map
    class_mask_suffix: str = "_class"  # <stem><suffix>.<ext> colour-coded class mask
    valid_suffix: str | None = None  # e.g. "_valid": <stem><suffix>.png marks real pixels (0 = ignore)
    image_mpp: float = 0.5  # resolution of the source images, um/px
    valid_fraction: float = 0.2  # patient-disjoint validation share
    valid_names: list[str] = field(default_factory=list)  # fixed held-out image stems (region split)
    keep_unannotated: bool = False  # keep patches without any annotated pixel (tissue = background)
    sample_weight: float = 1.0  # crop sampling: weight of this source per pixel of valid tissue

    def validate_source(self, where: str = "data") -> None:
        if self.label_format not in ("image", "mat"):
            raise ConfigError(f"{where}.label_format must be 'image' or 'mat', got {self.label_format!r}")
        if self.type_source not in ("none", "csv", "type_map", "color", "fixed"):
            raise ConfigError(
                f"{where}.type_source must be none/csv/type_map/color/fixed, got {self.type_source!r}"
            )
        if self.type_source == "csv" and not self.type_csv:
            raise ConfigError(f"{where}.type_source='csv' needs {where}.type_csv")
        if self.type_source == "fixed" and self.fixed_type < 1:
            raise ConfigError(f"{where}.fixed_type must be >= 1, got {self.fixed_type}")
        if self.image_mpp <= 0:
            raise ConfigError(f"{where}.image_mpp must be > 0")
        if not 0.0 <= self.valid_fraction < 1.0:
            raise ConfigError(f"{where}.valid_fraction must be in [0, 1)")
        if self.sample_weight < 0:
            raise ConfigError(f"{where}.sample_weight must be >= 0")

    def source_name(self) -> str:
        return self.name or Path(self.image_dir).name or "data"


@dataclass
class DataConfig(SourceConfig):
    """The first (or only) dataset, any further ones, and how patches are cut and sampled.

    The source fields inherited from :class:`SourceConfig` describe the first
    dataset, so a one-dataset configuration reads as before; ``extra_sources``
    adds more. ``sources()`` lists them all.
    """

    extra_sources: list[SourceConfig] = field(default_factory=list)
    patch_dir: str = "data/patches"  # output of extract_patches.py (train/ and valid/ inside)
    patch_size: int = 540  # extraction window == augmentation window
    patch_step: int = 164
    tiling: str = "mirror"  # "mirror" | "valid"
    split_seed: int = 0
    min_annotated_fraction: float = 0.0  # drop patches with fewer annotated pixels than this
    max_blank_fraction: float = 0.8  # drop patches that are mostly white glass or black stripes
    min_valid_fraction: float = 0.5  # drop patches (and crop centres) mostly outside the valid-pixel mask
    seg_boundary_px: int = 2  # UNet 3-class target: boundary width in pixels at proc_mpp
    white_level: int = 220  # a pixel with all channels >= this is blank glass
    black_level: int = 25  # a pixel with all channels <= this is a black stripe / scanner border
    # training samples: "patches" = the patch files; "crops" = random windows from whole images
    sampling: str = "patches"
    crops_per_epoch: int = 1024  # crops mode: samples per epoch
    crop_crypt_fraction: float = 0.5  # crops mode: share of crops centred on a crypt pixel
    crop_background_fraction: float = 0.2  # crops mode: share centred on crypt-free tissue

    def sources(self) -> list[SourceConfig]:
        """Every dataset of the run: this config's own source first, then ``extra_sources``."""
        own = {f.name: getattr(self, f.name) for f in dataclasses.fields(SourceConfig)}
        return [SourceConfig(**own), *self.extra_sources]

    def validate(self) -> None:
        self.validate_source("data")
        names = [s.source_name() for s in self.sources()]
        if len(set(names)) != len(names):
            raise ConfigError(f"data sources need distinct names, got {names}")
        for i, s in enumerate(self.extra_sources):
            s.validate_source(f"data.extra_sources[{i}]")
        if self.tiling not in ("mirror", "valid"):
            raise ConfigError(f"data.tiling must be 'mirror' or 'valid', got {self.tiling!r}")
        if self.patch_step <= 0:
            raise ConfigError("data.patch_step must be > 0")
        for key in ("min_annotated_fraction", "max_blank_fraction", "min_valid_fraction"):
            if not 0.0 <= getattr(self, key) <= 1.0:
                raise ConfigError(f"data.{key} must be in [0, 1]")
        if not 0 <= self.black_level < self.white_level <= 255:
            raise ConfigError("data.black_level / white_level must satisfy 0 <= black < white <= 255")
        if self.patch_size < 1 or self.seg_boundary_px < 1:
            raise ConfigError("data.patch_size and data.seg_boundary_px must be >= 1")
        if self.sampling not in ("patches", "crops"):
            raise ConfigError(f"data.sampling must be 'patches' or 'crops', got {self.sampling!r}")
        if self.crops_per_epoch < 1:
            raise ConfigError("data.crops_per_epoch must be >= 1")
        fr = (self.crop_crypt_fraction, self.crop_background_fraction)
        if min(fr) < 0 or sum(fr) > 1:
            raise ConfigError("data.crop_crypt_fraction and crop_background_fraction: >= 0, sum <= 1")


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
    # stain: scale / shift the haematoxylin and eosin optical densities (skimage rgb2hed / hed2rgb)
    hed_prob: float = 0.0
    hed_scale: tuple[float, float] = (0.7, 1.3)  # factor per stain (H and E drawn independently)
    hed_shift: float = 0.02  # added to each stain's density, drawn from [-this, this]

    def validate(self) -> None:
        for name in ("affine_prob", "elastic_prob", "blur_prob", "hed_prob"):
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
        if not 0.0 <= self.hed_prob <= 1.0 or not 0 < self.hed_scale[0] <= self.hed_scale[1]:
            raise ConfigError("augment: hed_prob in [0, 1] and 0 < hed_scale low <= high required")
        if self.hed_shift < 0:
            raise ConfigError("augment.hed_shift must be >= 0")
