"""HoVer-Net post-processing: NP probability + HV maps -> instance map.

The recipe (Graham et al., 2019) in five stages:

1. ``threshold``: foreground = NP >= ``np_thresh``; drop 4-connected pieces
   smaller than ``min_object_area``.
2. ``sobel``: signed Sobel derivative of the HV maps (x of channel 0, y of
   channel 1), each min-max normalised over the **whole map** and inverted, so
   that the sharp +1 -> -1 jumps between touching instances become ~1. The
   classic recipe also min-max normalises the HV maps *before* the Sobel; that
   is an affine map with a positive scale, which the later normalisation undoes
   exactly, so it is skipped here.
3. ``energy``: one compiled pass builds the energy ``-(1 - edge)`` and the
   markers ``foreground & edge < marker_thresh``. The energy is smoothed with a
   small Gaussian (``blur_ksize``) lazily, inside the watershed's preparation
   pass and only where a level is needed (most foreground is marker).
4. ``markers``: fill holes, open with a disk (``marker_open_radius``), label
   (4-connected), drop markers smaller than ``min_marker_area`` (as a lookup
   table applied inside the watershed's preparation pass).
5. ``watershed``: bucket-queue flood from the markers restricted to the
   foreground (see :mod:`hovercrypt.postproc.watershed`).

Normalisation is over the whole map, not per connected component, because
that is the published recipe (``benchmarks/postproc.py`` checks agreement with
it). The consequence: the edge scale of one map is set by its strongest
gradients, so the same crypt can get a slightly different marker in another
tile or slide region. The defaults (``marker_thresh`` 0.6, above the nuclei
value 0.4) leave margin for that with glands of very different sizes.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import cv2
import numpy as np
from numba import njit

from hovercrypt.postproc.morphology import binary_open, components, fill_holes_framed, label_filtered
from hovercrypt.postproc.watershed import DEFAULT_LEVELS, flood_prepared

#: the keyword parameters ``instances_from_maps`` understands (others are ignored).
HV_PARAMS = (
    "np_thresh",
    "min_object_area",
    "sobel_ksize",
    "marker_thresh",
    "marker_open_radius",
    "min_marker_area",
    "blur_ksize",
    "watershed_levels",
)


@njit(cache=True)
def _energy_and_markers(sh, sv, comp, keep, hmin, hrange, vmin, vrange, thresh):  # pragma: no cover
    """Fused stage 3: normalised, inverted Sobel -> energy (float32) and raw markers (uint8).

    The foreground is ``keep[comp]`` (small components already switched off).
    Markers are written inside a one-pixel zero frame, ready for hole filling.
    The loop is branch-free so that it vectorises.
    """
    h, w = comp.shape
    energy = np.empty((h, w), np.float32)
    framed = np.zeros((h + 2, w + 2), np.uint8)
    one, zero = np.float32(1.0), np.float32(0.0)
    ih = np.float32(1.0 / hrange if hrange > 0 else 0.0)
    iv = np.float32(1.0 / vrange if vrange > 0 else 0.0)
    hm, vm, th = np.float32(hmin), np.float32(vmin), np.float32(thresh)
    for y in range(h):
        erow, shr, svr, crow, mrow = energy[y], sh[y], sv[y], comp[y], framed[y + 1]
        for x in range(w):
            o = max(one - (shr[x] - hm) * ih, one - (svr[x] - vm) * iv, zero)
            f = keep[crow[x]]
            erow[x] = (o - one) if f else zero
            mrow[x + 1] = 1 if (f and o < th) else 0
    return energy, framed


def _check_maps(np_prob: np.ndarray, hv: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    np_prob = np.asarray(np_prob)
    if np_prob.ndim == 3 and np_prob.shape[-1] == 1:
        np_prob = np_prob[..., 0]
    hv = np.asarray(hv)
    if np_prob.ndim != 2:
        raise ValueError(f"np_prob must be (H, W), got shape {np_prob.shape}")
    if hv.shape != (*np_prob.shape, 2):
        raise ValueError(f"hv must be (H, W, 2) matching np_prob {np_prob.shape}, got {hv.shape}")
    return np.ascontiguousarray(np_prob, np.float32), np.asarray(hv, np.float32)


def instances_from_maps(
    np_prob: np.ndarray,
    hv: np.ndarray,
    *,
    np_thresh: float = 0.5,
    min_object_area: int = 116,
    sobel_ksize: int = 21,
    marker_thresh: float = 0.6,
    marker_open_radius: int = 2,
    min_marker_area: int = 46,
    blur_ksize: int = 3,
    watershed_levels: int = DEFAULT_LEVELS,
    timings: dict[str, float] | None = None,
    clock: Callable[[], float] = time.perf_counter,
    **_ignored: Any,
) -> np.ndarray:
    """Instance map (int32, ids 1..K consecutive, 0 = background) from NP and HV maps.

    Parameters are in pixels; get them from ``PostprocConfig.pixels(mpp)`` (the
    defaults equal ``PostprocConfig().pixels(0.93)``).
    Keys meant for the UNet baseline (or any other unknown key) are ignored so
    one parameter dict serves both architectures. If ``timings`` is a dict, the
    milliseconds spent per stage are added to it, measured with ``clock``
    (e.g. ``time.thread_time`` for CPU time on a busy machine).
    """
    np_prob, hv = _check_maps(np_prob, hv)
    if sobel_ksize % 2 == 0 or not 1 <= sobel_ksize <= 31:
        raise ValueError(f"sobel_ksize must be odd and in 1..31, got {sobel_ksize}")
    tick = clock()

    def lap(name: str) -> None:
        nonlocal tick
        if timings is not None:
            now = clock()
            timings[name] = timings.get(name, 0.0) + (now - tick) * 1e3
            tick = now

    comp, area = components(np_prob >= np_thresh)
    keep = area >= max(1, int(min_object_area))
    keep[0] = False
    lap("threshold")
    if not keep.any():
        return np.zeros(np_prob.shape, np.int32)

    h_dir, v_dir = cv2.split(np.ascontiguousarray(hv))  # one read of the interleaved map
    sh = cv2.Sobel(h_dir, cv2.CV_32F, 1, 0, ksize=sobel_ksize)
    hmin, hmax = cv2.minMaxLoc(sh)[:2]  # while sh is still in cache
    sv = cv2.Sobel(v_dir, cv2.CV_32F, 0, 1, ksize=sobel_ksize)
    vmin, vmax = cv2.minMaxLoc(sv)[:2]
    lap("sobel")

    energy, marker = _energy_and_markers(
        sh, sv, comp, keep, hmin, hmax - hmin, vmin, vmax - vmin, float(marker_thresh)
    )
    # the Gaussian smoothing of the energy is applied inside the watershed's preparation pass, only
    # where a level is needed (same kernel and border rule as cv2.GaussianBlur(energy, (k, k), 0))
    k = max(1, int(blur_ksize) | 1)
    kernel = cv2.getGaussianKernel(k, 0, cv2.CV_64F).ravel() if k > 1 else np.ones(1)
    lap("energy")

    marker = binary_open(fill_holes_framed(marker), marker_open_radius)
    labels, lut, k = label_filtered(marker, min_marker_area)
    lap("markers")
    if k == 0:
        return np.zeros(np_prob.shape, np.int32)

    # the energy lies in [-1, 0] by construction (the smoothing is a convex combination)
    inst = flood_prepared(energy, comp, keep, labels, lut, (-1.0, 0.0), watershed_levels, kernel)
    lap("watershed")
    return inst


def maps_to_instances(maps: dict[str, np.ndarray], arch: str, params: dict[str, Any]) -> np.ndarray:
    """Instances from network maps of either architecture (``params`` = ``PostprocConfig.pixels``).

    HoVer-Net maps need ``np`` (H, W, 1) and ``hv`` (H, W, 2); UNet maps need
    ``seg`` (H, W, C). Each post-processor ignores the parameters of the other.
    """
    if arch == "hovernet":
        missing = [k for k in ("np", "hv") if k not in maps]
        if missing:
            raise ValueError(f"hovernet maps lack {missing}; got {sorted(maps)}")
        np_map = np.asarray(maps["np"])
        np_prob = np_map[..., 0] if np_map.ndim == 3 else np_map
        return instances_from_maps(np_prob, maps["hv"], **params)
    if arch == "unet":
        if "seg" not in maps:
            raise ValueError(f"unet maps lack 'seg'; got {sorted(maps)}")
        from hovercrypt.postproc.semantic import instances_from_semantic

        return instances_from_semantic(maps["seg"], **params)
    raise ValueError(f"arch must be 'hovernet' or 'unet', got {arch!r}")
