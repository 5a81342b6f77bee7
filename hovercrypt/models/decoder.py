"""HoVer-Net decoder branch with exact centre alignment.

Every feature map is tracked by the input coordinate of its first pixel
(``offset``) and its ``stride``: pixel ``i`` sits at ``offset + stride * i``.
timm encoders with "same" padding put pixel 0 of every level at coordinate 0.
Upsampling is an exact x2 interpolation (pixel ``j`` of the finer grid reads
coarse pixel ``j / 2``), valid convolutions move the offset by their halo, and
every map is cropped, before the expensive layers, to the coordinate range the
final output window actually needs. That keeps "original" mode (valid
convolutions, 270 -> 80) as cheap as "fast" mode and the output exactly
centre-aligned with the input.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

#: per level stride: (skip projection / stage input channels, stage output channels) at width 1
COARSE_CHANNELS = {32: (256, 256), 16: (256, 256), 8: (256, 128)}
#: dense stages (HoVer-Net u3 / u2): stride -> (input, entry conv out, bottleneck, growth, output)
DENSE_CHANNELS = {4: (128, 64, 64, 32, 128), 2: (64, 32, 32, 16, 32)}
FULL_RES_CHANNELS = 32
KERNEL = 5  # HoVer-Net uses 5x5 convolutions in the decoder


def scaled(c: int, width: float) -> int:
    return max(8, int(round(c * width)))


def bn_relu_conv(cin: int, cout: int, k: int, valid: bool) -> nn.Sequential:
    """Pre-activation conv: the skip sums and dense concatenations stay linear."""
    return nn.Sequential(
        nn.BatchNorm2d(cin),
        nn.ReLU(inplace=True),
        nn.Conv2d(cin, cout, k, padding=0 if valid else k // 2, bias=False),
    )


def crop_border(x: torch.Tensor, c: int) -> torch.Tensor:
    return x if c == 0 else x[..., c:-c, c:-c]


class DenseUnit(nn.Module):
    """1x1 bottleneck + kxk conv; the result is concatenated to the (cropped) input."""

    def __init__(self, cin: int, bottleneck: int, growth: int, k: int, valid: bool):
        super().__init__()
        self.body = nn.Sequential(
            bn_relu_conv(cin, bottleneck, 1, valid), bn_relu_conv(bottleneck, growth, k, valid)
        )
        self.crop = k // 2 if valid else 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([crop_border(x, self.crop), self.body(x)], dim=1)


class DenseStage(nn.Module):
    """HoVer-Net decoder stage: conv -> dense units -> BN/ReLU -> 1x1 conv."""

    def __init__(
        self, cin: int, entry: int, bottleneck: int, growth: int, cout: int, units: int, valid: bool
    ):
        super().__init__()
        layers: list[nn.Module] = [bn_relu_conv(cin, entry, KERNEL, valid)]
        c = entry
        for _ in range(units):
            layers.append(DenseUnit(c, bottleneck, growth, KERNEL, valid))
            c += growth
        layers.append(bn_relu_conv(c, cout, 1, valid))
        self.body = nn.Sequential(*layers)
        self.halo = (KERNEL // 2) * (1 + units)  # receptive-field margin in pixels of this level

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)


def up2(x: torch.Tensor) -> torch.Tensor:
    """Exact x2 upsampling: fine pixel j reads coarse pixel j/2; the last row/column is replicated."""
    h, w = x.shape[-2:]
    y = F.interpolate(x, size=(2 * h - 1, 2 * w - 1), mode="bilinear", align_corners=True)
    return F.pad(y, (0, 1, 0, 1), mode="replicate")


Range = tuple[int, int]  # inclusive input-coordinate range


def plan_ranges(size: int, margin: int, levels: list[int], halos: dict[int, int], bottom: int) -> dict:
    """Coordinates each level must cover so that the output ``[margin, size - margin)`` is exact.

    Returns ``{("in", s): range, ("out", s): range, ("bottom",): range}`` for one axis.
    """
    need: dict = {}
    a, b = margin, size - margin - 1
    for s in sorted(levels):  # finest (1) to coarsest
        if s > 1:  # a level's output grid is made of multiples of its stride
            a, b = (a // s) * s, -((-b) // s) * s
        need[("out", s)] = (a, b)
        h = halos.get(s, 0) * s
        a, b = a - h, b + h
        need[("in", s)] = (a, b)
    a, b = (a // bottom) * bottom, -((-b) // bottom) * bottom
    need[("bottom",)] = (a, b)
    return need


class Placed:
    """A feature map plus the input coordinate of its first pixel (per axis) and its stride."""

    def __init__(self, x: torch.Tensor, oy: int, ox: int, stride: int):
        self.x, self.oy, self.ox, self.stride = x, oy, ox, stride

    def last(self) -> tuple[int, int]:
        return self.oy + self.stride * (self.x.shape[-2] - 1), self.ox + self.stride * (self.x.shape[-1] - 1)

    def crop(self, ry: Range, rx: Range) -> Placed:
        """Crop to the part of ``ry`` x ``rx`` that exists (ranges are on this grid)."""
        s = self.stride
        ly, lx = self.last()
        y0, y1 = max(ry[0], self.oy), min(ry[1], ly)
        x0, x1 = max(rx[0], self.ox), min(rx[1], lx)
        if y1 < y0 or x1 < x0:
            raise RuntimeError(f"decoder geometry: empty crop at stride {s} (input too small)")
        iy, ix = (y0 - self.oy) // s, (x0 - self.ox) // s
        x = self.x[..., iy : iy + (y1 - y0) // s + 1, ix : ix + (x1 - x0) // s + 1]
        return Placed(x, y0, x0, s)


class DecoderBranch(nn.Module):
    """One HoVer-Net branch (NP, HV or NC): upsampling path with encoder skips, dense stages, head."""

    def __init__(
        self,
        enc_channels: list[int],
        enc_strides: list[int],
        out_channels: int,
        width: float,
        dense_units: tuple[int, int],
        valid: bool,
    ):
        super().__init__()
        self.valid = valid
        self.bottom = enc_strides[-1]
        skip_ch = dict(zip(enc_strides, enc_channels))
        self.levels = [1 << i for i in range(self.bottom.bit_length() - 2, -1, -1)]  # bottom/2 .. 1
        c = scaled(COARSE_CHANNELS.get(self.bottom, (256, 256))[0], width)
        self.bot = nn.Conv2d(skip_ch[self.bottom], c, 1, bias=False)
        self.proj = nn.ModuleDict()
        self.stages = nn.ModuleDict()
        self.halos: dict[int, int] = {}
        units = dict(zip(sorted(DENSE_CHANNELS, reverse=True), dense_units))
        for s in self.levels:
            if s in DENSE_CHANNELS:
                cin, entry, bott, growth, cout = (scaled(v, width) for v in DENSE_CHANNELS[s])
            elif s == 1:
                cin, cout = c, scaled(FULL_RES_CHANNELS, width)
            else:
                cin, cout = (scaled(v, width) for v in COARSE_CHANNELS.get(s, (256, 256)))
            if cin != c:  # match the upsampled map to the stage input
                self.stages[f"in{s}"] = nn.Conv2d(c, cin, 1, bias=False)
            if s in skip_ch:
                self.proj[str(s)] = nn.Conv2d(skip_ch[s], cin, 1, bias=False)
            if s in DENSE_CHANNELS:
                stage = DenseStage(cin, entry, bott, growth, cout, units[s], valid)
                self.halos[s] = stage.halo
            elif s == 1:
                stage = bn_relu_conv(cin, cout, KERNEL, valid)
                self.halos[s] = KERNEL // 2
            else:
                stage = bn_relu_conv(cin, cout, 1, valid)
            self.stages[str(s)] = stage
            c = cout
        self.head = nn.Sequential(nn.BatchNorm2d(c), nn.ReLU(inplace=True), nn.Conv2d(c, out_channels, 1))

    def forward(self, feats: dict[int, torch.Tensor], size: tuple[int, int], margin: int) -> torch.Tensor:
        ny = plan_ranges(size[0], margin, self.levels, self.halos, self.bottom)
        nx = ny if size[1] == size[0] else plan_ranges(size[1], margin, self.levels, self.halos, self.bottom)
        p = Placed(feats[self.bottom], 0, 0, self.bottom).crop(ny[("bottom",)], nx[("bottom",)])
        p = Placed(self.bot(p.x), p.oy, p.ox, p.stride)
        for s in self.levels:
            p = Placed(up2(p.x), p.oy, p.ox, s).crop(ny[("in", s)], nx[("in", s)])
            sk = None
            if str(s) in self.proj:  # keep only the part covered by both maps
                skip = Placed(feats[s], 0, 0, s)
                p = p.crop((skip.oy, skip.last()[0]), (skip.ox, skip.last()[1]))
                sk = skip.crop((p.oy, p.last()[0]), (p.ox, p.last()[1])).x
            x = self.stages[f"in{s}"](p.x) if f"in{s}" in self.stages else p.x
            if sk is not None:
                x = x + self.proj[str(s)](sk)
            shift = self.halos.get(s, 0) * s if self.valid else 0
            p = Placed(self.stages[str(s)](x), p.oy + shift, p.ox + shift, s)
            p = p.crop(ny[("out", s)], nx[("out", s)])
        out = p.crop((margin, size[0] - margin - 1), (margin, size[1] - margin - 1))
        want = (size[0] - 2 * margin, size[1] - 2 * margin)
        if tuple(out.x.shape[-2:]) != want:
            raise RuntimeError(
                f"decoder geometry: output {tuple(out.x.shape[-2:])} instead of {want} for input {size}"
            )
        return self.head(out.x)
