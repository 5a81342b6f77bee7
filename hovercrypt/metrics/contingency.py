"""One sparse table of label overlaps, from which every instance metric is derived.

Per-pair loops over whole images cost O(pairs x pixels); a single counting pass
over the pixels gives every (true, pred) intersection at once, and areas,
IoUs, Dice and matchings then work on a few hundred numbers instead of a
million pixels.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from numba import njit
from scipy.optimize import linear_sum_assignment
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

#: Above this many (true+1) x (pred+1) cells the joint count uses a sort instead of a dense bincount.
_DENSE_CELLS = 4_000_000


def _lut(labels: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Relabel to 0..n (0 = background) keeping id order.

    Returns ``(labels, lut, ids)`` where ``lut[labels]`` is the compact map. Huge
    sparse ids (e.g. hashed) are first compacted by sorting so the table stays small.
    """
    flat = labels.ravel()
    top = int(flat.max()) if flat.size else 0
    if top > max(4 * flat.size, 1 << 16):
        uniq, inv = np.unique(flat, return_inverse=True)
        if uniq[0] != 0:
            uniq, inv = np.r_[0, uniq], inv + 1
        labels = inv.astype(np.int32).reshape(labels.shape)
        top = int(uniq.size - 1)
        ids = uniq[1:].astype(np.int64)
        return labels, np.arange(top + 1, dtype=np.int32), ids
    present = np.bincount(flat, minlength=1) > 0
    present[0] = False
    ids = np.flatnonzero(present)
    lut = np.zeros(top + 1, np.int32)
    lut[ids] = np.arange(1, ids.size + 1, dtype=np.int32)
    return np.ascontiguousarray(labels, dtype=np.int32), lut, ids.astype(np.int64)


@njit(cache=True, inline="always")
def _acc(st, k, y, x):  # pragma: no cover - compiled
    st[k, 0] += 1
    st[k, 1] = min(st[k, 1], y)
    st[k, 2] = min(st[k, 2], x)
    st[k, 3] = max(st[k, 3], y + 1)
    st[k, 4] = max(st[k, 4], x + 1)
    st[k, 5] += x
    st[k, 6] += y


@njit(cache=True)
def _scan(true, pred, lut_t, lut_p, nt, npd, dense):  # pragma: no cover - compiled
    """One pass over the pixels: compact maps, joint counts, areas, boxes and coordinate sums."""
    h, w = true.shape
    tmap = np.empty((h, w), np.int32)
    pmap = np.empty((h, w), np.int32)
    joint = np.zeros((nt + 1, npd + 1) if dense else (1, 1), np.int64)
    stats_t = np.zeros((nt + 1, 7), np.int64)  # area, y0, x0, y1, x1, sum x, sum y
    stats_p = np.zeros((npd + 1, 7), np.int64)
    stats_t[:, 1] = h
    stats_t[:, 2] = w
    stats_p[:, 1] = h
    stats_p[:, 2] = w
    for y in range(h):
        for x in range(w):
            a = lut_t[true[y, x]]
            b = lut_p[pred[y, x]]
            tmap[y, x] = a
            pmap[y, x] = b
            if dense:
                joint[a, b] += 1
            if a > 0:
                _acc(stats_t, a, y, x)
            if b > 0:
                _acc(stats_p, b, y, x)
    return tmap, pmap, joint, stats_t, stats_p


def _check_label(arr: np.ndarray, what: str) -> np.ndarray:
    arr = np.asarray(arr)
    if arr.ndim != 2:
        raise ValueError(f"{what} label map must be 2-D, got shape {arr.shape}")
    if arr.dtype == bool:
        return arr.astype(np.int32)
    if not np.issubdtype(arr.dtype, np.integer):
        if np.issubdtype(arr.dtype, np.floating) and np.all(arr == np.round(arr)):
            arr = arr.astype(np.int64)
        else:
            raise ValueError(f"{what} label map must hold integers, got dtype {arr.dtype}")
    if arr.size and arr.min() < 0:
        raise ValueError(f"{what} label map has negative ids")
    if arr.dtype == np.uint64:
        if arr.size and arr.max() > np.iinfo(np.int64).max:
            raise ValueError(f"{what} label ids exceed int64")
        arr = arr.astype(np.int64)
    return arr


