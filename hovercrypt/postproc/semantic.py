"""Crypt instances from the UNet baseline's semantic probability maps.

A semantic map only says *crypt or not*; touching crypts come out as one blob.
The two UNet variants separate them differently:

* 2 classes (background / crypt): connected components of the crypt mask, each
  split by a marker watershed on its distance transform. Every distance peak
  (at least ``unet_min_peak_distance`` px apart) seeds a region; neighbours are
  merged back unless the neck between them is narrow relative to both
  (``unet_split_ratio``), so one lobed or elongated crypt is not cut up.
* 3 classes (background / crypt / boundary): the network marks the rims
  itself. Seeds are connected components of the crypt *interior* (boundary
  removed); they are grown back over crypt + boundary, each boundary pixel
  joining its nearest seed.

Parameters arrive as ``UNetPostproc.pixels(mpp)`` (keys prefixed ``unet_`` plus
``min_object_area``); any other key is a TypeError naming it. Other semantic
families reuse :func:`semantic_instances` through the model registry.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import cv2
import numpy as np
from scipy import ndimage as ndi
from skimage.feature import peak_local_max

from hovercrypt.postproc.watershed import watershed

_EIGHT = np.ones((3, 3), bool)


def instances_from_semantic(
    seg_prob: np.ndarray,
    *,
    unet_fg_thresh: float = 0.5,
    unet_min_peak_distance: int = 20,
    unet_split_ratio: float = 0.4,
    unet_min_seed_area: int = 30,
    unet_max_hole_area: int = 2000,
    min_object_area: int = 0,
) -> np.ndarray:
    """seg_prob: float32 (H, W, C) softmax, C = 2 or 3 -> int32 (H, W) instance ids 1..K.

    ``unet_fg_thresh``: a pixel is crypt when P(crypt) (+ P(boundary) for 3
    classes) exceeds it. ``unet_min_peak_distance <= 0`` turns splitting off
    (plain connected components, the classic contour-counting baseline).
    """
    prob = np.asarray(seg_prob)
    if prob.ndim != 3 or prob.shape[2] not in (2, 3):
        raise ValueError(f"seg_prob must be (H, W, 2|3) class probabilities, got shape {prob.shape}")
    if not 0.0 <= unet_fg_thresh < 1.0:
        raise ValueError(f"unet_fg_thresh must be in [0, 1), got {unet_fg_thresh}")
    prob = prob.astype(np.float32, copy=False)
    if prob.shape[2] == 2:
        fg = prob[..., 1] > unet_fg_thresh
        fg = fill_small_holes(fg, unet_max_hole_area)
        inst = split_touching(fg, int(unet_min_peak_distance), float(unet_split_ratio))
    else:
        fg = (prob[..., 1] + prob[..., 2]) > unet_fg_thresh
        fg = fill_small_holes(fg, unet_max_hole_area)
        interior = fg & (prob[..., 1] >= prob[..., 2]) & (prob[..., 1] >= prob[..., 0])
        inst = grow_seeds(fg, interior, int(unet_min_seed_area))
    return remove_small(inst, int(min_object_area))


def semantic_instances(maps: Mapping[str, np.ndarray], params: dict[str, Any]) -> np.ndarray:
    """The semantic families' registry hook: ``seg`` (H, W, C) class probabilities -> instances."""
    if "seg" not in maps:
        raise ValueError(f"semantic maps lack 'seg'; got {sorted(maps)}")
    return instances_from_semantic(maps["seg"], **params)


def fill_small_holes(fg: np.ndarray, max_area: int) -> np.ndarray:
    """Fill background holes of at most ``max_area`` px enclosed by foreground.

    A crypt lumen predicted as background would otherwise turn the distance
    transform into a ring with several peaks and cut the crypt in pieces.
    """
    if max_area <= 0 or not fg.any():
        return fg
    holes, n = ndi.label(~fg, structure=_EIGHT)  # 8-connected background: dual of 4-connected objects
    if n == 0:
        return fg
    sizes = np.bincount(holes.ravel(), minlength=n + 1)
    border = np.unique(np.concatenate([holes[0], holes[-1], holes[:, 0], holes[:, -1]]))
    fill = sizes <= max_area
    fill[0] = False
    fill[border] = False
    return fg | fill[holes]


def split_touching(fg: np.ndarray, min_peak_distance: int, split_ratio: float) -> np.ndarray:
    """Connected components of ``fg``, split by a distance-transform watershed.

    Every distance peak (at least ``min_peak_distance`` px apart) seeds a region;
    neighbouring regions are then merged back unless the neck between them is
    narrow: split only where ``saddle <= split_ratio * min(peak_a, peak_b)``.
    The test is relative, so it works for small crypts and large glands alike,
    and one lobed or elongated crypt (wide necks, bumpy ridge) stays whole.
    """
    comps, n = ndi.label(fg)  # 4-connected, like the watershed flood
    if n == 0 or min_peak_distance <= 0:
        return comps.astype(np.int32)
    dist = cv2.distanceTransform(fg.astype(np.uint8), cv2.DIST_L2, cv2.DIST_MASK_PRECISE)
    # light smoothing: pixel-staircase boundaries otherwise create spurious local maxima
    dist = cv2.GaussianBlur(dist, (0, 0), 1.0) * fg
    peaks = peak_local_max(dist, min_distance=min_peak_distance, labels=comps, exclude_border=False)
    markers = np.zeros(fg.shape, np.int32)
    markers[peaks[:, 0], peaks[:, 1]] = np.arange(1, len(peaks) + 1, dtype=np.int32)
    markers = _seed_unmarked(comps, markers)
    regions = watershed(-dist, markers, mask=fg)
    return merge_wide_necks(regions, dist, split_ratio)


