"""Overlap-tile inference: dense maps for an image of any size.

The network sees an ``input_size`` window and predicts only its centre
``output_size`` crop (the border lacks context). Output windows therefore tile
the image edge to edge with stride ``output_size``, and the input windows
overlap by ``input_size - output_size``. Mirror (reflect) padding supplies the
missing context at the image border, so the valid outputs cover every pixel
exactly once and no blending is needed.

Alignment rule (what makes whole-slide regions seamless): the output grid is
anchored at the *global* origin, not at the image corner. ``origin=(x0, y0)``
says where the image's top-left pixel lies in global processing-resolution
pixels; output window ``(i, j)`` covers global pixels
``[j*out, (j+1)*out) x [i*out, (i+1)*out)`` and its input window starts at
``(j*out - m, i*out - m)`` with ``m = (input - output) / 2``. A pixel at global
``(x, y)`` is thus always predicted by the same window at the same offset,
whatever region it was read in. Its value is identical across regions when
the window's input pixels are real image data in both (i.e. the pixel is at
least ``m`` plus the window offset away from a region edge that was padded).
"""

from __future__ import annotations

from typing import Any

import numpy as np
from tqdm import tqdm

from hovercrypt.infer.predictor import check_predictor


def tile_grid(start: int, length: int, out: int) -> tuple[int, int]:
    """First output-window index and window count along one axis for global ``[start, start+length)``."""
    first = start // out
    last = (start + length - 1) // out
    return first, last - first + 1


def _mirror_pad(image: np.ndarray, pads: tuple[tuple[int, int], ...]) -> np.ndarray:
    """Reflect-pad (no edge repeat); a 1-pixel axis cannot be reflected, so it is repeated."""
    if all(s > 1 for s in image.shape[:2]):
        return np.pad(image, pads, mode="reflect")
    out = image
    for ax in (0, 1):
        width = [(0, 0)] * image.ndim
        width[ax] = pads[ax]
        out = np.pad(out, width, mode="reflect" if out.shape[ax] > 1 else "edge")
    return out


def predict_image(
    predictor: Any,
    image: np.ndarray,
    batch_size: int = 8,
    origin: tuple[int, int] = (0, 0),
    progress: bool = False,
) -> dict[str, np.ndarray]:
    """Dense float32 maps ``(H, W, C)`` per map name for a uint8 RGB image ``(H, W, 3)``.

    ``origin`` = (x, y) of the image's top-left in global processing pixels; see
    the module docstring for how it anchors the tile grid. ``batch_size`` tiles
    go to ``predictor.predict`` per call, with their global input origins.
    """
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ValueError(f"image must be uint8 (H, W, 3), got {image.dtype} {image.shape}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    check_predictor(predictor)
    inp, out = int(predictor.input_size), int(predictor.output_size)
    m = (inp - out) // 2
    h, w = image.shape[:2]
    ox, oy = int(origin[0]), int(origin[1])
    jx0, nx = tile_grid(ox, w, out)
    iy0, ny = tile_grid(oy, h, out)
    # offsets of the image inside the (unpadded) output grid
    dx, dy = ox - jx0 * out, oy - iy0 * out
    pads = ((m + dy, ny * out + m - dy - h), (m + dx, nx * out + m - dx - w), (0, 0))
    padded = _mirror_pad(image, pads)

    idx = [(i, j) for i in range(ny) for j in range(nx)]
    maps: dict[str, np.ndarray] = {}
    batches = range(0, len(idx), batch_size)
    for s in tqdm(batches, desc="tiles", unit="batch", leave=False, disable=not progress):
        chunk = idx[s : s + batch_size]
        tiles = np.stack([padded[i * out : i * out + inp, j * out : j * out + inp] for i, j in chunk])
        origins = np.array([((jx0 + j) * out - m, (iy0 + i) * out - m) for i, j in chunk], np.int64)
        pred = predictor.predict(tiles, origins)
        for name, arr in pred.items():
            if arr.shape[:3] != (len(chunk), out, out):
                raise ValueError(
                    f"predictor returned {name!r} with shape {arr.shape}, "
                    f"expected ({len(chunk)}, {out}, {out}, C)"
                )
            if name not in maps:
                maps[name] = np.zeros((ny * out, nx * out, arr.shape[3]), np.float32)
            for k, (i, j) in enumerate(chunk):
                maps[name][i * out : (i + 1) * out, j * out : (j + 1) * out] = arr[k]
    return {k: np.ascontiguousarray(v[dy : dy + h, dx : dx + w]) for k, v in maps.items()}


def predict_resampled(
    predictor: Any,
    image: np.ndarray,
    proc_mpp: float,
    input_mpp: float | None = None,
    batch_size: int = 8,
    progress: bool = False,
) -> dict[str, np.ndarray]:
    """Maps of ``image`` at ``proc_mpp``: resampled from ``input_mpp`` first when that differs.

    The network and the post-processing sizes assume the processing resolution, so every
    caller that predicts on an image at its own resolution goes through here.
    """
    from hovercrypt.data.resample import resize_image, scale_shape

    hw = image.shape[:2]
    proc_hw = scale_shape(hw, input_mpp or proc_mpp, proc_mpp)
    proc_img = image if proc_hw == hw else resize_image(image, proc_hw)
    return predict_image(predictor, proc_img, batch_size=batch_size, progress=progress)


def segment_image(
    predictor: Any,
    image: np.ndarray,
    proc_mpp: float,
    postproc_params: dict[str, Any],
    input_mpp: float | None = None,
    batch_size: int = 8,
    progress: bool = False,
) -> tuple[np.ndarray, dict[int, dict[str, Any]]]:
    """Instances of one RGB image, in the image's own pixels.

    The image is resampled from ``input_mpp`` (default: already at ``proc_mpp``)
    to ``proc_mpp`` because the network and the post-processing sizes assume
    that resolution. The instance map comes back with nearest-neighbour
    sampling (ids preserved) and the type probabilities bilinearly, and
    ``instance_info`` runs at the input resolution, so every coordinate,
    area and contour is in input-image pixels (x, y).

    Returns ``(inst_map int32 (H, W), info)`` with ``info`` from
    :func:`hovercrypt.postproc.instance_info`.
    """
    from hovercrypt.data.resample import resize_image, resize_labels
    from hovercrypt.postproc import instance_info, maps_to_instances

    h, w = image.shape[:2]
    maps = predict_resampled(predictor, image, proc_mpp, input_mpp, batch_size, progress)
    inst = np.asarray(maps_to_instances(maps, predictor.arch, postproc_params), np.int32)
    type_prob = maps.get("tp")
    if inst.shape != (h, w):
        inst = resize_labels(inst, (h, w))
        if type_prob is not None:
            type_prob = resize_image(type_prob, (h, w))
    return inst, instance_info(inst, type_prob)
