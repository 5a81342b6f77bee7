"""Per-instance geometry and type from an instance map, in one pass over the image.

Building a full-image mask per instance costs O(N * H * W) and dominates on
slides with thousands of crypts. Here a single compiled scan collects, for all
instances at once, the area, the bounding box, the coordinate sums (centroid)
and, when type probabilities are given, the per-type vote counts and
probability sums. Only the contour and the shape measurements (perimeter,
moments, convex hull; :mod:`hovercrypt.postproc.morphometry`) need pixels
again, and they are taken on the instance's own bounding-box crop.
"""

from __future__ import annotations

from typing import Any

import cv2
import numpy as np
from numba import njit

from hovercrypt.postproc.morphometry import add_nearest_neighbours, crop_shape


@njit(cache=True, nogil=True)
def _scan(inst, nlab):  # pragma: no cover - compiled
    h, w = inst.shape
    area = np.zeros(nlab, np.int64)
    sx = np.zeros(nlab, np.float64)
    sy = np.zeros(nlab, np.float64)
    x0 = np.full(nlab, w, np.int64)
    y0 = np.full(nlab, h, np.int64)
    x1 = np.full(nlab, -1, np.int64)
    y1 = np.full(nlab, -1, np.int64)
    for y in range(h):
        for x in range(w):
            i = inst[y, x]
            if i > 0:
                area[i] += 1
                sx[i] += x
                sy[i] += y
                if x < x0[i]:
                    x0[i] = x
                if x > x1[i]:
                    x1[i] = x
                if y < y0[i]:
                    y0[i] = y
                if y > y1[i]:
                    y1[i] = y
    return area, sx, sy, x0, y0, x1, y1


@njit(cache=True, nogil=True)
def _scan_types(inst, prob, nlab):  # pragma: no cover - compiled
    """Per instance: votes for each argmax type and the sum of each type's probability."""
    h, w = inst.shape
    nt = prob.shape[2]
    votes = np.zeros((nlab, nt), np.int64)
    psum = np.zeros((nlab, nt), np.float64)
    for y in range(h):
        for x in range(w):
            i = inst[y, x]
            if i > 0:
                best = 0
                bp = prob[y, x, 0]
                psum[i, 0] += bp
                for t in range(1, nt):
                    p = prob[y, x, t]
                    psum[i, t] += p
                    if p > bp:
                        bp = p
                        best = t
                votes[i, best] += 1
    return votes, psum


def _outline_and_shape(crop: np.ndarray, ox: int, oy: int, area: int) -> tuple[list[list[int]], dict]:
    """Closed outer boundary of the largest piece of a binary crop (global (x, y)) and its shape.

    The contours are traced once and serve both the outline and the morphometry.
    """
    padded = cv2.copyMakeBorder(crop, 1, 1, 1, 1, cv2.BORDER_CONSTANT, value=0)
    found, _ = cv2.findContours(padded, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    if not found:
        return [], {}
    best = max(range(len(found)), key=lambda k: (cv2.contourArea(found[k]), len(found[k])))
    pts = found[best][:, 0, :] + np.array([ox - 1, oy - 1])
    pts = np.concatenate([pts, pts[:1]], axis=0)
    return pts.tolist(), crop_shape(padded, found, best, area)


def instance_info(inst_map: np.ndarray, type_prob: np.ndarray | None = None) -> dict[int, dict[str, Any]]:
    """Geometry and type of every instance in ``inst_map`` (ids need not be consecutive).

    Returns ``{id: {"bbox": [x0, y0, x1, y1] (x1, y1 exclusive), "centroid": [x, y],
    "contour": [[x, y], ...] closed, "area": int, "type": int, "type_prob": float | None,
    "shape": {...}}}``. ``shape`` holds the morphometry in pixels of this map
    (:mod:`hovercrypt.postproc.morphometry`: perimeter, axes, solidity, ...,
    ``nn_distance`` to the nearest other centroid of this map, None if alone).
    ``type`` is the most frequent per-pixel argmax type inside the instance,
    background (0) excluded from the vote; it is 0 only if every pixel votes
    background. ``type_prob`` is the mean probability of that type over the
    instance. Without ``type_prob`` the type is 0 and ``type_prob`` is None.
    """
    inst = np.asarray(inst_map)
    if inst.ndim != 2 or not np.issubdtype(inst.dtype, np.integer):
        raise ValueError(f"inst_map must be a 2-D integer array, got {inst.dtype} {inst.shape}")
    if type_prob is not None:
        type_prob = np.asarray(type_prob)
        if type_prob.ndim != 3 or type_prob.shape[:2] != inst.shape:
            raise ValueError(f"type_prob must be (H, W, T) matching {inst.shape}, got {type_prob.shape}")
    if inst.size == 0:
        return {}
    if int(inst.min()) < 0:
        raise ValueError("inst_map holds negative ids")
    top = int(inst.max())
    if top <= 0:
        return {}
    ids_of = None
    if top > 4 * inst.size + 1024:  # sparse huge ids: compact them first
        ids_of, compact = np.unique(inst, return_inverse=True)
        lab = compact.reshape(inst.shape).astype(np.int32)
        if ids_of[0] != 0:  # keep 0 as background
            ids_of = np.concatenate([[0], ids_of])
            lab += 1
    else:
        lab = np.ascontiguousarray(inst, np.int64 if inst.dtype.itemsize > 4 else np.int32)
    nlab = int(lab.max()) + 1
    area, sx, sy, x0, y0, x1, y1 = _scan(lab, nlab)
    votes = psum = None
    if type_prob is not None:
        votes, psum = _scan_types(lab, np.ascontiguousarray(type_prob, np.float32), nlab)

    out: dict[int, dict[str, Any]] = {}
    for i in np.flatnonzero(area):
        a = int(area[i])
        bx0, by0, bx1, by1 = int(x0[i]), int(y0[i]), int(x1[i]) + 1, int(y1[i]) + 1
        crop = (lab[by0:by1, bx0:bx1] == i).view(np.uint8)
        if votes is None:
            tp, tprob = 0, None
        else:
            v = votes[i].copy()
            v[0] = 0
            tp = int(np.argmax(v)) if v.sum() > 0 else 0
            tprob = float(psum[i, tp] / a)
        key = int(ids_of[i]) if ids_of is not None else int(i)
        contour, shape = _outline_and_shape(crop, bx0, by0, a)
        out[key] = {
            "bbox": [bx0, by0, bx1, by1],
            "centroid": [float(sx[i] / a), float(sy[i] / a)],
            "contour": contour,
            "area": a,
            "type": tp,
            "type_prob": tprob,
            "shape": shape,
        }
    add_nearest_neighbours(out)
    return out