def merge_wide_necks(regions: np.ndarray, dist: np.ndarray, ratio: float) -> np.ndarray:
    """Merge 4-adjacent regions whose saddle (highest pass on their border) exceeds ``ratio`` x lower peak.

    Pairs are taken from the most clearly "one object" (highest saddle / peak)
    down, with union-find, so a chain of bumps along one crypt collapses into it.
    """
    n = int(regions.max())
    if n < 2 or ratio >= 1.0:
        return regions.astype(np.int32)
    peak = np.zeros(n + 1, np.float64)
    for i, sl in enumerate(ndi.find_objects(regions), start=1):  # per box: cheaper than ndi.maximum
        if sl is not None:
            peak[i] = dist[sl][regions[sl] == i].max()
    keys, saddles = [], []
    for a, b, da, db in (
        (regions[:, :-1], regions[:, 1:], dist[:, :-1], dist[:, 1:]),
        (regions[:-1], regions[1:], dist[:-1], dist[1:]),
    ):
        m = (a != b) & (a > 0) & (b > 0)
        lo, hi = np.minimum(a[m], b[m]).astype(np.int64), np.maximum(a[m], b[m]).astype(np.int64)
        keys.append(lo * (n + 1) + hi)
        saddles.append(np.minimum(da[m], db[m]))
    key = np.concatenate(keys)
    if key.size == 0:
        return regions.astype(np.int32)
    sad = np.concatenate(saddles).astype(np.float64)
    order = np.argsort(key, kind="stable")
    key, sad = key[order], sad[order]
    starts = np.flatnonzero(np.r_[True, key[1:] != key[:-1]])
    pair, best = key[starts], np.maximum.reduceat(sad, starts)
    pa, pb = pair // (n + 1), pair % (n + 1)
    score = best / np.maximum(np.minimum(peak[pa], peak[pb]), 1e-6)
    parent = np.arange(n + 1)

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for k in np.argsort(-score, kind="stable"):
        ra, rb = find(int(pa[k])), find(int(pb[k]))
        if ra == rb:
            continue
        if best[k] > ratio * min(peak[ra], peak[rb]):
            parent[rb] = ra
            peak[ra] = max(peak[ra], peak[rb])
    roots = np.array([find(i) for i in range(n + 1)])
    return roots.astype(np.int32)[regions]


def grow_seeds(fg: np.ndarray, interior: np.ndarray, min_seed_area: int) -> np.ndarray:
    """3-class instances: interior components grown over the foreground, nearest seed wins."""
    seeds, n = ndi.label(interior & fg)
    if n and min_seed_area > 0:
        sizes = np.bincount(seeds.ravel(), minlength=n + 1)
        small = sizes < min_seed_area
        small[0] = False
        seeds[small[seeds]] = 0
    comps, _ = ndi.label(fg)  # 4-connected, like the watershed flood
    seeds = _seed_unmarked(comps, seeds.astype(np.int32))
    if not seeds.any():
        return seeds
    # elevation = distance to the nearest seed: boundary bands split half-way between crypts
    elevation = cv2.distanceTransform((seeds == 0).astype(np.uint8), cv2.DIST_L2, cv2.DIST_MASK_PRECISE)
    return watershed(elevation, seeds, mask=fg).astype(np.int32)


def _seed_unmarked(comps: np.ndarray, markers: np.ndarray) -> np.ndarray:
    """Give every foreground component without a marker one of its own (whole component).

    Such components (a small crypt predicted only as boundary, or too flat to
    have a significant peak) are still crypts and must not vanish.
    """
    n = int(comps.max())
    if n == 0:
        return markers
    has = np.zeros(n + 1, bool)
    has[comps[markers > 0]] = True
    missing = ~has
    missing[0] = False
    if missing.any():
        markers = markers.copy()
        start = int(markers.max())
        ids = np.zeros(n + 1, np.int32)
        ids[missing] = start + 1 + np.arange(int(missing.sum()), dtype=np.int32)
        sel = missing[comps]
        markers[sel] = ids[comps[sel]]
    return markers


def remove_small(inst: np.ndarray, min_area: int) -> np.ndarray:
    """Drop instances under ``min_area`` px and renumber the rest 1..K (int32)."""
    n = int(inst.max())
    if n == 0:
        return inst.astype(np.int32)
    sizes = np.bincount(inst.ravel(), minlength=n + 1)
    keep = sizes >= max(1, min_area)
    keep[0] = False
    lut = np.zeros(n + 1, np.int32)
    lut[keep] = np.arange(1, int(keep.sum()) + 1, dtype=np.int32)
    return lut[inst]
