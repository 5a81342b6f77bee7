"""Whole-slide inference benchmark: peak memory, time per tissue megapixel, count vs truth.

Writes two synthetic pyramidal slides (JPEG tiles, 0.5 µm/px): ``--size`` px
square and one with 4x its area, with the same tissue pattern and crypt
density. Each is processed in a fresh child process by the whole-slide engine
with the oracle predictor (exact maps; the network is not what is measured
here), so the child's peak RSS is the engine's alone. The reference is the
smaller slide: the ratios show memory staying flat and time growing with the
tissue area.

Usage: python benchmarks/wsi.py [--size 51200] [--proc_mpp 4.0] [--out bench_out/wsi.json]
Slides are cached in ``bench_out/wsi_slides/`` (delete to regenerate).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

MPP = 0.5
RADII = (40.0, 80.0)  # level-0 px: crypts 40-80 µm across
CELL = 12800  # tissue pattern cell (level-0 px)


def bench_layout(size: int, seed: int = 0):
    """Checkerboard of tissue blocks (~32% of the slide), crypts filling ~10% of the tissue."""
    from hovercrypt.testing.slides import random_layout

    n = size // CELL
    tissue = []
    for i in range(n):
        for j in range(n):
            if (i + j) % 2 == 0:
                x0, y0 = j * CELL + CELL // 10, i * CELL + CELL // 10
                tissue.append((x0, y0, x0 + CELL * 8 // 10, y0 + CELL * 8 // 10))
    area = sum((x1 - x0) * (y1 - y0) for x0, y0, x1, y1 in tissue)
    n_crypts = int(0.10 * area / (np.pi * np.mean(RADII) ** 2))
    return random_layout(size, size, tissue, n_crypts, RADII, seed=seed, gap=24, n_types=2)


def ensure_slide(size: int, folder: Path) -> Path:
    from hovercrypt.testing.slides import write_layout_slide

    path = folder / f"bench_{size}.tif"
    npy = path.with_suffix(".npy")
    if path.is_file() and npy.is_file():
        return path
    t0 = time.perf_counter()
    layout = bench_layout(size)
    write_layout_slide(path, layout, MPP, downsamples=(1, 4, 16, 64))
    np.save(npy, layout.ellipses)
    print(
        f"wrote {path.name}: {len(layout.ellipses)} crypts, {path.stat().st_size / 1e6:.0f} MB, "
        f"{time.perf_counter() - t0:.0f} s",
        flush=True,
    )
    return path


def run_one(slide: Path, out_dir: Path, proc_mpp: float, workers: int, pool: str) -> dict:
    """In the child: process one slide with the oracle and report peak RSS and timings."""
    from hovercrypt.config import InferConfig, PostprocConfig
    from hovercrypt.infer.wsi import WsiOptions
    from hovercrypt.infer.wsi_cli import run_wsi
    from hovercrypt.io.type_info import TypeInfo
    from hovercrypt.testing.oracle import OraclePredictor

    ellipses = np.load(slide.with_suffix(".npy"))
    f = proc_mpp / MPP
    e = ellipses.copy()
    e[:, :2] = (e[:, :2] + 0.5) / f - 0.5
    e[:, 2:4] /= f
    orc = OraclePredictor(e, 160, 128, nr_types=3)
    opts = WsiOptions(
        proc_mpp=proc_mpp,
        postproc=PostprocConfig(min_object_area_um2=100.0).pixels(proc_mpp),
        type_info=TypeInfo.default(3),
        infer=InferConfig(batch_size=16, postproc_workers=workers),
        progress=False,
    )
    rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    t0 = time.perf_counter()
    (res,) = run_wsi([slide], out_dir, orc, opts, pool_kind=pool)
    sec = time.perf_counter() - t0
    tissue_mpx0 = res.tissue_area_mm2 * 1e6 / (MPP * MPP) / 1e6
    return {
        "slide": slide.name,
        "status": res.status,
        "level0_px": int(slide.stem.split("_")[1]),
        "count": res.total,
        "truth": len(ellipses),
        "tissue_mm2": round(res.tissue_area_mm2, 2),
        "tissue_mpx_level0": round(tissue_mpx0, 1),
        "tiles": res.tiles,
        "seconds": round(sec, 1),
        "s_per_tissue_mpx_level0": round(sec / max(tissue_mpx0, 1e-9), 4),
        "s_per_tissue_mpx_proc": round(sec / max(tissue_mpx0 / f**2, 1e-9), 3),
        "rss_after_imports_mb": round(rss0),
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
        "peak_rss_worker_mb": round(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024),
        "stages_s": res.stages,
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=int, default=51200, help="level-0 side of the reference slide (px)")
    ap.add_argument("--proc_mpp", type=float, default=4.0)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--pool", default="thread", choices=["process", "thread"])
    ap.add_argument("--out", default="bench_out/wsi.json")
    ap.add_argument("--_child", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args._child:
        res = run_one(Path(args._child), Path(args.out), args.proc_mpp, args.workers, args.pool)
        print("RESULT " + json.dumps(res), flush=True)
        return 0
    if args.size % CELL:
        ap.error(f"--size must be a multiple of {CELL}")
    folder = Path("bench_out/wsi_slides")
    folder.mkdir(parents=True, exist_ok=True)
    rows = []
    for size in (args.size, 2 * args.size):
        slide = ensure_slide(size, folder)
        cmd = [
            sys.executable,
            __file__,
            "--_child",
            str(slide),
            "--out",
            str(folder / f"run_{size}"),
            "--proc_mpp",
            str(args.proc_mpp),
            "--workers",
            str(args.workers),
            "--pool",
            args.pool,
        ]
        proc = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ})
        line = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
        if proc.returncode or not line:
            print(proc.stdout[-3000:], proc.stderr[-3000:], file=sys.stderr)
            return 1
        rows.append(json.loads(line[0][7:]))
    ref, big = rows
    ratios = {
        "area": round(big["tissue_mpx_level0"] / ref["tissue_mpx_level0"], 2),
        "peak_rss": round(big["peak_rss_mb"] / ref["peak_rss_mb"], 2),
        "peak_rss_worker": round(big["peak_rss_worker_mb"] / max(1, ref["peak_rss_worker_mb"]), 2),
        "s_per_tissue_mpx": round(big["s_per_tissue_mpx_level0"] / ref["s_per_tissue_mpx_level0"], 2),
    }
    cols = [
        "slide",
        "count",
        "truth",
        "tissue_mm2",
        "tiles",
        "seconds",
        "s_per_tissue_mpx_level0",
        "peak_rss_mb",
        "peak_rss_worker_mb",
    ]
    print(" | ".join(cols))
    for r in rows:
        print(" | ".join(str(r[c]) for c in cols))
    for r in rows:
        print(f"{r['slide']} stage seconds: {r['stages_s']}")
    print(f"ratios (4x slide / reference): {ratios}")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(
        json.dumps(
            {
                "proc_mpp": args.proc_mpp,
                "workers": args.workers,
                "pool": args.pool,
                "rows": rows,
                "ratios": ratios,
            },
            indent=1,
        )
    )
    return 0 if all(r["count"] == r["truth"] for r in rows) else 2


if __name__ == "__main__":
    sys.exit(main())
