"""Marker-controlled watershed as a priority flood, compiled with numba.

The classic implementation (``skimage.segmentation.watershed``) keeps a binary
heap of ``(value, age)`` and spends most of HoVer-Net's post-processing time
there. Here the energy inside the mask is quantised to ``nlev`` integer levels
and the heap becomes a *bucket queue*: one FIFO list per level, so push and pop
are O(1). The flooding rule is the same as scikit-image's: a pixel is labelled
when it is first reached from a labelled neighbour (4-connectivity), and it is
expanded in order of (level, arrival). A neighbour lower than the current level
is pushed into its own (lower) bucket and the cursor moves down, exactly as a
heap would pop it next. The only difference from the float heap is that values
falling into the same level are taken first-come-first-served, which matters
only on near-ties; with the default 4096 levels the result matches
scikit-image almost pixel for pixel (tests check this).

Its plain-Python twin with a float heap (exactly the heap rule) lives in
:mod:`hovercrypt.testing.reference`, for tests on tiny arrays.
"""

from __future__ import annotations

import numpy as np
from numba import njit

from hovercrypt.postproc.morphology import components

#: default number of quantisation levels (must stay below 65533).
DEFAULT_LEVELS = 4096


@njit(cache=True, inline="always")
def _reflect(i, n):  # pragma: no cover - compiled
    """OpenCV's BORDER_REFLECT_101 index (``gfedcb|abcdefgh|gfedcba``)."""
    if n == 1:
        return 0
    while i < 0 or i >= n:
        if i < 0:
            i = -i
        if i >= n:
            i = 2 * n - 2 - i
    return i


@njit(cache=True, inline="always")
def _level(energy, kernel, y, x, lo, scale, top):  # pragma: no cover - compiled
    """Quantised level of the separably smoothed energy at (y, x).

    The smoothing is evaluated only where a level is needed (unlabelled mask
    pixels and seeds), instead of blurring the whole map first.
    """
    h, w = energy.shape
    r = kernel.size // 2
    v = 0.0
    if r == 0:
        v = energy[y, x] * kernel[0]
    elif r == 1 and 1 <= y < h - 1 and 1 <= x < w - 1:  # the usual 3x3 case, unrolled
        k0, k1, k2 = kernel[0], kernel[1], kernel[2]
        a = k0 * energy[y - 1, x - 1] + k1 * energy[y - 1, x] + k2 * energy[y - 1, x + 1]
        b = k0 * energy[y, x - 1] + k1 * energy[y, x] + k2 * energy[y, x + 1]
        c = k0 * energy[y + 1, x - 1] + k1 * energy[y + 1, x] + k2 * energy[y + 1, x + 1]
        v = k0 * a + k1 * b + k2 * c
    elif r <= y < h - r and r <= x < w - r:
        for i in range(kernel.size):
            row = 0.0
            for j in range(kernel.size):
                row += kernel[j] * energy[y + i - r, x + j - r]
            v += kernel[i] * row
    else:
        for i in range(kernel.size):
            yy = _reflect(y + i - r, h)
            row = 0.0
            for j in range(kernel.size):
                row += kernel[j] * energy[yy, _reflect(x + j - r, w)]
            v += kernel[i] * row
    q = int((v - lo) * scale + 0.5)
    if q < 0:
        return 0
    if q > top:
        return top
    return q


# level codes above the real levels (0 .. nlev-1) in the padded level image
_SEEDED = 65533  # marker pixel already queued as a seed
_MARKER = 65534  # marker pixel (labelled), not queued
_OUTSIDE = 65535  # outside the mask, or already labelled by the flood


