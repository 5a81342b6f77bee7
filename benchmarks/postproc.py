"""Benchmark: numba HV post-processing vs the classic scipy/skimage recipe (same run, same params).

Usage:
    python benchmarks/postproc.py [--out PATH] [--repeats N] [--glas_dir DIR] [--n_glas N] [--mpp MPP]
                                  [--seed S] [--clock cpu|wall]

Cases:
  synthetic  1000x1000 px, ~150 drawn crypts (radius 20-80 px, touching allowed; when 150
             do not fit, the gaps are filled with radius 10-20 px crypts), noisy NP/HV maps.
  glas       the first N GlaS training annotations, 2x nearest-downsampled to 0.93 um/px,
             NP = mask, HV = hv_maps(ground truth), same noise. Skipped when the data is absent.

Both implementations run single-threaded (NUMBA_NUM_THREADS=1, cv2.setNumThreads(1)), interleaved,
``--repeats`` times. The reference is the HoVer-Net recipe written plainly with scipy.ndimage,
skimage.morphology and skimage.segmentation.watershed. Reported: best-of-N ms per stage and total
(robust on a shared machine; medians are in the JSON), the speed-up of the totals, and PQ of our
instances against the reference's instances (and of both against the ground truth).
"""

from __future__ import annotations

import os

for _var in ("NUMBA_NUM_THREADS", "OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[_var] = "1"

import argparse  # noqa: E402
import json  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from collections.abc import Callable  # noqa: E402
from pathlib import Path  # noqa: E402

import cv2  # noqa: E402
import numpy as np  # noqa: E402
from scipy import ndimage as ndi  # noqa: E402
from skimage.morphology import remove_small_objects  # noqa: E402
from skimage.segmentation import watershed as sk_watershed  # noqa: E402

from hovercrypt.config import PostprocConfig  # noqa: E402
from hovercrypt.io.atomic import atomic_write_text  # noqa: E402
from hovercrypt.metrics import pq  # noqa: E402
from hovercrypt.postproc import instance_info, instances_from_maps  # noqa: E402
from hovercrypt.postproc.profile import timed_instances_from_maps  # noqa: E402
from hovercrypt.testing.synthetic import noisy_maps, random_ellipses  # noqa: E402

STAGES = ("threshold", "sobel", "energy", "markers", "watershed")
REPO = Path(__file__).resolve().parents[1]


def reference_instances(
    np_prob: np.ndarray, hv: np.ndarray, p: dict, timings: dict, clock: Callable[[], float]
) -> np.ndarray:
    """The classic recipe, step by step, with scipy / skimage / OpenCV (float64 Sobel as published)."""
    t = clock()

    def lap(name: str) -> None:
        nonlocal t
        now = clock()
        timings[name] = timings.get(name, 0.0) + (now - t) * 1e3
        t = now

    fg = ndi.label(np_prob >= p["np_thresh"])[0]
    fg = remove_small_objects(fg, max_size=p["min_object_area"] - 1)
    fg = (fg > 0).astype(np.uint8)
    lap("threshold")

    x = cv2.normalize(np.ascontiguousarray(hv[..., 0]), None, 0, 1, cv2.NORM_MINMAX, cv2.CV_32F)
    y = cv2.normalize(np.ascontiguousarray(hv[..., 1]), None, 0, 1, cv2.NORM_MINMAX, cv2.CV_32F)
    gx = cv2.Sobel(x, cv2.CV_64F, 1, 0, ksize=p["sobel_ksize"])
    gy = cv2.Sobel(y, cv2.CV_64F, 0, 1, ksize=p["sobel_ksize"])
    gx = 1 - cv2.normalize(gx, None, 0, 1, cv2.NORM_MINMAX, cv2.CV_32F)
    gy = 1 - cv2.normalize(gy, None, 0, 1, cv2.NORM_MINMAX, cv2.CV_32F)
    lap("sobel")

    edge = np.maximum(gx, gy) - (1 - fg)
    edge[edge < 0] = 0
    dist = (1.0 - edge) * fg
    k = p["blur_ksize"] | 1
    energy = -cv2.GaussianBlur(dist, (k, k), 0) if p["blur_ksize"] > 1 else -dist
    lap("energy")

    marker = fg.astype(np.int32) - (edge >= p["marker_thresh"]).astype(np.int32)
    marker[marker < 0] = 0
    marker = ndi.binary_fill_holes(marker).astype(np.uint8)
    r = p["marker_open_radius"]
    disk = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * r + 1, 2 * r + 1))
    marker = cv2.morphologyEx(marker, cv2.MORPH_OPEN, disk)
    marker = ndi.label(marker)[0]
    marker = remove_small_objects(marker, max_size=p["min_marker_area"] - 1)
    lap("markers")

    out = sk_watershed(energy, markers=marker, mask=fg > 0)
    lap("watershed")
    return out


