"""A small GlaS configuration for quick CPU experiments (the release before the ResNet50 model shipped it).

ResNet18 encoder, HoVer-Net decoders at half width, "fast" windows (256 -> 164) so that each
training step supervises 4x more pixels than "original" mode. From random weights skip the
encoder-frozen phase (``--epochs=0,N``); the shipped model's configuration is ``config.py``.
"""

from hovercrypt.presets import glas_config

CONFIG = glas_config()
CONFIG.name = "glas_small"
CONFIG.model.encoder = "resnet18"
CONFIG.model.mode = "fast"
CONFIG.model.decoder_width = 0.5
CONFIG.validate()
