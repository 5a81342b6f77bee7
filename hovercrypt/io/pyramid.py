"""Tiled, JPEG-compressed pyramidal TIFFs that OpenSlide reads (quick start, benchmarks, tests).

OpenSlide reads the file as a generic-tiff slide with ``openslide.mpp-x``:

- one page per level (OpenSlide ignores SubIFD pyramids and sees one level);
- tiles are rendered and JPEG-encoded one at a time (Pillow), so a slide of
  any size is written without holding it in memory;
- tifffile needs imagecodecs to *encode* JPEG, which is not a dependency:
  pre-encoded tiles are written as raw bytes and the Compression (7 = JPEG)
  and Photometric (6 = YCbCr, what baseline JPEG holds) tags are patched after;
- resolution tags in pixels per centimetre, from which OpenSlide derives mpp.
"""

from __future__ import annotations

import io
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import numpy as np

#: value of the padding of edge tiles (the light grey of glass)
PAD_VALUE = 242


def _jpeg(tile: np.ndarray, quality: int) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(tile).save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


def write_pyramid_tiff(
    path: str | Path,
    width: int,
    height: int,
    mpp: float,
    render: Callable[[float, int, int, int, int], np.ndarray],
    downsamples: Sequence[int] = (1, 4, 16),
    tile: int = 256,
    quality: int = 80,
) -> Path:
    """Write a JPEG-tiled pyramid, one page per level; ``render(ds, x, y, w, h)`` gives level pixels.

    ``width`` and ``height`` should be divisible by every downsample so that
    OpenSlide's level downsamples are exact.
    """
    import tifffile

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)

    uniform: dict[bytes, bytes] = {}  # one-colour tiles (glass, bare stroma) are encoded once

    def tiles(ds: int, lw: int, lh: int) -> Iterator[bytes]:
        for ty in range(0, lh, tile):
            for tx in range(0, lw, tile):
                w, h = min(tile, lw - tx), min(tile, lh - ty)
                t = render(ds, tx, ty, w, h)
                if (h, w) != (tile, tile):  # edge tiles are padded to the full tile size
                    t = np.pad(t, ((0, tile - h), (0, tile - w), (0, 0)), constant_values=PAD_VALUE)
                flat = t.reshape(-1, 3)
                if (flat == flat[0]).all():
                    key = flat[0].tobytes()
                    if key not in uniform:
                        uniform[key] = _jpeg(t, quality)
                    yield uniform[key]
                else:
                    yield _jpeg(t, quality)

    # tifffile writes a page that fits in one tile as a contiguous frame, not a
    # tile stream; such tiny levels add nothing to a pyramid, so they are left out
    downsamples = [ds for i, ds in enumerate(downsamples) if i == 0 or max(width, height) // ds > tile]
    bigtiff = width * height * 3 > 2**31
    tmp = path.with_name(f".{path.name}.tmp")
    with tifffile.TiffWriter(tmp, bigtiff=bigtiff) as tw:
        for i, ds in enumerate(downsamples):
            lw, lh = width // ds, height // ds
            ppcm = 1e4 / (mpp * ds)
            tw.write(
                tiles(ds, lw, lh),
                shape=(lh, lw, 3),
                dtype=np.uint8,
                tile=(tile, tile),
                photometric="rgb",
                compression=None,
                resolution=(ppcm, ppcm),
                resolutionunit="CENTIMETER",
                subfiletype=0 if i == 0 else 1,
                description="hovercrypt synthetic slide" if i == 0 else None,
                metadata=None,
            )
    with tifffile.TiffFile(tmp, mode="r+b") as tf:
        for page in tf.pages:
            page.tags["Compression"].overwrite(7)
            page.tags["PhotometricInterpretation"].overwrite(6)
    tmp.replace(path)
    return path
