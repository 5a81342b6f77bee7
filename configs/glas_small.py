"""The configuration of the shipped GlaS model (small enough to ship in fp16, trainable on a CPU).

ResNet18 encoder, HoVer-Net decoders at half width, "fast" windows (256 -> 164) so that each
training step supervises 4x more pixels than "original" mode. Trained from scratch (no pretrained
weights can be downloaded here), so the encoder-frozen phase is skipped (``--epochs=0,N``).
"""

from hovercrypt.presets import glas_config

CONFIG = glas_config()
CONFIG.name = "glas_small"
CONFIG.model.encoder = "resnet18"
CONFIG.model.mode = "fast"
CONFIG.model.decoder_width = 0.5
CONFIG.validate()
