"""Model families: every family-specific piece of the pipeline, looked up by ``model.arch``.

A *family* (HoVer-Net, the UNet baseline, ...) is one :class:`ModelFamily` entry holding
what the rest of the code needs to know about it: how to build the network, its loss, the
training targets its dataset must produce, how its maps become instances, its typed
post-processing settings, the foreground score logged during validation and the grid the
post-processing tuner searches. Training, validation, inference, tuning and the scripts
ask the registry (:func:`get_family`) instead of comparing ``arch`` strings, so a new
family is one new module plus one :func:`register` call.

Hooks are callables or ``"package.module:attribute"`` strings imported on first use: the
registry stays cheap to import (a config can check ``model.arch`` without torch), and a
family's heavy modules load only when that family is used.

Hook signatures (``out``/``batch`` are dicts of NCHW tensors, maps are channel-last):

- ``builder(model_cfg: ModelConfig) -> nn.Module`` with ``input_size``, ``output_size``,
  ``forward(x) -> dict`` of logits and ``to_maps(out) -> dict`` of probability maps; it
  loads ``model_cfg.pretrained`` itself when the family supports it.
- ``loss(out, batch, weights: LossWeights) -> (total, {name: detached part})``.
- ``targets(inst int32 (P, P), out_size: int, cfg: Config) -> {key: ndarray}``: the
  family's own targets (HoVer-Net ``hv``, UNet ``seg``), computed on the whole augmented
  patch; ``image``, ``np``, ``tp``, ``inst`` and ``valid`` are common to all families.
- ``instances(maps: {key: (H, W, C)}, params: dict) -> int32 (H, W)``; ``params`` are
  ``settings.pixels(mpp)``.
- ``foreground(out, batch) -> (predicted, true)`` bool (N, h, w) for the validation Dice.
- ``map_foreground(maps, params) -> bool (H, W)``: the pixels ``instances`` may put in a crypt
  (optional). The whole-slide engine follows them from tile to tile instead of running every
  tile within ``infer.margin_um`` of tissue; a family without it keeps that slower rule.
- ``settings``: the :class:`~hovercrypt.config_postproc.PostprocSettings` subclass.
"""

from __future__ import annotations

import dataclasses
import importlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from hovercrypt.typed_dicts import ConfigError

if TYPE_CHECKING:
    from torch import nn

    from hovercrypt.config import Config, LossWeights, ModelConfig

#: a callable, or ``"package.module:attribute"`` imported when first used
Hook = Callable[..., Any] | str


def resolve(hook: Any) -> Any:
    """The object a hook names (a callable or class is returned as it is)."""
    if not isinstance(hook, str):
        return hook
    module, sep, attr = hook.partition(":")
    if not sep or not attr:
        raise ValueError(f"hook {hook!r} must be 'package.module:attribute'")
    obj: Any = importlib.import_module(module)
    for part in attr.split("."):
        obj = getattr(obj, part)
    return obj


@dataclass(frozen=True)
class ModelFamily:
    """One model family; see the module docstring for the hook signatures."""

    name: str
    description: str  # one line, shown by ``run_train.py --list_models``
    builder: Hook
    loss: Hook
    targets: Hook
    instances: Hook
    foreground: Hook
    settings: type | str
    valid_metric: str  # the foreground Dice key logged every epoch (the default best metric)
    tune_grid: Mapping[str, Sequence[Any]] = field(default_factory=dict)
    encoder_field: str = "encoder"  # the ModelConfig field that ``--encoder`` sets
    encoder_optional: bool = False  # ``--encoder=none`` means no encoder (the classic UNet)
    map_foreground: Hook | None = None

    def build_model(self, model_cfg: ModelConfig) -> nn.Module:
        """The network, with ``arch`` set to this family's name (checkpoints and predictors read it)."""
        model = resolve(self.builder)(model_cfg)
        if getattr(model, "arch", None) != self.name:
            model.arch = self.name
        return model

    def compute_loss(self, out: dict, batch: dict, weights: LossWeights) -> tuple[Any, dict[str, Any]]:
        return resolve(self.loss)(out, batch, weights)

    def make_targets(self, inst: Any, out_size: int, cfg: Config) -> dict[str, Any]:
        return resolve(self.targets)(inst, out_size, cfg)

    def to_instances(self, maps: Mapping[str, Any], params: dict[str, Any]) -> Any:
        return resolve(self.instances)(maps, params)

    def foreground_masks(self, out: dict, batch: dict) -> tuple[Any, Any]:
        return resolve(self.foreground)(out, batch)

    def foreground_map(self, maps: Mapping[str, Any], params: dict[str, Any]) -> Any:
        if self.map_foreground is None:
            raise ValueError(f"model family {self.name!r} has no map_foreground hook")
        return resolve(self.map_foreground)(maps, params)

    def settings_class(self) -> type:
        return resolve(self.settings)

    def derive(self, name: str, description: str, builder: Hook, **changes: Any) -> ModelFamily:
        """A new family sharing this one's targets, loss and post-processing, with another network."""
        return dataclasses.replace(self, name=name, description=description, builder=builder, **changes)


_FAMILIES: dict[str, ModelFamily] = {}


def register(family: ModelFamily, replace: bool = False) -> ModelFamily:
    """Add ``family``; a name already taken is an error unless ``replace``."""
    if not family.name.isidentifier():
        raise ValueError(f"family name {family.name!r} must be an identifier (it names log folders)")
    if family.name in _FAMILIES and not replace:
        raise ValueError(f"model family {family.name!r} is already registered")
    _FAMILIES[family.name] = family
    return family


