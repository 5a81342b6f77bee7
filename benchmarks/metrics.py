"""Benchmark: all metrics of one image from one overlap table vs a plain per-pair reference.

The reference builds full-image masks for every object and every overlapping
pair (the usual recipe); both are timed in the same run on the same synthetic
image (drawn ellipses, a shifted and partly cut copy as the prediction), and
their values are compared.

    python benchmarks/metrics.py [--size=1000] [--n=150] [--repeats=7] [--out=bench_out/metrics.json]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np
from scipy.optimize import linear_sum_assignment
from scipy.spatial.distance import directed_hausdorff

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from hovercrypt.io.atomic import atomic_write_text  # noqa: E402
from hovercrypt.metrics import contingency, evaluate_pair, glas, instance  # noqa: E402
from hovercrypt.testing.synthetic import random_ellipses  # noqa: E402


def reference(t: np.ndarray, p: np.ndarray, hausdorff: bool) -> dict[str, float]:
    """Per-pair metrics with full-image masks (what the fast path must reproduce)."""
    tids = [int(i) for i in np.unique(t) if i]
    pids = [int(j) for j in np.unique(p) if j]
    tm = {i: t == i for i in tids}
    pm = {j: p == j for j in pids}
    inter = np.zeros((len(tids), len(pids)))
    for a, i in enumerate(tids):
        for j in np.unique(p[tm[i]]):
            if j:
                inter[a, pids.index(int(j))] = np.sum(tm[i] & pm[int(j)])
    ta = np.array([m.sum() for m in tm.values()], float)
    pa = np.array([m.sum() for m in pm.values()], float)
    union = ta[:, None] + pa[None, :] - inter
    iou = inter / union
    match = iou > 0.5
    tp = match.sum()
    dq = tp / (tp + 0.5 * (len(pids) - tp) + 0.5 * (len(tids) - tp))
    out = {"pq": dq * iou[match].sum() / tp, "dice": 2 * np.sum((t > 0) & (p > 0)) / (ta.sum() + pa.sum())}
    best = iou.argmax(1)
    has = iou.max(1) > 0
    used = np.zeros(len(pids), bool)
    used[best[has]] = True
    c = inter[np.arange(len(tids)), best][has].sum()
    u = union[np.arange(len(tids)), best][has].sum() + ta[~has].sum() + pa[~used].sum()
    out["aji"] = c / u
    r, cc = linear_sum_assignment(-iou)
    ok = iou[r, cc] > 0
    pt, pp = np.zeros(len(tids), bool), np.zeros(len(pids), bool)
    pt[r[ok]], pp[cc[ok]] = True, True
    out["aji_plus"] = inter[r[ok], cc[ok]].sum() / (
        union[r[ok], cc[ok]].sum() + ta[~pt].sum() + pa[~pp].sum()
    )
    g_of_s = inter.argmax(0)
    s_of_g = inter.argmax(1)
    found = {int(g_of_s[j]) for j in range(len(pids)) if inter[g_of_s[j], j] >= 0.5 * ta[g_of_s[j]]}
    out["obj_f1"] = 2 * len(found) / (len(tids) + len(pids))
    dg = np.where(inter.max(1) > 0, 2 * inter.max(1) / (ta + pa[s_of_g]), 0)
    ds = np.where(inter.max(0) > 0, 2 * inter.max(0) / (pa + ta[g_of_s]), 0)
    out["obj_dice"] = 0.5 * ((ta * dg).sum() / ta.sum() + (pa * ds).sum() / pa.sum())
    if hausdorff:
        pts_t = {i: np.argwhere(m) for i, m in tm.items()}
        pts_p = {j: np.argwhere(m) for j, m in pm.items()}

        def h(a, b):
            return max(directed_hausdorff(a, b)[0], directed_hausdorff(b, a)[0])

        hg = [
            h(pts_t[i], pts_p[pids[s_of_g[a]]])
            if inter[a].max() > 0
            else min(h(pts_t[i], q) for q in pts_p.values())
            for a, i in enumerate(tids)
        ]
        hs = [
            h(pts_t[tids[g_of_s[b]]], pts_p[j])
            if inter[:, b].max() > 0
            else min(h(q, pts_p[j]) for q in pts_t.values())
            for b, j in enumerate(pids)
        ]
        out["obj_hausdorff"] = 0.5 * ((ta * hg).sum() / ta.sum() + (pa * hs).sum() / pa.sum())
    return {k: float(v) for k, v in out.items()}


def timed(fn, repeats: int) -> tuple[float, float, object, float]:
    """(min wall ms, median wall ms, result, min CPU ms); CPU time is steadier on a shared machine."""
    times, cpu, res = [], [], None
    for _ in range(repeats):
        c0, t0 = time.process_time(), time.perf_counter()
        res = fn()
        times.append(time.perf_counter() - t0)
        cpu.append(time.process_time() - c0)
    return min(times) * 1e3, statistics.median(times) * 1e3, res, min(cpu) * 1e3


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=int, default=1000)
    ap.add_argument("--n", type=int, default=150)
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--out", default="bench_out/metrics.json")
    a = ap.parse_args()

    side = a.size
    rmax = max(6.0, 0.45 * side / np.sqrt(a.n))
    t = random_ellipses((side, side), a.n, radius_range=(0.5 * rmax, rmax), seed=0, allow_touching=True)
    rng = np.random.default_rng(0)
    p = np.roll(t, (2, 3), axis=(0, 1))
    ids = np.unique(t)[1:]
    p[np.isin(p, rng.choice(ids, size=max(1, ids.size // 20), replace=False))] = 0  # 5% missed
    p[side // 2 : side // 2 + 6] = 0  # a band that splits objects
    types_t = (t % 3) + 1
    types_t[t == 0] = 0
    evaluate_pair(t, p, types_t, types_t)  # compile / warm caches

    ct = contingency(t, p)
    rows = []
    for name, fn in [
        ("contingency table", lambda: contingency(t, p)),
        (
            "dice+aji+aji_plus+pq (from table)",
            lambda: (
                instance.dice_table(ct),
                instance.aji_sums(ct),
                instance.aji_plus_sums(ct),
                instance.pq_table(ct),
            ),
        ),
        ("glas F1 + Dice (from table)", lambda: glas.glas_terms(ct, hausdorff=False)),
        ("glas F1 + Dice + Hausdorff", lambda: glas.glas_terms(ct, hausdorff=True)),
        ("evaluate_pair, no types", lambda: evaluate_pair(t, p)),
        ("evaluate_pair, with type maps", lambda: evaluate_pair(t, p, types_t, types_t)),
    ]:
        mn, md, _, cpu = timed(fn, a.repeats)
        rows.append({"step": name, "min_ms": mn, "median_ms": md, "cpu_ms": cpu})
    fast_nohd = timed(lambda: evaluate_pair(t, p, hausdorff=False), a.repeats)
    fast_full = timed(lambda: evaluate_pair(t, p), a.repeats)
    ref_nohd = timed(lambda: reference(t, p, False), 1)
    ref_full = timed(lambda: reference(t, p, True), 1)
    fast_vals, ref_vals = fast_full[2], ref_full[2]
    max_diff = max(abs(fast_vals[k] - ref_vals[k]) for k in ref_vals)
    comp = [
        {
            "set": "dice/aji/aji+/pq/objF1/objDice",
            "fast_ms": fast_nohd[0],
            "reference_ms": ref_nohd[0],
            "speedup": ref_nohd[0] / fast_nohd[0],
        },
        {
            "set": "... + object Hausdorff",
            "fast_ms": fast_full[0],
            "reference_ms": ref_full[0],
            "speedup": ref_full[0] / fast_full[0],
        },
    ]
    n_t, n_p = ct.n_true, ct.n_pred
    print(f"image {side}x{side}, {n_t} true / {n_p} predicted instances, {a.repeats} repeats")
    print(f"(wall min / median; CPU = min process time; load average {os.getloadavg()[0]:.1f})")
    print(f"{'step':40s}{'min ms':>10s}{'median ms':>12s}{'CPU ms':>10s}")
    for r in rows:
        print(f"{r['step']:40s}{r['min_ms']:10.1f}{r['median_ms']:12.1f}{r['cpu_ms']:10.1f}")
    print(f"\n{'metric set':34s}{'fast ms':>10s}{'ref ms':>10s}{'speedup':>10s}")
    for c in comp:
        print(f"{c['set']:34s}{c['fast_ms']:10.1f}{c['reference_ms']:10.1f}{c['speedup']:9.1f}x")
    print(f"\nmax |fast - reference| over {sorted(ref_vals)}: {max_diff:.2e}")
    result = {
        "size": side,
        "n_true": n_t,
        "n_pred": n_p,
        "repeats": a.repeats,
        "steps": rows,
        "comparison": comp,
        "values": fast_vals,
        "reference_values": ref_vals,
        "max_abs_diff": max_diff,
    }
    atomic_write_text(a.out, json.dumps(result, indent=2) + "\n")
    print(f"wrote {a.out}")


if __name__ == "__main__":
    main()
