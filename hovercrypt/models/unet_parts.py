"""Building blocks of the UNet baseline: conv blocks, up-sampling steps, padding and cropping.

Kept apart from :mod:`hovercrypt.models.unet` so the classic UNet and the
timm-encoder UNet share exactly the same decoder pieces (their only difference
is then the encoder), which keeps the baseline comparison fair.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

# ImageNet statistics (shared with HoVer-Net's encoder): timm encoders expect them, and the
# classic UNet uses the same normalisation so every model sees identically scaled input.
from hovercrypt.models.encoder import Normalize  # noqa: F401 - re-exported for the UNet modules

UPSAMPLE_MODES = ("transpose", "resize")


class ConvBlock(nn.Sequential):
    """(3x3 conv + BN + ReLU) x 2, the classic UNet unit; padded so the size is kept."""

    def __init__(self, cin: int, cout: int) -> None:
        super().__init__(
            nn.Conv2d(cin, cout, 3, padding=1, bias=False),
            nn.BatchNorm2d(cout),
            nn.ReLU(inplace=True),
            nn.Conv2d(cout, cout, 3, padding=1, bias=False),
            nn.BatchNorm2d(cout),
            nn.ReLU(inplace=True),
        )


class Up(nn.Module):
    """Up-sample the deeper features to the skip's size, concatenate, then a :class:`ConvBlock`.

    ``transpose`` learns the up-sampling (2x2 stride-2 transposed conv);
    ``resize`` uses bilinear interpolation followed by a 1x1 conv to reduce
    channels (no checkerboard artefacts). Either way the result is resized to
    the skip's exact size, so encoders with odd feature sizes still fit.
    """

    def __init__(self, cin: int, cskip: int, cout: int, mode: str, scale: int = 2) -> None:
        super().__init__()
        if mode not in UPSAMPLE_MODES:
            raise ValueError(f"unet upsample must be one of {UPSAMPLE_MODES}, got {mode!r}")
        self.mode = mode
        if mode == "transpose":
            self.up = nn.ConvTranspose2d(cin, cout, kernel_size=scale, stride=scale)
        else:
            self.up = nn.Conv2d(cin, cout, 1)
        self.block = ConvBlock(cout + cskip, cout)

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        if self.mode == "transpose":
            x = self.up(x)
            if x.shape[-2:] != skip.shape[-2:]:
                x = F.interpolate(x, size=skip.shape[-2:], mode="bilinear", align_corners=False)
        else:
            x = F.interpolate(x, size=skip.shape[-2:], mode="bilinear", align_corners=False)
            x = self.up(x)
        return self.block(torch.cat([x, skip], dim=1))


def pad_to_multiple(x: torch.Tensor, multiple: int) -> tuple[torch.Tensor, tuple[int, int]]:
    """Reflect-pad H and W up to a multiple of ``multiple``; returns the (top, left) offsets.

    The pooling path halves the size ``levels - 1`` times; padding here (instead
    of requiring divisible windows) lets the UNet reuse HoVer-Net's 270/256 px
    windows unchanged, so both models train on the very same patches.
    """
    h, w = x.shape[-2:]
    ph = (-h) % multiple
    pw = (-w) % multiple
    if ph == 0 and pw == 0:
        return x, (0, 0)
    top, left = ph // 2, pw // 2
    pad = (left, pw - left, top, ph - top)
    mode = "reflect" if min(h, w) > max(ph, pw) else "replicate"
    return F.pad(x, pad, mode=mode), (top, left)


def crop_window(x: torch.Tensor, top: int, left: int, size: int) -> torch.Tensor:
    """``x[..., top:top+size, left:left+size]`` with a clear error when it does not fit."""
    h, w = x.shape[-2:]
    if top < 0 or left < 0 or top + size > h or left + size > w:
        raise ValueError(f"cannot crop {size}x{size} at ({top}, {left}) from {h}x{w}")
    return x[..., top : top + size, left : left + size]
