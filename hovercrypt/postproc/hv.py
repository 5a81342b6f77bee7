"""HoVer-Net post-processing: NP probability + HV maps -> instance map.

The recipe (Graham et al., 2019) in five stages:

1. ``threshold``: foreground = NP >= ``np_thresh``; drop 4-connected pieces
   smaller than ``min_object_area`` (one run-length labelling pass that
   thresholds on the fly and paints only the kept pieces).
2. ``sobel``: signed Sobel derivative of the HV maps (x of channel 0, y of
   channel 1), each min-max normalised over the **whole map** and inverted, so
   that the sharp +1 -> -1 jumps between touching instances become ~1. The
   classic recipe also min-max normalises the HV maps *before* the Sobel; that
   is an affine map with a positive scale, which the later normalisation undoes
   exactly, so it is skipped here. Both derivatives and their min/max come from
   one compiled pass that reproduces cv2.Sobel bit for bit (checked at run time).
3. ``energy``: one compiled pass builds the energy ``-(1 - edge)`` and the
   markers ``foreground & edge < marker_thresh``. The energy is smoothed with a
   small Gaussian (``blur_ksize``) lazily, inside the watershed's preparation
   pass and only where a level is needed (most foreground is marker).
4. ``markers``: fill holes, open with a disk (``marker_open_radius``), label
   (4-connected), drop markers smaller than ``min_marker_area`` (while painting
   the labels).
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

from collections.abc import Callable, Mapping
from typing import Any

import cv2
import numpy as np
from numba import njit

from hovercrypt.postproc.morphology import binary_open, components_where, fill_holes_framed, label_filtered
from hovercrypt.postproc.watershed import DEFAULT_LEVELS, flood_prepared

#: the keyword parameters ``instances_from_maps`` takes (the keys of ``HoVerNetPostproc.pixels``).
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


@njit(cache=True, nogil=True)
def _energy_and_markers(sh, sv, comp, hmin, hrange, vmin, vrange, thresh):  # pragma: no cover
    """Fused stage 3: normalised, inverted Sobel -> energy (float32) and raw markers (uint8).

    The foreground is ``comp != 0`` (small components were dropped while labelling,
    so no lookup table is needed and the loop vectorises).
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
            f = crow[x] != 0
            erow[x] = (o - one) if f else zero
            mrow[x + 1] = 1 if (f and o < th) else 0
    return energy, framed


# --- stage 2: the Sobel of both HV channels in one compiled pass ---------------------------------
# cv2.Sobel (ksize >= 7, float32) is a separable filter: a row pass that accumulates the taps in
# order with fused multiply-adds, then a column pass over the symmetric (or antisymmetric) kernel,
# where the last ``w % 8`` columns are rounded separately (scalar code). The kernels below follow
# the same order and rounding, so they give the same bits, but they read the interleaved HV map
# directly (no channel split), keep the row-pass rows in a small ring buffer (cache-resident) and
# find the min/max on the fly. ``_sobel_pair`` checks that equality once per kernel size against
# OpenCV and falls back to cv2.Sobel if it does not hold (other OpenCV builds or CPUs).


@njit(cache=True, inline="always")
def _refl(i, n):  # pragma: no cover - compiled
    """BORDER_REFLECT_101 index for ``-n < i < 2n - 1`` (one bounce)."""
    if i < 0:
        return -i
    if i >= n:
        return 2 * n - 2 - i
    return i


@njit(cache=True, nogil=True, fastmath={"contract"})
def _row_fir(buf, k, out):  # pragma: no cover - compiled
    """out[x] = sum_t buf[x + t] * k[t], one fused multiply-add per tap, in tap order."""
    n, w = k.size, out.size
    for x in range(w):
        out[x] = np.float32(0.0)
    t = 0
    while t + 7 <= n:  # 7 taps per sweep: fewer loads and stores of ``out``, same order
        k0, k1, k2, k3, k4, k5, k6 = k[t], k[t + 1], k[t + 2], k[t + 3], k[t + 4], k[t + 5], k[t + 6]
        for x in range(w):
            s = buf[x + t] * k0 + out[x]
            s = buf[x + t + 1] * k1 + s
            s = buf[x + t + 2] * k2 + s
            s = buf[x + t + 3] * k3 + s
            s = buf[x + t + 4] * k4 + s
            s = buf[x + t + 5] * k5 + s
            out[x] = buf[x + t + 6] * k6 + s
        t += 7
    while t < n:
        kt = k[t]
        for x in range(w):
            out[x] = buf[x + t] * kt + out[x]
        t += 1