@dataclass
class Contingency:
    """Sparse overlap table of a true and a predicted instance map.

    Objects are indexed 0..n-1 in increasing label-id order; ``true_ids[i]`` is
    the original id of true object ``i``. ``pair_t[k], pair_p[k]`` overlap in
    ``inter[k]`` pixels (only pairs with a non-empty intersection are stored).
    ``true_map``/``pred_map`` are the relabelled maps (object ``i`` has value
    ``i + 1``), kept for the geometric (Hausdorff) and centroid computations.
    """

    shape: tuple[int, int]
    true_ids: np.ndarray
    pred_ids: np.ndarray
    true_area: np.ndarray
    pred_area: np.ndarray
    pair_t: np.ndarray
    pair_p: np.ndarray
    inter: np.ndarray
    true_map: np.ndarray = field(repr=False)
    pred_map: np.ndarray = field(repr=False)
    true_box: np.ndarray = field(repr=False)  # (n, 4) [y0, x0, y1, x1], exclusive ends
    pred_box: np.ndarray = field(repr=False)
    true_centroid: np.ndarray = field(repr=False)  # (n, 2) (x, y)
    pred_centroid: np.ndarray = field(repr=False)

    @property
    def n_true(self) -> int:
        return int(self.true_ids.size)

    @property
    def n_pred(self) -> int:
        return int(self.pred_ids.size)

    @property
    def union(self) -> np.ndarray:
        return self.true_area[self.pair_t] + self.pred_area[self.pair_p] - self.inter

    @property
    def iou(self) -> np.ndarray:
        return self.inter / self.union

    def dense_inter(self) -> np.ndarray:
        """(n_true, n_pred) intersection matrix; for tests and small references only."""
        m = np.zeros((self.n_true, self.n_pred), np.int64)
        m[self.pair_t, self.pair_p] = self.inter
        return m


def contingency(true: np.ndarray, pred: np.ndarray) -> Contingency:
    """Count all (true, pred) label overlaps in one pass over the pixels."""
    true = _check_label(true, "true")
    pred = _check_label(pred, "pred")
    if true.shape != pred.shape:
        raise ValueError(f"true and pred label maps differ in shape: {true.shape} vs {pred.shape}")
    true, lut_t, tids = _lut(true)
    pred, lut_p, pids = _lut(pred)
    nt, npd = tids.size, pids.size
    dense = (nt + 1) * (npd + 1) <= _DENSE_CELLS
    tc, pc, joint, st_t, st_p = _scan(true, pred, lut_t, lut_p, nt, npd, dense)
    if nt == 0 or npd == 0:
        pt = pp = inter = np.zeros(0, np.int64)
    elif dense:
        sub = joint[1:, 1:]
        pt, pp = np.nonzero(sub)
        inter = sub[pt, pp].astype(np.int64)
    else:
        both = (tc > 0) & (pc > 0)
        key = tc[both].astype(np.int64) * (npd + 1) + pc[both]
        uk, cnt = np.unique(key, return_counts=True)
        pt, pp, inter = uk // (npd + 1) - 1, uk % (npd + 1) - 1, cnt.astype(np.int64)
    # contiguous copies: the compiled kernels then see a single array layout (one compilation)
    tarea, parea = np.ascontiguousarray(st_t[1:, 0]), np.ascontiguousarray(st_p[1:, 0])
    return Contingency(
        shape=(int(true.shape[0]), int(true.shape[1])),
        true_ids=tids,
        pred_ids=pids,
        true_area=tarea,
        pred_area=parea,
        pair_t=pt.astype(np.int64),
        pair_p=pp.astype(np.int64),
        inter=inter,
        true_map=tc,
        pred_map=pc,
        true_box=np.ascontiguousarray(st_t[1:, 1:5]),
        pred_box=np.ascontiguousarray(st_p[1:, 1:5]),
        true_centroid=st_t[1:, 5:7] / np.maximum(tarea, 1)[:, None],
        pred_centroid=st_p[1:, 5:7] / np.maximum(parea, 1)[:, None],
    )


def max_weight_matching(
    rows: np.ndarray, cols: np.ndarray, weight: np.ndarray, n_rows: int, n_cols: int
) -> np.ndarray:
    """Indices into the pair list of a one-to-one matching with maximal total weight.

    The overlap graph falls apart into small connected components (a crypt
    touches a handful of predictions), so each component is solved on its own
    with a tiny dense Hungarian problem; single-edge components are taken
    directly. Only pairs with ``weight > 0`` can be chosen.
    """
    keep = np.flatnonzero(weight > 0)
    if keep.size == 0:
        return keep
    r, c, w = rows[keep], cols[keep], weight[keep]
    graph = coo_matrix((np.ones(keep.size), (r, c + n_rows)), shape=(n_rows + n_cols,) * 2)
    _, comp = connected_components(graph, directed=False)
    edge_comp = comp[r]
    n_edges = np.bincount(edge_comp)
    single = n_edges[edge_comp] == 1
    chosen = [keep[single]]
    multi = np.flatnonzero(~single)
    if multi.size:
        order = multi[np.argsort(edge_comp[multi], kind="stable")]
        bounds = np.flatnonzero(np.diff(edge_comp[order])) + 1
        for grp in np.split(order, bounds):
            ur, ir = np.unique(r[grp], return_inverse=True)
            uc, ic = np.unique(c[grp], return_inverse=True)
            mat = np.zeros((ur.size, uc.size))
            mat[ir, ic] = w[grp]
            lookup = np.full((ur.size, uc.size), -1, np.int64)
            lookup[ir, ic] = grp
            ar, ac = linear_sum_assignment(mat, maximize=True)
            sel = lookup[ar, ac]
            chosen.append(keep[sel[sel >= 0]])
    return np.sort(np.concatenate(chosen))