def unregister(name: str) -> ModelFamily:
    """Remove a family (tests register temporary ones); returns the entry."""
    return _FAMILIES.pop(name)


def get_family(name: str, where: str = "model family") -> ModelFamily:
    """The entry of ``name``; an unknown name is a :class:`ConfigError` listing the registered ones."""
    try:
        return _FAMILIES[name]
    except (KeyError, TypeError):
        raise ConfigError(f"{where} must be one of {family_names()}, got {name!r}") from None


def family_names() -> list[str]:
    return sorted(_FAMILIES)


def describe_families() -> str:
    """One line per family: name and description (``run_train.py --list_models``)."""
    width = max(map(len, _FAMILIES), default=0)
    return "\n".join(f"{f.name:<{width}}  {f.description}" for _, f in sorted(_FAMILIES.items()))


# --------------------------------------------------------------------------- the built-in families

HOVERNET = register(
    ModelFamily(
        name="hovernet",
        description="HoVer-Net: timm encoder, NP + HV (+ NC type) decoders, HV-gradient watershed",
        builder="hovercrypt.models.hovernet:build_hovernet",
        loss="hovercrypt.models.losses:hovernet_loss",
        targets="hovercrypt.data.targets:hovernet_targets",
        instances="hovercrypt.postproc.hv:hovernet_instances",
        foreground="hovercrypt.models.heads:hovernet_foreground",
        settings="hovercrypt.config_postproc:HoVerNetPostproc",
        map_foreground="hovercrypt.postproc.foreground:hovernet_foreground",
        valid_metric="valid/np_dice",
        tune_grid={
            "np_thresh": [0.3, 0.4, 0.5, 0.6, 0.7],
            "marker_thresh": [0.3, 0.4, 0.5, 0.6, 0.7, 0.8],
            "sobel_ksize_um": [9.5, 14.0, 19.5, 24.0, 28.5],
            "marker_open_um": [1.0, 2.0, 4.0, 8.0, 12.0, 16.0],
            "min_marker_area_um2": [20.0, 40.0, 150.0, 400.0, 1000.0, 2500.0, 5000.0],
            "min_object_area_um2": [100.0, 300.0, 1000.0, 2000.0, 4000.0],
            "blur_ksize": [1, 3, 5, 7, 9, 11, 15],
        },
    )
)

#: the semantic recipe (targets, loss, post-processing, metric) other semantic families reuse
UNET = register(
    ModelFamily(
        name="unet",
        description="UNet baseline: semantic crypt (+ boundary) classes, distance / seed watershed",
        builder="hovercrypt.models.unet:build_unet",
        loss="hovercrypt.models.unet:unet_loss",
        targets="hovercrypt.data.targets:semantic_targets",
        instances="hovercrypt.postproc.semantic:semantic_instances",
        foreground="hovercrypt.models.unet:semantic_foreground",
        settings="hovercrypt.config_postproc:UNetPostproc",
        map_foreground="hovercrypt.postproc.foreground:semantic_foreground",
        valid_metric="valid/crypt_dice",
        tune_grid={
            "unet_fg_thresh": [0.3, 0.4, 0.5, 0.6, 0.7],
            "unet_min_peak_distance_um": [0.0, 10.0, 20.0, 40.0, 60.0],
            "unet_split_ratio": [0.2, 0.3, 0.4, 0.5, 0.6, 0.8],
            "unet_min_seed_area_um2": [10.0, 30.0, 100.0, 300.0],
            "unet_max_hole_area_um2": [0.0, 500.0, 2000.0, 8000.0, 20000.0],
            "min_object_area_um2": [100.0, 300.0, 1000.0, 2000.0, 4000.0],
        },
        encoder_field="unet_encoder",
        encoder_optional=True,
    )
)

# semantic families from segmentation-models-pytorch and MONAI (issue 18): the UNet recipe
# (targets, loss, post-processing, metric, grid) over another library's network; --encoder sets
# model.encoder. See hovercrypt/models/smp_families.py and hovercrypt/models/unetr.py.
_SMP = "hovercrypt.models.smp_families:build_smp_model"
for _name, _text in (
    ("smp_unet", "UNet (segmentation-models-pytorch) over an smp / timm encoder, UNet targets"),
    ("unetplusplus", "UNet++ (segmentation-models-pytorch): nested dense skip decoder, UNet targets"),
    ("deeplabv3plus", "DeepLabV3+ (segmentation-models-pytorch): dilated encoder + ASPP, UNet targets"),
    ("fpn", "FPN (segmentation-models-pytorch): feature pyramid decoder, UNet targets"),
    ("segformer", "SegFormer (segmentation-models-pytorch): MiT encoder + MLP decoder, UNet targets"),
    ("upernet", "UPerNet (segmentation-models-pytorch): pyramid pooling + FPN decoder, UNet targets"),
):
    register(UNET.derive(_name, _text, _SMP, encoder_field="encoder", encoder_optional=False))
register(
    UNET.derive(
        "unetr",
        "UNETR (MONAI): ViT encoder + convolutional decoder, fast mode only, UNet targets",
        "hovercrypt.models.unetr:build_unetr",
        encoder_field="encoder",
        encoder_optional=False,
    )
)