@njit(cache=True, nogil=True, fastmath={"contract"})
def _col_fir(ring, k, y, h, sym, out, nf):  # pragma: no cover - compiled
    """Column pass of output row ``y`` over the ring of row-pass rows, fused for ``x < nf``.

    Symmetric kernels start from the centre tap and add ``(up + down) * k``;
    antisymmetric ones start from 0 and add ``(down - up) * k`` (rows below minus rows above).
    """
    n = k.size
    r = n // 2
    if sym:
        c, kc = ring[y % n], k[r]
        for x in range(nf):
            out[x] = c[x] * kc
    else:
        for x in range(nf):
            out[x] = np.float32(0.0)
    t = 1
    while t + 2 <= r:
        a0, b0, k0 = ring[_refl(y + t, h) % n], ring[_refl(y - t, h) % n], k[r + t]
        a1, b1, k1 = ring[_refl(y + t + 1, h) % n], ring[_refl(y - t - 1, h) % n], k[r + t + 1]
        a2, b2, k2 = ring[_refl(y + t + 2, h) % n], ring[_refl(y - t - 2, h) % n], k[r + t + 2]
        if sym:
            for x in range(nf):
                s = (a0[x] + b0[x]) * k0 + out[x]
                s = (a1[x] + b1[x]) * k1 + s
                out[x] = (a2[x] + b2[x]) * k2 + s
        else:
            for x in range(nf):
                s = (a0[x] - b0[x]) * k0 + out[x]
                s = (a1[x] - b1[x]) * k1 + s
                out[x] = (a2[x] - b2[x]) * k2 + s
        t += 3
    while t <= r:
        a0, b0, k0 = ring[_refl(y + t, h) % n], ring[_refl(y - t, h) % n], k[r + t]
        if sym:
            for x in range(nf):
                out[x] = (a0[x] + b0[x]) * k0 + out[x]
        else:
            for x in range(nf):
                out[x] = (a0[x] - b0[x]) * k0 + out[x]
        t += 1


@njit(cache=True, nogil=True)
def _col_fir_plain(ring, k, y, h, sym, out, x0):  # pragma: no cover - compiled
    """:func:`_col_fir` for ``x >= x0`` with separately rounded multiply and add (OpenCV's scalar tail)."""
    n, w = k.size, out.size
    r = n // 2
    if sym:
        c, kc = ring[y % n], k[r]
        for x in range(x0, w):
            out[x] = c[x] * kc
    else:
        for x in range(x0, w):
            out[x] = np.float32(0.0)
    for t in range(1, r + 1):
        a, b, kt = ring[_refl(y + t, h) % n], ring[_refl(y - t, h) % n], k[r + t]
        if sym:
            for x in range(x0, w):
                out[x] = out[x] + (a[x] + b[x]) * kt
        else:
            for x in range(x0, w):
                out[x] = out[x] + (a[x] - b[x]) * kt


@njit(cache=True, nogil=True)
def _minmax(row, lo, hi):  # pragma: no cover - compiled
    """Per-column running min/max: element-wise, so it vectorises (a scalar reduction does not)."""
    for x in range(row.size):
        v = row[x]
        lo[x] = v if v < lo[x] else lo[x]
        hi[x] = v if v > hi[x] else hi[x]


