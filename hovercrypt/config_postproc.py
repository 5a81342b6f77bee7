"""Post-processing settings, one typed dataclass per model family.

Each family turns its own maps into instances with its own parameters, so each has its own
settings class: a key that belongs to no field of the running family's class (a typo, or a
setting of another family) is an error naming it instead of being silently ignored.

In a configuration (and the config stored in every checkpoint) the settings of the model's
family sit under ``postproc``, keyed by the field names of that family's class; which class
applies follows from ``model.arch`` (see :mod:`hovercrypt.models.registry`). Sizes are
physical (µm, µm²) and become pixels with :meth:`PostprocSettings.pixels`.

Before the split, one flat class held the fields of both families and every checkpoint
stored all of them. Such a complete old dump (the shipped model's, or a ``--postproc`` file
written by ``benchmarks/tune_postproc.py`` then) still loads: the other family's fields are
dropped, which is what the old post-processors did with them.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from hovercrypt.typed_dicts import ConfigError, build_dataclass


@dataclass
class PostprocSettings:
    """Base class of a family's post-processing settings (physical units)."""

    def validate(self) -> None:
        """Sizes in µm / µm² must not be negative; subclasses add their own ranges."""
        for f in dataclasses.fields(self):
            if (f.name.endswith("_um") or f.name.endswith("_um2")) and getattr(self, f.name) < 0:
                raise ConfigError(f"postproc.{f.name} must be >= 0, got {getattr(self, f.name)}")

    def pixels(self, mpp: float) -> dict[str, Any]:
        """The keyword parameters of the family's post-processor, in pixels at ``mpp`` µm/px."""
        raise NotImplementedError

    def with_overrides(self, overrides: dict[str, Any], where: str = "postproc") -> PostprocSettings:
        """A validated copy with the fields of ``overrides`` replaced (``--postproc``).

        ``overrides`` is checked on its own first, so a misspelt key or another family's key
        is an error naming it even though the merged dict holds every field.
        """
        own = legacy_fields_dropped(type(self), overrides)
        unknown = sorted(set(own) - field_names(type(self)))
        if unknown:
            raise ConfigError(
                f"{where}: unknown key(s) {unknown} for {type(self).__name__}; "
                f"known: {sorted(field_names(type(self)))}"
            )
        post = build_dataclass(type(self), {**dataclasses.asdict(self), **own}, where)
        post.validate()
        return post


def _area_px(um2: float, mpp: float, minimum: int) -> int:
    return max(minimum, int(round(um2 * (1.0 / (mpp * mpp)))))


def _check_mpp(mpp: float) -> None:
    if mpp <= 0:
        raise ConfigError(f"processing mpp must be > 0, got {mpp}")


@dataclass
class HoVerNetPostproc(PostprocSettings):
    """HV-watershed parameters of HoVer-Net. Sizes are physical (µm, µm²) and scaled by ``proc_mpp``.

    Defaults were tuned on GlaS ground-truth HV maps at 0.93 µm/px (oracle PQ 0.996 mean,
    0.85 worst, over the 85 training images) and on noisy synthetic crypt maps. Crypts and
    glands span ~40-400 µm, so HV slopes inside big glands are shallow; ``marker_thresh`` 0.6
    (HoVer-Net's nuclei value is 0.4) keeps their interiors as markers after the whole-map
    gradient normalisation.
    """

    np_thresh: float = 0.5  # foreground probability threshold
    min_object_area_um2: float = 100.0  # foreground pieces smaller than this are dropped (~11 µm across)
    sobel_ksize_um: float = 19.5  # Sobel kernel size for the HV gradient (21 px at 0.93 µm/px; max 31 px)
    marker_thresh: float = 0.6  # normalised HV-edge strength below this is marker ("inside")
    marker_open_um: float = 2.0  # opening radius that cuts thin bridges between markers
    min_marker_area_um2: float = 40.0  # markers smaller than this are dropped
    blur_ksize: int = 3  # smoothing of the energy map, pixels (odd)
    watershed_levels: int = 4096  # energy quantisation levels of the bucket-queue watershed

    def validate(self) -> None:
        """Ranges the post-processor needs; a hand-edited ``--postproc`` file fails here, by field."""
        if not 0.0 <= self.np_thresh < 1.0:
            raise ConfigError(f"postproc.np_thresh must be in [0, 1), got {self.np_thresh}")
        if not 0.0 < self.marker_thresh <= 1.0:
            raise ConfigError(f"postproc.marker_thresh must be in (0, 1], got {self.marker_thresh}")
        if self.sobel_ksize_um <= 0:
            raise ConfigError(f"postproc.sobel_ksize_um must be > 0, got {self.sobel_ksize_um}")
        super().validate()
        if self.blur_ksize < 1 or self.blur_ksize % 2 == 0:
            raise ConfigError(f"postproc.blur_ksize must be an odd number >= 1, got {self.blur_ksize}")
        if not 2 <= self.watershed_levels <= 65532:
            raise ConfigError(f"postproc.watershed_levels must be in [2, 65532], got {self.watershed_levels}")

    def pixels(self, mpp: float) -> dict[str, Any]:
        """The keyword parameters of ``instances_from_maps`` at ``mpp`` µm/px."""
        _check_mpp(mpp)
        ksize = max(3, int(round(self.sobel_ksize_um / mpp)) | 1)
        return {
            "np_thresh": self.np_thresh,
            "min_object_area": _area_px(self.min_object_area_um2, mpp, 1),
            "sobel_ksize": min(ksize, 31),  # cv2.Sobel supports odd sizes up to 31
            "marker_thresh": self.marker_thresh,
            "marker_open_radius": max(1, int(round(self.marker_open_um / mpp))),
            "min_marker_area": _area_px(self.min_marker_area_um2, mpp, 1),
            "blur_ksize": self.blur_ksize,
            "watershed_levels": self.watershed_levels,
        }


