"""Run 1 of the UNet baseline's chain: ``configs/unet_resnet50.py`` with random crops.

The shipped HoVer-Net's run 1 trained on 400 random crops per epoch (``data.sampling="crops"``)
before run 2 moved to the patch files; the UNet follows the same chain so that both models see
the same data for the same number of steps.
"""

import dataclasses
from pathlib import Path

from hovercrypt.presets import load_config

_unet = load_config(Path(__file__).with_name("unet_resnet50.py"))
CONFIG = dataclasses.replace(
    _unet,
    name="unet_resnet50_crops",
    data=dataclasses.replace(_unet.data, sampling="crops"),  # the preset's 400 crops per epoch
)
CONFIG.validate()