@njit(cache=True, nogil=True)
def _sobel_hv(hv, kd, ks):  # pragma: no cover - compiled
    """x-derivative of channel 0 and y-derivative of channel 1 (cv2.Sobel, reflect-101 border), min/max.

    Needs ``w % 4 == 0`` (no scalar tail in OpenCV's row pass) and ``h, w > ksize // 2``.
    """
    h, w, _ = hv.shape
    n = kd.size
    r = n // 2
    nf = w - w % 8
    sh = np.empty((h, w), np.float32)
    sv = np.empty((h, w), np.float32)
    ring_h = np.empty((n, w), np.float32)
    ring_v = np.empty((n, w), np.float32)
    bh = np.empty(w + 2 * r, np.float32)
    bv = np.empty(w + 2 * r, np.float32)
    flat = hv.reshape(h, 2 * w)
    done = 0
    for y in range(h):
        while done <= min(h - 1, y + r):
            src = flat[done]  # a 1-D row de-interleaves faster than a (w, 2) view
            for x in range(w):
                bh[x + r] = src[2 * x]
                bv[x + r] = src[2 * x + 1]
            for j in range(r):
                bh[r - 1 - j] = bh[r + 1 + j]
                bv[r - 1 - j] = bv[r + 1 + j]
                bh[w + r + j] = bh[w + r - 2 - j]
                bv[w + r + j] = bv[w + r - 2 - j]
            _row_fir(bh, kd, ring_h[done % n])
            _row_fir(bv, ks, ring_v[done % n])
            done += 1
        oh, ov = sh[y], sv[y]
        _col_fir(ring_h, ks, y, h, True, oh, nf)
        _col_fir(ring_v, kd, y, h, False, ov, nf)
        if nf < w:
            _col_fir_plain(ring_h, ks, y, h, True, oh, nf)
            _col_fir_plain(ring_v, kd, y, h, False, ov, nf)
        if y == 0:
            hlo, hhi, vlo, vhi = oh.copy(), oh.copy(), ov.copy(), ov.copy()
        _minmax(oh, hlo, hhi)
        _minmax(ov, vlo, vhi)
    return sh, sv, hlo.min(), hhi.max(), vlo.min(), vhi.max()


_SOBEL_OK: dict[int, bool] = {}  # ksize -> compiled Sobel verified bit-equal to cv2.Sobel here


def _sobel_cv2(hv: np.ndarray, ksize: int) -> tuple[np.ndarray, np.ndarray, float, float, float, float]:
    sh = cv2.Sobel(cv2.extractChannel(hv, 0), cv2.CV_32F, 1, 0, ksize=ksize)
    hmin, hmax = cv2.minMaxLoc(sh)[:2]  # while sh is still in cache
    sv = cv2.Sobel(cv2.extractChannel(hv, 1), cv2.CV_32F, 0, 1, ksize=ksize)
    vmin, vmax = cv2.minMaxLoc(sv)[:2]
    return sh, sv, hmin, hmax, vmin, vmax


def _sobel_pair(hv: np.ndarray, ksize: int) -> tuple[np.ndarray, np.ndarray, float, float, float, float]:
    """Stage 2: (Sobel-x of channel 0, Sobel-y of channel 1, their min and max), as cv2.Sobel gives.

    The compiled path is used where it is known to give OpenCV's bits: widths that are a multiple
    of 4, images larger than the kernel radius, and kernel sizes >= 7 that passed a one-off check.
    """
    h, w = hv.shape[:2]
    r = ksize // 2
    if ksize < 7 or w % 4 or min(h, w) <= r or not _sobel_verified(ksize):
        return _sobel_cv2(hv, ksize)
    kd, ks = (k.ravel().astype(np.float32) for k in cv2.getDerivKernels(1, 0, ksize, normalize=False))
    sh, sv, hmin, hmax, vmin, vmax = _sobel_hv(hv, kd, ks)
    return sh, sv, float(hmin), float(hmax), float(vmin), float(vmax)