@dataclass
class UNetPostproc(PostprocSettings):
    """Instance extraction of the UNet (and other semantic) maps, see :mod:`hovercrypt.postproc.semantic`."""

    unet_fg_thresh: float = 0.5  # crypt when P(crypt) (+ P(boundary), 3 classes) exceeds this
    unet_min_peak_distance_um: float = 20.0  # 2-class split: distance peaks at least this far apart; 0 = off
    unet_split_ratio: float = 0.4  # 2-class split: only where neck (saddle) <= ratio x the thinner crypt
    unet_min_seed_area_um2: float = 30.0  # 3-class: interior seeds smaller than this are noise
    unet_max_hole_area_um2: float = 2000.0  # background holes (lumen) up to this size are filled
    min_object_area_um2: float = 100.0  # crypts smaller than this are dropped

    def validate(self) -> None:
        if not 0.0 <= self.unet_fg_thresh < 1.0:
            raise ConfigError(f"postproc.unet_fg_thresh must be in [0, 1), got {self.unet_fg_thresh}")
        if not 0.0 < self.unet_split_ratio <= 1.0:
            raise ConfigError(f"postproc.unet_split_ratio must be in (0, 1], got {self.unet_split_ratio}")
        super().validate()

    def pixels(self, mpp: float) -> dict[str, Any]:
        """The keyword parameters of ``instances_from_semantic`` at ``mpp`` µm/px."""
        _check_mpp(mpp)
        return {
            "unet_fg_thresh": self.unet_fg_thresh,
            "unet_min_peak_distance": max(0, int(round(self.unet_min_peak_distance_um / mpp))),
            "unet_split_ratio": self.unet_split_ratio,
            "unet_min_seed_area": _area_px(self.unet_min_seed_area_um2, mpp, 0),
            "unet_max_hole_area": _area_px(self.unet_max_hole_area_um2, mpp, 0),
            "min_object_area": _area_px(self.min_object_area_um2, mpp, 1),
        }


def field_names(cls: type) -> set[str]:
    return {f.name for f in dataclasses.fields(cls)}


#: every field of the one flat settings class that older versions stored in each checkpoint
_LEGACY_FLAT = frozenset(field_names(HoVerNetPostproc) | field_names(UNetPostproc))


def legacy_fields_dropped(cls: type, d: dict[str, Any]) -> dict[str, Any]:
    """``d`` without the other family's fields when it is a complete dump of the old flat class.

    Only a dump that holds every field of ``cls`` and nothing but old flat fields counts:
    a hand-written dict with another family's key stays as it is and fails as unknown.
    """
    keys = set(d)
    own = field_names(cls)
    if keys <= _LEGACY_FLAT and own <= keys and keys - own:
        return {k: v for k, v in d.items() if k in own}
    return d


def settings_from_dict(cls: type, d: Any, where: str = "postproc") -> PostprocSettings:
    """``cls`` built from the plain dict ``d`` (a config's ``postproc`` section), validated."""
    if not isinstance(d, dict):
        raise ConfigError(f"{where}: expected a mapping, got {type(d).__name__}")
    post = build_dataclass(cls, legacy_fields_dropped(cls, d), where)
    post.validate()
    return post