def synthetic_crypts(seed: int) -> tuple[np.ndarray, str]:
    """~150 crypts in 1000x1000: radius 20-80 where they fit, gaps filled with radius 10-20."""
    shape, n = (1000, 1000), 150
    inst = random_ellipses(shape, n, (20, 80), seed=seed, allow_touching=True)
    k_big = int(inst.max())
    if k_big < n:
        extra = random_ellipses(shape, 20 * (n - k_big), (10, 20), seed=seed + 1, allow_touching=True)
        k = k_big
        for i, sl in enumerate(ndi.find_objects(extra), start=1):
            if sl is None or k >= n:
                continue
            m = extra[sl] == i
            if np.any(inst[sl][m]):
                continue
            k += 1
            inst[sl][m] = k
    k = int(inst.max())
    note = f"{k_big} crypts of radius 20-80 px fit (touching allowed)"
    if k > k_big:
        note += f"; {k - k_big} more of radius 10-20 px fill the gaps"
    return inst, note


def glas_maps(glas_dir: Path, n: int) -> list[tuple[str, np.ndarray]]:
    annos = sorted(glas_dir.glob("train_*_anno.png"), key=lambda p: int(p.stem.split("_")[1]))[:n]
    out = []
    for path in annos:
        lab = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
        if lab is None:
            print(f"skipping unreadable {path}", file=sys.stderr)
            continue
        if lab.ndim == 3:
            lab = lab[..., 0]
        out.append((path.stem, np.ascontiguousarray(lab[::2, ::2]).astype(np.int32)))  # 0.465 -> 0.93 um/px
    return out


def run_case(
    name: str,
    items: list[tuple[np.ndarray, np.ndarray, np.ndarray]],
    p: dict,
    repeats: int,
    clock: Callable[[], float],
) -> dict:
    """Time both implementations on every image ``repeats`` times; stage times are per-repeat sums."""
    ours_rep = [dict.fromkeys(STAGES, 0.0) for _ in range(repeats)]
    ref_rep = [dict.fromkeys(STAGES, 0.0) for _ in range(repeats)]
    info_ms: list[float] = []
    pq_ref, pq_ours_gt, pq_ref_gt = [], [], []
    for inst, np_prob, hv in items:
        instances_from_maps(np_prob, hv, **p)  # warm-up (loads the numba cache)
        for r in range(repeats):
            ours = timed_instances_from_maps(np_prob, hv, ours_rep[r], clock, **p)
            ref = reference_instances(np_prob, hv, p, ref_rep[r], clock)
            t = clock()
            instance_info(ours)
            info_ms.append((clock() - t) * 1e3)
            if r == 0:
                pq_ref.append(pq(ref, ours)["pq"])
                pq_ours_gt.append(pq(inst, ours)["pq"])
                pq_ref_gt.append(pq(inst, ref)["pq"])
    # best-of-N: the least-disturbed run of each stage (the CI machine is shared); medians go to the JSON
    ours_ms = {s: float(np.min([x[s] for x in ours_rep])) for s in STAGES}
    ref_ms = {s: float(np.min([x[s] for x in ref_rep])) for s in STAGES}
    tot_o = float(np.min([sum(x.values()) for x in ours_rep]))
    tot_r = float(np.min([sum(x.values()) for x in ref_rep]))
    med_o = float(np.median([sum(x.values()) for x in ours_rep]))
    med_r = float(np.median([sum(x.values()) for x in ref_rep]))
    return {
        "case": name,
        "images": len(items),
        "ours_ms": ours_ms,
        "reference_ms": ref_ms,
        "ours_total_ms": tot_o,
        "reference_total_ms": tot_r,
        "speedup": tot_r / tot_o if tot_o > 0 else float("inf"),
        "ours_median_total_ms": med_o,
        "reference_median_total_ms": med_r,
        "speedup_of_medians": med_r / med_o if med_o > 0 else float("inf"),
        "pq_ours_vs_reference": float(np.mean(pq_ref)),
        "pq_min_ours_vs_reference": float(np.min(pq_ref)),
        "pq_ours_vs_truth": float(np.mean(pq_ours_gt)),
        "pq_reference_vs_truth": float(np.mean(pq_ref_gt)),
        "instance_info_ms": float(np.median(info_ms)),
    }