def _sobel_verified(ksize: int) -> bool:
    """Compare the compiled Sobel with cv2.Sobel once per kernel size (random and step-like maps)."""
    if ksize not in _SOBEL_OK:
        rng = np.random.default_rng(ksize)
        h, w = 2 * ksize + 3, 8 * (ksize // 16 + 2) + 4  # w % 8 == 4: the scalar tail is checked too
        noise = rng.uniform(-1, 1, (h, w, 2)).astype(np.float32)
        ok = True
        for hv in (noise, np.clip(np.sign(noise) + 0.05 * noise[::-1], -1, 1).astype(np.float32)):
            hv = np.ascontiguousarray(hv)
            kd, ks = (k.ravel().astype(np.float32) for k in cv2.getDerivKernels(1, 0, ksize, normalize=False))
            got = _sobel_hv(hv, kd, ks)
            ref = _sobel_cv2(hv, ksize)
            ok = ok and all(np.array_equal(a, b) for a, b in zip(got[:2], ref[:2], strict=True))
            ok = ok and all(float(a) == b for a, b in zip(got[2:], ref[2:], strict=True))
        _SOBEL_OK[ksize] = ok
    return _SOBEL_OK[ksize]


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
) -> np.ndarray:
    """Instance map (int32, ids 1..K consecutive, 0 = background) from NP and HV maps.

    Parameters are in pixels; get them from ``HoVerNetPostproc.pixels(mpp)`` (the
    defaults equal ``HoVerNetPostproc().pixels(0.93)``); an unknown key is a TypeError
    naming it. Stage timings: :func:`hovercrypt.postproc.profile.timed_instances_from_maps`.
    """
    return staged_instances(
        np_prob, hv, _no_lap, np_thresh, min_object_area, sobel_ksize, marker_thresh,
        marker_open_radius, min_marker_area, blur_ksize, watershed_levels,
    )  # fmt: skip


def _no_lap(stage: str) -> None:
    """The stage callback of a normal run: nothing to record."""


def staged_instances(
    np_prob: np.ndarray,
    hv: np.ndarray,
    lap: Callable[[str], None],
    np_thresh: float,
    min_object_area: int,
    sobel_ksize: int,
    marker_thresh: float,
    marker_open_radius: int,
    min_marker_area: int,
    blur_ksize: int,
    watershed_levels: int,
) -> np.ndarray:
    """:func:`instances_from_maps` with ``lap(stage)`` called at the end of each stage
    (``threshold``, ``sobel``, ``energy``, ``markers``, ``watershed``), for profiling."""
    np_prob, hv = _check_maps(np_prob, hv)
    if sobel_ksize % 2 == 0 or not 1 <= sobel_ksize <= 31:
        raise ValueError(f"sobel_ksize must be odd and in 1..31, got {sobel_ksize}")

    # the float32 threshold compares like NumPy's; small pieces are dropped while painting the labels
    comp, area = components_where(np_prob, np.float32(np_thresh), max(1, int(min_object_area)))
    keep = np.ones(len(area), bool)
    keep[0] = False
    lap("threshold")
    if len(area) == 1:
        return np.zeros(np_prob.shape, np.int32)

    sh, sv, hmin, hmax, vmin, vmax = _sobel_pair(np.ascontiguousarray(hv), sobel_ksize)
    lap("sobel")

    energy, marker = _energy_and_markers(
        sh, sv, comp, hmin, hmax - hmin, vmin, vmax - vmin, float(marker_thresh)
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


def hovernet_instances(maps: Mapping[str, np.ndarray], params: dict[str, Any]) -> np.ndarray:
    """HoVer-Net's registry hook: ``np`` (H, W, 1) and ``hv`` (H, W, 2) maps -> instances."""
    missing = [k for k in ("np", "hv") if k not in maps]
    if missing:
        raise ValueError(f"hovernet maps lack {missing}; got {sorted(maps)}")
    np_map = np.asarray(maps["np"])
    np_prob = np_map[..., 0] if np_map.ndim == 3 else np_map
    return instances_from_maps(np_prob, maps["hv"], **params)


def maps_to_instances(maps: Mapping[str, np.ndarray], arch: str, params: dict[str, Any]) -> np.ndarray:
    """Instances from the maps of the model family ``arch`` (``params``: its ``settings.pixels(mpp)``).

    The family's post-processing comes from the registry (HoVer-Net: ``np`` + ``hv``; UNet: ``seg``).
    """
    from hovercrypt.models.registry import get_family

    return get_family(arch, "arch").to_instances(maps, params)
