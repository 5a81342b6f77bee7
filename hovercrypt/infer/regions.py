"""Regions (chunks) of a slide: the unit of reading, post-processing, stitching and resume.

The processing-resolution slide is cut into a fixed grid of square *cores*
(``tile_shape`` px) that tile it exactly. Each region is read and
post-processed over its core grown by a *margin* on every side (the
*extended* box, clipped to the slide). Region indices are row-major over the
full grid, so they never depend on the tissue mask: a resumed run finds the
same chunk ids.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

Box = tuple[int, int, int, int]  # [x0, y0, x1, y1], x1/y1 exclusive


@dataclass(frozen=True)
class Region:
    index: int
    core: Box
    ext: Box

    @property
    def ext_shape(self) -> tuple[int, int]:
        """(height, width) of the extended box."""
        return self.ext[3] - self.ext[1], self.ext[2] - self.ext[0]


def margin_pixels(margin_um: float, proc_mpp: float, input_size: int, output_size: int) -> int:
    """Region overlap in processing px: the crypt-size margin plus the network's context.

    Pixels within ``(input - output) / 2`` of a padded region edge see mirrored
    context, so the margin adds that band; beyond it, maps are the same in every
    region that contains the pixel.
    """
    return int(math.ceil(margin_um / proc_mpp)) + (input_size - output_size) // 2


def plan_regions(
    width: int, height: int, tile_shape: int, margin: int, keep: Callable[[Box], bool] | None = None
) -> list[Region]:
    """All regions of a ``width`` x ``height`` slide whose core passes ``keep`` (e.g. touches tissue)."""
    if tile_shape < 1:
        raise ValueError(f"tile_shape must be >= 1, got {tile_shape}")
    nx, ny = math.ceil(width / tile_shape), math.ceil(height / tile_shape)
    out = []
    for iy in range(ny):
        for ix in range(nx):
            core = (
                ix * tile_shape,
                iy * tile_shape,
                min(width, (ix + 1) * tile_shape),
                min(height, (iy + 1) * tile_shape),
            )
            if keep is not None and not keep(core):
                continue
            ext = (
                max(0, core[0] - margin),
                max(0, core[1] - margin),
                min(width, core[2] + margin),
                min(height, core[3] + margin),
            )
            out.append(Region(iy * nx + ix, core, ext))
    return out


def tiles_in(region: Region, output_size: int) -> list[tuple[int, int]]:
    """Global output-tile origins (x, y) that ``predict_image`` will run for ``region``."""
    x0, y0, x1, y1 = region.ext
    jx = range(x0 // output_size, (x1 - 1) // output_size + 1)
    iy = range(y0 // output_size, (y1 - 1) // output_size + 1)
    return [(j * output_size, i * output_size) for i in iy for j in jx]