def print_table(res: dict) -> None:
    print(f"\n== {res['case']} ({res['images']} image(s)) ==")
    print(f"{'stage':<12}{'ours ms':>10}{'ref ms':>10}{'ratio':>8}")
    for s in STAGES:
        o, r = res["ours_ms"][s], res["reference_ms"][s]
        print(f"{s:<12}{o:>10.2f}{r:>10.2f}{(r / o if o > 0 else float('inf')):>8.1f}")
    print(
        f"{'TOTAL':<12}{res['ours_total_ms']:>10.2f}{res['reference_total_ms']:>10.2f}{res['speedup']:>8.1f}"
    )
    print(
        f"{'median tot':<12}{res['ours_median_total_ms']:>10.2f}{res['reference_median_total_ms']:>10.2f}"
        f"{res['speedup_of_medians']:>8.1f}"
    )
    print(
        f"PQ ours vs reference: {res['pq_ours_vs_reference']:.4f} "
        f"(min {res['pq_min_ours_vs_reference']:.4f}); "
        f"vs truth: ours {res['pq_ours_vs_truth']:.4f}, reference {res['pq_reference_vs_truth']:.4f}; "
        f"instance_info: {res['instance_info_ms']:.2f} ms"
    )


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=str(REPO / "bench_out" / "postproc.json"))
    ap.add_argument("--repeats", type=int, default=10)
    ap.add_argument("--glas_dir", default=str(REPO.parent / "shared" / "data" / "glas" / "train"))
    ap.add_argument("--n_glas", type=int, default=4)
    ap.add_argument("--mpp", type=float, default=0.93, help="processing um/px for PostprocConfig.pixels")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument(
        "--clock",
        choices=("cpu", "wall"),
        default="cpu",
        help="cpu = this thread's CPU time (robust when the machine is shared), wall = perf_counter",
    )
    args = ap.parse_args(argv)
    cv2.setNumThreads(1)
    clock = time.thread_time if args.clock == "cpu" else time.perf_counter
    p = PostprocConfig().pixels(args.mpp)
    print("parameters (px):", {k: v for k, v in p.items() if not k.startswith("unet_")})

    results = []
    inst, note = synthetic_crypts(args.seed)
    print(f"synthetic: {note}")
    np_prob, hv = noisy_maps(inst, seed=args.seed)
    res = run_case("synthetic 1000x1000", [(inst, np_prob, hv)], p, args.repeats, clock)
    res["note"] = note
    results.append(res)
    print_table(res)

    glas_dir = Path(args.glas_dir)
    if not (glas_dir / "grade.csv").is_file():
        print(f"\nGlaS case skipped: no data at {glas_dir}")
    else:
        items = []
        for i, (_, lab) in enumerate(glas_maps(glas_dir, args.n_glas)):
            gp, gh = noisy_maps(lab, seed=args.seed + i)
            items.append((lab, gp, gh))
        shapes = sorted({lab.shape for lab, _, _ in items})
        res = run_case(f"GlaS x{len(items)} at 0.93 um/px {shapes}", items, p, args.repeats, clock)
        results.append(res)
        print_table(res)

    payload = {
        "parameters_px": p,
        "threads": 1,
        "repeats": args.repeats,
        "clock": args.clock,
        "results": results,
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(args.out, json.dumps(payload, indent=2))
    print(f"\nwrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
