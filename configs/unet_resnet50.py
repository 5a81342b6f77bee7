"""The UNet baseline at the shipped model's data and recipe (issue 14: "the UNet gets the same chance").

The hand-written UNet decoder over the same ImageNet ResNet50 encoder as the shipped HoVer-Net
(``unet``, ``unet_encoder="resnet50"``), crypt / background / boundary classes (the boundary
class separates touching crypts) plus the type head, on the ``glas_hubmap`` preset: the same
data, patch files, augmentation, phases and optimiser as the shipped model's run 2. Run 1 of the
chain uses ``configs/unet_resnet50_crops.py``; README "Shipped model" gives both commands.
"""

import dataclasses

from hovercrypt.presets import glas_hubmap_config

_base = glas_hubmap_config()
CONFIG = dataclasses.replace(
    _base,
    name="unet_resnet50",
    model=dataclasses.replace(_base.model, arch="unet", unet_encoder="resnet50", unet_classes=3),
)
CONFIG.validate()