@njit(cache=True, nogil=True)
def _prepare(energy, kernel, comp, keep, markers, lut, lo, hi, nlev, direct):  # pragma: no cover - compiled
    """Level image, marker labels and seeds for the flood.

    The mask is ``keep[comp]`` (component labels and a keep flag per label),
    so removing small components needs no pass of its own. Levels live in a
    1-px padded uint16 image whose frame is "outside", so the flood needs no
    bounds checks; labels go straight into the unpadded result. ``energy`` is
    smoothed with the separable ``kernel`` (OpenCV border rule) only where a
    level is needed. Marker labels are mapped through ``lut`` (marker
    component -> instance id, 0 = drop) and kept only inside the mask.

    Seeds are the marker pixels next to an unlabelled mask pixel: the other
    marker pixels would do nothing when popped, so they are never queued and
    never need a level. They are found from the (usually few) unlabelled
    pixels, in raster order of those pixels. ``direct`` says that ``keep`` is
    true for every label but 0 and ``lut`` is the identity, so both lookups
    are skipped.
    """
    h, w = energy.shape
    w2 = w + 2
    n = (h + 2) * w2
    lev = np.empty(n, np.uint16)
    lev[:w2] = _OUTSIDE
    lev[n - w2 :] = _OUTSIDE
    res = np.zeros((h, w), np.int32)
    ty = np.empty(h * w, np.int32)
    tx = np.empty(h * w, np.int32)
    nt = 0
    for y in range(h):
        base = (y + 1) * w2 + 1
        lev[base - 1] = _OUTSIDE
        lev[base + w] = _OUTSIDE
        crow, mrow, rrow = comp[y], markers[y], res[y]
        if direct:  # mask = comp != 0, markers are final ids: no lookups, selects that vectorise
            lrow = lev[base : base + w]
            for x in range(w):
                c, m = crow[x], mrow[x]
                rrow[x] = m if c != 0 else 0
                lrow[x] = _OUTSIDE if c == 0 else (_MARKER if m > 0 else 0)
            for x in range(w):
                if lrow[x] == 0:
                    ty[nt] = y
                    tx[nt] = x
                    nt += 1
            continue
        for x in range(w):
            if not keep[crow[x]]:
                lev[base + x] = _OUTSIDE
            else:
                m = mrow[x]
                lab = lut[m] if m > 0 else 0
                if lab > 0:
                    rrow[x] = lab
                    lev[base + x] = _MARKER
                else:
                    lev[base + x] = 0  # set below: keeping the smoothing out of this loop keeps it fast
                    ty[nt] = y
                    tx[nt] = x
                    nt += 1
    scale = (nlev - 1) / (hi - lo) if hi > lo else 0.0
    top = nlev - 1
    for i in range(nt):
        lev[(ty[i] + 1) * w2 + tx[i] + 1] = _level(energy, kernel, ty[i], tx[i], lo, scale, top)
    seeds = np.empty(4 * nt, np.int64)  # padded index
    seed_u = np.empty(4 * nt, np.int64)  # index into the unpadded result
    seed_lev = np.empty(4 * nt, np.int32)
    seed_comp = np.empty(4 * nt, np.int32)
    ns = 0
    for i in range(nt):
        y, x = ty[i], tx[i]
        c = comp[y, x]
        for k in range(4):
            yy, xx = y, x
            if k == 0:
                yy -= 1
            elif k == 1:
                xx -= 1
            elif k == 2:
                xx += 1
            else:
                yy += 1
            q = (yy + 1) * w2 + xx + 1
            if lev[q] == _MARKER:
                lev[q] = _SEEDED
                seeds[ns] = q
                seed_u[ns] = yy * w + xx
                seed_lev[ns] = _level(energy, kernel, yy, xx, lo, scale, top)
                seed_comp[ns] = c
                ns += 1
    return lev, res, seeds[:ns], seed_u[:ns], seed_lev[:ns], seed_comp[:ns]


@njit(cache=True, nogil=True)
def _flood(lev, res, w2, nlev, seeds, seed_u, seed_lev, seed_comp, ncomp):  # pragma: no cover - compiled
    """Grow the labels of ``res`` (flat, unpadded) over the levels ``lev`` (flat, padded) in place.

    Components of the mask cannot exchange labels, so they are flooded one at
    a time: the queue then only touches a small, cache-resident part of the
    image (about 2x faster than one global queue on 1000x1000 maps), and the
    result is the same. Seeds are grouped by component with a counting sort
    that keeps their order. A queued pixel carries its unpadded index, so the
    result needs no copy out of a padded buffer.
    """
    w = w2 - 2
    start = np.zeros(ncomp + 1, np.int64)
    for i in range(seeds.size):
        start[seed_comp[i] + 1] += 1
    for c in range(ncomp):
        start[c + 1] += start[c]
    order = np.empty(seeds.size, np.int64)
    fill = start.copy()
    for i in range(seeds.size):
        c = seed_comp[i]
        order[fill[c]] = i
        fill[c] += 1

    nxt = np.empty(lev.size, np.int64)
    uidx = np.empty(lev.size, np.int64)
    head = np.full(nlev, -1, np.int64)
    tail = np.full(nlev, -1, np.int64)
    for c in range(ncomp):
        if start[c + 1] == start[c]:
            continue
        count = 0
        cur = nlev
        for i in range(start[c], start[c + 1]):
            j = order[i]
            p = seeds[j]
            lv = seed_lev[j]
            uidx[p] = seed_u[j]
            nxt[p] = -1
            if tail[lv] == -1:
                head[lv] = p
            else:
                nxt[tail[lv]] = p
            tail[lv] = p
            count += 1
            if lv < cur:
                cur = lv
        while count > 0:
            while head[cur] == -1:
                cur += 1
            p = head[cur]
            head[cur] = nxt[p]
            if head[cur] == -1:
                tail[cur] = -1
            count -= 1
            u = uidx[p]
            lab = res[u]
            for k in range(4):
                if k == 0:
                    q, uq = p - w2, u - w
                elif k == 1:
                    q, uq = p - 1, u - 1
                elif k == 2:
                    q, uq = p + 1, u + 1
                else:
                    q, uq = p + w2, u + w
                lv = lev[q]
                if lv < _SEEDED:
                    lev[q] = _OUTSIDE
                    res[uq] = lab
                    uidx[q] = uq
                    nxt[q] = -1
                    if tail[lv] == -1:
                        head[lv] = q
                    else:
                        nxt[tail[lv]] = q
                    tail[lv] = q
                    count += 1
                    if lv < cur:
                        cur = lv
    return res


