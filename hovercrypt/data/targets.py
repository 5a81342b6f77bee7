"""Training targets: HoVer-Net NP / HV / NC maps and the UNet segmentation target.

The HV map gives, for every instance pixel, its horizontal and vertical
offset from the instance's centre of mass, each side of the centre scaled to
[-1, 1] separately. It is computed in two linear passes over the pixels (sums
and bounding extents per instance, then the offsets), never with one
whole-image mask per instance, because the dataset recomputes it for every
augmented patch.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from numba import njit
from scipy import ndimage

#: instance ids up to this value index the per-instance tables directly;
#: larger (sparse) ids are compacted with ``np.unique`` first.
_DIRECT_MAX_ID = 1 << 22


@njit(cache=True)
def _hv_maps_nb(inst: np.ndarray, n_ids: int) -> np.ndarray:
    h, w = inst.shape
    cnt = np.zeros(n_ids, np.float64)
    sx = np.zeros(n_ids, np.float64)
    sy = np.zeros(n_ids, np.float64)
    x0 = np.full(n_ids, w, np.int64)
    x1 = np.full(n_ids, -1, np.int64)
    y0 = np.full(n_ids, h, np.int64)
    y1 = np.full(n_ids, -1, np.int64)
    # pass 1: per-instance sums (centre of mass) and extents, one row run at a
    # time (a run of equal ids adds an arithmetic series and updates extents once)
    for y in range(h):
        x = 0
        while x < w:
            k = inst[y, x]
            xs = x
            x += 1
            while x < w and inst[y, x] == k:
                x += 1
            if k > 0:
                n = x - xs
                cnt[k] += n
                sx[k] += 0.5 * n * (xs + x - 1)
                sy[k] += n * y
                if xs < x0[k]:
                    x0[k] = xs
                if x - 1 > x1[k]:
                    x1[k] = x - 1
                if y < y0[k]:
                    y0[k] = y
                if y > y1[k]:
                    y1[k] = y
    # per-instance centre and the scale of each side; the extreme pixel on a
    # side is the bounding-box edge, so the side maxima need no extra pass
    cx = np.zeros(n_ids, np.float64)
    cy = np.zeros(n_ids, np.float64)
    sxn = np.zeros(n_ids, np.float64)
    sxp = np.zeros(n_ids, np.float64)
    syn = np.zeros(n_ids, np.float64)
    syp = np.zeros(n_ids, np.float64)
    for k in range(1, n_ids):
        if cnt[k] > 0:
            cx[k] = sx[k] / cnt[k]
            cy[k] = sy[k] / cnt[k]
            d = cx[k] - x0[k]
            sxn[k] = 1.0 / d if d > 1e-9 else 0.0
            d = x1[k] - cx[k]
            sxp[k] = 1.0 / d if d > 1e-9 else 0.0
            d = cy[k] - y0[k]
            syn[k] = 1.0 / d if d > 1e-9 else 0.0
            d = y1[k] - cy[k]
            syp[k] = 1.0 / d if d > 1e-9 else 0.0
    out = np.zeros((h, w, 2), np.float32)
    # pass 2: offsets, each side scaled by its own maximum
    for y in range(h):
        x = 0
        while x < w:
            k = inst[y, x]
            if k == 0:
                x += 1
                continue
            dy = y - cy[k]
            vy = np.float32(dy * (syn[k] if dy < 0 else syp[k]))
            c, sn, sp = cx[k], sxn[k], sxp[k]
            while x < w and inst[y, x] == k:
                dx = x - c
                out[y, x, 0] = dx * (sn if dx < 0 else sp)
                out[y, x, 1] = vy
                x += 1
    return out


def compact_ids(inst: np.ndarray) -> tuple[np.ndarray, int]:
    """Return a label map whose ids index small tables, and the table size (max id + 1).

    Dense small ids are used as they are (no copy beyond int32); sparse huge
    ids are renumbered 1..k, keeping 0 as background.
    """
    inst = np.ascontiguousarray(inst)
    if inst.ndim != 2:
        raise ValueError(f"instance map must be 2-D, got shape {inst.shape}")
    if inst.size == 0:
        return inst.astype(np.int32), 1
    if inst.dtype == np.bool_:
        inst = inst.astype(np.int32)
    if not np.issubdtype(inst.dtype, np.integer):
        raise ValueError(f"instance map must be integer, got {inst.dtype}")
    lo, hi = int(inst.min()), int(inst.max())
    if lo < 0:
        raise ValueError("instance map has negative ids")
    if hi <= _DIRECT_MAX_ID:
        return inst.astype(np.int32, copy=False), hi + 1
    uniq, inv = np.unique(inst, return_inverse=True)
    if uniq[0] != 0:  # no background: shift so that ids start at 1
        inv = inv + 1
    inv = inv.reshape(inst.shape).astype(np.int32)
    return inv, int(inv.max()) + 1


def hv_maps(inst: np.ndarray) -> np.ndarray:
    """Horizontal/vertical offset maps float32 (H, W, 2): channel 0 = x, channel 1 = y.

    Offsets are measured from each instance's (sub-pixel) centre of mass;
    negative and positive sides are scaled separately by their largest
    magnitude, so every instance spans [-1, 1] on both axes regardless of its
    size. Background is 0. Ids may be any non-negative integers.
    """
    ids, n = compact_ids(inst)
    return _hv_maps_nb(ids, n)


def center_crop(arr: np.ndarray, size: int | tuple[int, int]) -> np.ndarray:
    """Crop the first two (spatial) axes of an (H, W) or (H, W, C) array to ``size`` around the centre.

    Uses the same convention as the network (offset ``(H - h) // 2``) so that
    targets line up with the output window.
    """
    h, w = (size, size) if isinstance(size, int | np.integer) else size
    if arr.ndim < 2:
        raise ValueError(f"center_crop needs an array with >= 2 dims, got shape {arr.shape}")
    H, W = arr.shape[:2]
    if h > H or w > W:
        raise ValueError(f"cannot crop {(H, W)} to larger size {(h, w)}")
    y0, x0 = (H - h) // 2, (W - w) // 2
    return arr[y0 : y0 + h, x0 : x0 + w]


def np_target(inst: np.ndarray, size: int | None = None) -> np.ndarray:
    """Foreground (nucleus-pixel / crypt) target, uint8 0/1, optionally centre-cropped."""
    fg = (inst > 0).astype(np.uint8)
    return center_crop(fg, size) if size is not None else fg


def tp_target(type_map: np.ndarray, inst: np.ndarray, size: int | None = None) -> np.ndarray:
    """Type target int32: the type id on instance pixels, 0 on background (and untyped pixels)."""
    tp = np.where(inst > 0, type_map, 0).astype(np.int32)
    return center_crop(tp, size) if size is not None else tp


def _disk(radius: int) -> np.ndarray:
    r = int(radius)
    yy, xx = np.mgrid[-r : r + 1, -r : r + 1]
    return (xx * xx + yy * yy) <= r * r


def seg_target(inst: np.ndarray, n_classes: int = 2, boundary_px: int = 2) -> np.ndarray:
    """UNet target int64: 0 background, 1 crypt, 2 crypt boundary (only when ``n_classes == 3``).

    A boundary pixel is an instance pixel with background or another instance
    within ``boundary_px`` (Euclidean disk). The image border does not count
    as background: a crypt cut by the patch edge has no real boundary there.
    Touching crypts get a boundary between them, which is what lets the
    3-class UNet separate them.
    """
    if n_classes not in (2, 3):
        raise ValueError(f"n_classes must be 2 or 3, got {n_classes}")
    fg = inst > 0
    seg = fg.astype(np.int64)
    if n_classes == 2 or boundary_px <= 0 or not fg.any():
        return seg
    ids, _ = compact_ids(inst)
    fp = _disk(boundary_px)
    lo = ndimage.grey_erosion(ids, footprint=fp, mode="nearest")
    hi = ndimage.grey_dilation(ids, footprint=fp, mode="nearest")
    boundary = fg & ((lo != ids) | (hi != ids))
    seg[boundary] = 2
    return seg


def hovernet_targets(inst: np.ndarray, out_size: int, cfg: Any) -> dict[str, np.ndarray]:
    """HoVer-Net's own target (registry hook): ``hv`` float32 (2, out, out).

    HV is computed on the whole augmented patch, then cropped: offsets are measured to the
    true centre of instances cut by the output window.
    """
    hv = center_crop(hv_maps(inst), out_size)
    return {"hv": np.ascontiguousarray(hv.transpose(2, 0, 1))}


def semantic_targets(inst: np.ndarray, out_size: int, cfg: Any) -> dict[str, np.ndarray]:
    """The UNet's (and other semantic families') target (registry hook): ``seg`` int64 (out, out).

    Classes follow ``cfg.model.unet_classes`` and the boundary width ``cfg.data.seg_boundary_px``;
    a margin of that width around the output window decides boundaries at its edge correctly.
    """
    r = cfg.data.seg_boundary_px
    crop = center_crop(inst, min(inst.shape[0], out_size + 2 * r))
    return {"seg": np.ascontiguousarray(center_crop(seg_target(crop, cfg.model.unet_classes, r), out_size))}
