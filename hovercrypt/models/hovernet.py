"""HoVer-Net with a timm encoder (standard stride-2 stem) and three decoder branches.

The original HoVer-Net keeps a stride-1 stem, which costs about 20x more; here
the encoder is a stock timm backbone and the decoders upsample all the way back
to full resolution instead. "original" mode uses valid convolutions in the
decoder (270 -> 80, like HoVer-Net); "fast" mode pads them (256 -> 164). In
both the output is the centre of the input window.
"""

from __future__ import annotations

import torch
from torch import nn

from hovercrypt.config import MODE_WINDOWS, ConfigError, ModelConfig
from hovercrypt.models.decoder import DecoderBranch
from hovercrypt.models.encoder import (
    Normalize,
    build_encoder,
    encoder_channels,
    encoder_strides,
)
from hovercrypt.models.heads import branch_channels, hovernet_maps


class HoVerNet(nn.Module):
    """Encoder + NP/HV(/NC) decoders; ``forward`` returns logits at the output window."""

    arch = "hovernet"

    def __init__(self, cfg: ModelConfig, check: bool = True):
        super().__init__()
        cfg.validate()
        self.mode = cfg.mode
        self.input_size, self.output_size = MODE_WINDOWS[cfg.mode]
        self.nr_types = cfg.nr_types
        self.margin = (self.input_size - self.output_size) // 2
        self.encoder = build_encoder(cfg.encoder)
        self.strides = encoder_strides(self.encoder)
        if self.strides[-1] < 4:
            raise ConfigError(f"model.encoder={cfg.encoder!r}: deepest feature stride {self.strides[-1]} < 4")
        channels = encoder_channels(self.encoder)
        valid = cfg.mode == "original"
        self.decoders = nn.ModuleDict(
            {
                name: DecoderBranch(channels, self.strides, n, cfg.decoder_width, cfg.dense_units, valid)
                for name, n in branch_channels(cfg.nr_types).items()
            }
        )
        self.normalize = Normalize()
        if check:
            self.check_shapes()

    def check_shapes(self) -> None:
        """One dummy forward at the configured window; a mismatch is a ConfigError, not a late crash."""
        was_training = self.training
        self.eval()
        try:
            with torch.no_grad():
                x = torch.zeros(1, 3, self.input_size, self.input_size, device=self.normalize.mean.device)
                out = self.forward(x)
        except RuntimeError as e:
            raise ConfigError(
                f"model ({self.mode}, input {self.input_size}): the network cannot produce the "
                f"{self.output_size} px output window: {e}"
            ) from e
        finally:
            self.train(was_training)
        for name, t in out.items():
            if tuple(t.shape[-2:]) != (self.output_size, self.output_size):
                raise ConfigError(
                    f"model ({self.mode}): branch {name} gives {tuple(t.shape[-2:])}, "
                    f"config window needs {self.output_size}x{self.output_size}"
                )

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """``x``: float (N, 3, H, W) RGB in 0..1; output windows are ``H - 2 * margin`` wide."""
        if x.ndim != 4 or x.shape[1] != 3:
            raise ValueError(f"HoVerNet expects (N, 3, H, W) RGB input, got {tuple(x.shape)}")
        size = (int(x.shape[-2]), int(x.shape[-1]))
        feats = dict(zip(self.strides, self.encoder(self.normalize(x))))
        return {name: dec(feats, size, self.margin) for name, dec in self.decoders.items()}

    @torch.no_grad()
    def to_maps(self, out: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Channel-last maps for inference: NP fg prob (N,o,o,1), HV (N,o,o,2), NC softmax (N,o,o,T)."""
        return hovernet_maps(out)


def build_hovernet(cfg: ModelConfig) -> HoVerNet:
    """The registry's builder: HoVer-Net, with ``cfg.pretrained`` loaded into the encoder when set."""
    model = HoVerNet(cfg)
    if cfg.pretrained:
        from hovercrypt.models.encoder import load_pretrained_encoder

        load_pretrained_encoder(model.encoder, cfg.pretrained)
    return model
