"""Network cost per kept output pixel, by inference window and backend (issue 15).

A large window only pays off if the network's cost per *kept* output pixel falls: it drops
the context that every training window recomputes (fast mode: 256 px in for 164 kept), but a
padded network needs a border (``--window_border``) and larger activations may run slower per
pixel. This measures it directly, with the predictor that ``run_infer.py`` uses
(:class:`hovercrypt.infer.predictor.NetworkPredictor`: uint8 tiles in, maps out, border
dropped), on the real tissue of ``benchmarks/backends.py`` (a GlaS image resampled to the
model's processing resolution and mirrored to fill the window).

For every backend x window: seconds per call (median of ``--repeats`` after a warm-up that
also pays OpenVINO's export + compile), kept output px per call, and **seconds per kept
megapixel**; the training window runs ``--batch`` tiles per call. The ratio column is against
torch at the training window of the same run. Writes ``bench_out/window_cost.json``.

OpenVINO runs once per ``--precisions`` entry (``infer.precision``: f32, and bf16 where the CPU
computes it natively); torch and ONNX Runtime always run f32.

Usage: python benchmarks/window_cost.py [--windows 0,512,768,1024,1536] [--border 32]
       [--backends torch,openvino] [--precisions f32,bf16] [--batch 8] [--repeats 3]
       [--model_path CKPT]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np
from backends import tissue_rgb

from hovercrypt.infer.backends import native_bf16
from hovercrypt.infer.predictor import NetworkPredictor
from hovercrypt.io.atomic import atomic_write_text
from hovercrypt.models.checkpoint import default_model_path


def measure(pred: NetworkPredictor, n: int, repeats: int, mpp: float) -> dict[str, float]:
    """Time ``pred.predict`` on ``n`` tiles of its input size (warm-up first)."""
    tiles = np.stack([tissue_rgb(pred.input_size, mpp)] * n)
    pred.predict(tiles)  # warm-up: export + compile on a compiled backend, allocations
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        pred.predict(tiles)
        times.append(time.perf_counter() - t0)
    sec = statistics.median(times)
    kept = n * pred.output_size**2
    return {
        "input": pred.input_size,
        "output": pred.output_size,
        "tiles_per_call": n,
        "s_per_call": round(sec, 3),
        "kept_px_per_call": kept,
        "s_per_kept_mpx": round(sec / kept * 1e6, 3),
    }


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--windows", default="0,512,768,1024,1536", help="0 = the training window")
    p.add_argument("--border", type=int, default=32)
    p.add_argument("--backends", default="torch,openvino")
    p.add_argument("--precisions", default="f32,bf16", help="OpenVINO arithmetic (bf16: native only)")
    p.add_argument("--batch", type=int, default=8, help="tiles per call at the training window")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--model_path", default="")
    p.add_argument("--out", default="bench_out/window_cost.json")
    args = p.parse_args()
    path = Path(args.model_path) if args.model_path else default_model_path()
    windows = [int(w) for w in args.windows.split(",") if w]
    rows: list[dict] = []
    precisions = [q for q in args.precisions.split(",") if q]
    if "bf16" in precisions and not native_bf16():
        print("this CPU has no native bf16: OpenVINO runs f32 only", file=sys.stderr)
        precisions = [q for q in precisions if q != "bf16"]
    runs = [
        (b, q) for b in args.backends.split(",") if b for q in (precisions if b == "openvino" else ["f32"])
    ]
    for backend, precision in runs:
        pred = NetworkPredictor.from_checkpoint(
            path, batch_size=args.batch, backend=backend, precision=precision
        )
        mpp = pred.config.proc_mpp
        for w in windows:
            pred.configure(w, args.border if w else 0, backend=backend, precision=precision)
            r = {
                "backend": backend,
                "precision": precision,
                "window": w,
                **measure(pred, args.batch if w == 0 else 1, args.repeats, mpp),
            }
            rows.append(r)
            print(json.dumps(r), flush=True)
    ref = next((r for r in rows if r["backend"] == "torch" and r["window"] == 0), rows[0])
    print(f"\nmodel {path}; border {args.border} px; median of {args.repeats}")
    print("| backend | precision | window in -> kept | s / call | s / kept Mpx | vs torch, training window |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        r["vs_reference"] = round(ref["s_per_kept_mpx"] / r["s_per_kept_mpx"], 3)
        name = "training" if r["window"] == 0 else str(r["window"])
        print(
            f"| {r['backend']} | {r['precision']} | {name}: {r['input']} -> {r['output']} "
            f"(x{r['tiles_per_call']}) | "
            f"{r['s_per_call']:.2f} | {r['s_per_kept_mpx']:.2f} | {r['vs_reference']:.2f}x |"
        )
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out, json.dumps({"model": str(path), "border": args.border, "rows": rows}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