def _labels(a: np.ndarray) -> np.ndarray:
    """Label images go to the compiled code as uint16 or int32 (one compiled variant each)."""
    a = np.asarray(a)
    if a.dtype == np.uint16 or a.dtype == np.int32:
        return np.ascontiguousarray(a)
    return np.ascontiguousarray(a, np.int32)


def flood_prepared(
    energy: np.ndarray,
    comp: np.ndarray,
    keep: np.ndarray,
    markers: np.ndarray,
    lut: np.ndarray,
    value_range: tuple[float, float],
    nlev: int = DEFAULT_LEVELS,
    kernel: np.ndarray | None = None,
) -> np.ndarray:
    """Watershed over the mask ``keep[comp]``; the fast path used by the pipeline.

    ``comp`` labels the 4-connected components of the candidate foreground and
    ``keep[c]`` says whether component ``c`` belongs to the mask (label 0 must
    be False). ``markers`` are marker-component ids and ``lut[id]`` the
    instance id grown from it (0 drops the marker), so small-object removal,
    small-marker removal and relabelling cost no extra pass over the image.
    ``kernel`` (1-D, odd length, e.g. ``cv2.getGaussianKernel``) smooths the
    energy separably first, as ``cv2.sepFilter2D`` would; ``value_range``
    bounds the smoothed energy for quantisation.
    """
    if not 2 <= nlev < _SEEDED:
        raise ValueError(f"nlev must be in [2, {_SEEDED}), got {nlev}")
    h, w = energy.shape
    keep = np.ascontiguousarray(keep, np.bool_)
    if keep.size and keep[0]:
        raise ValueError("keep[0] must be False: label 0 is the background")
    kernel = np.ones(1, np.float64) if kernel is None else np.asarray(kernel, np.float64).ravel()
    if kernel.size % 2 == 0:
        raise ValueError(f"kernel length must be odd, got {kernel.size}")
    lut = np.ascontiguousarray(lut, np.int32)
    direct = bool(keep[1:].all()) and np.array_equal(lut, np.arange(lut.size))
    lev, res, seeds, seed_u, seed_lev, seed_comp = _prepare(
        np.ascontiguousarray(energy, np.float32),
        kernel,
        _labels(comp),
        keep,
        _labels(markers),
        lut,
        float(value_range[0]),
        float(value_range[1]),
        nlev,
        direct,
    )
    _flood(lev, res.reshape(-1), w + 2, nlev, seeds, seed_u, seed_lev, seed_comp, keep.size)
    return res


def watershed(
    energy: np.ndarray,
    markers: np.ndarray,
    mask: np.ndarray | None = None,
    nlev: int = DEFAULT_LEVELS,
) -> np.ndarray:
    """Marker-controlled watershed of a 2-D ``energy`` (low floods first), 4-connected.

    ``markers`` is a non-negative int label image (0 = no marker); labels keep
    their values. Pixels outside ``mask`` stay 0, and so do mask regions that
    no marker reaches. ``nlev`` is the number of energy quantisation levels.
    """
    energy = np.asarray(energy, np.float32)
    markers = np.asarray(markers)
    if energy.ndim != 2 or markers.shape != energy.shape:
        raise ValueError(f"energy and markers must be 2-D of one shape, got {energy.shape}, {markers.shape}")
    if not np.issubdtype(markers.dtype, np.integer) or markers.min(initial=0) < 0:
        raise ValueError("markers must be a non-negative integer label image")
    if mask is None:
        mask = np.ones(energy.shape, bool)
    else:
        mask = np.asarray(mask)
        if mask.shape != energy.shape:
            raise ValueError(f"mask shape {mask.shape} != energy shape {energy.shape}")
        mask = mask != 0
    if not mask.any():
        return np.zeros(energy.shape, np.int32)
    comp, area = components(mask)
    keep = np.ones(len(area), bool)
    keep[0] = False
    vals = energy[mask]
    top = int(markers.max()) if markers.size else 0
    if top > np.iinfo(np.int32).max:
        raise ValueError(f"marker labels must fit in int32, got {top}")
    if top <= 4 * markers.size + 1024:
        ids, lut = markers.astype(np.int32), np.arange(top + 1, dtype=np.int32)
    else:  # few, huge label values: compact them, the lookup table restores them
        lut, inv = np.unique(markers, return_inverse=True)
        ids, lut = inv.reshape(markers.shape).astype(np.int32), lut.astype(np.int32)
        if lut[0] != 0:
            ids, lut = ids + 1, np.concatenate([[0], lut]).astype(np.int32)
    vrange = (float(vals.min()), float(vals.max()))
    return flood_prepared(energy, comp, keep, ids, lut, vrange, nlev)
