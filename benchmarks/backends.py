"""CPU execution backends for the network (issue 15): PyTorch vs ONNX Runtime vs OpenVINO.

The shipped model (or ``--model_path``) runs on one ``--window`` px input of real tissue (a
GlaS training image at the processing resolution, mirrored to the window) in every backend:

- ``torch``: eager PyTorch fp32, NHWC input (what ``run_infer.py`` does by default);
- ``torch_cl``: the same with the weights stored channels_last too (``--channels_last``);
- ``onnxruntime``: the network + map conversion exported to ONNX, CPU execution provider;
- ``openvino_f32`` / ``openvino``: OpenVINO on the CPU with ``INFERENCE_PRECISION_HINT`` f32,
  and with its default precision (bf16 on CPUs that have it).

For each: seconds per window (median of ``--repeats`` after one warm-up) at ``--threads``
intra-op threads, the speedup against ``torch`` and the largest absolute difference of every
output map against ``torch`` (NP / type probabilities and HV offsets). Writes
``bench_out/backends.json``.

Usage: python benchmarks/backends.py [--window 1024] [--threads 2] [--repeats 3] [--model_path CKPT]
       [--backends torch,torch_cl,onnxruntime,openvino_f32,openvino]
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import sys
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path

import numpy as np
import torch

from hovercrypt.infer.backends import _MapsGraph, make_runner
from hovercrypt.io.atomic import atomic_write_text
from hovercrypt.models.checkpoint import default_model_path, load_model

GLAS = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "glas" / "train"


def tissue_rgb(window: int, mpp: float) -> np.ndarray:
    """(window, window, 3) uint8 real tissue: a GlaS image resampled to ``mpp``, mirrored to fill it."""
    import cv2

    from hovercrypt.io.images import read_rgb

    path = sorted(p for p in GLAS.glob("*.png") if "_anno" not in p.name)[0]
    img = read_rgb(path)
    f = 0.465 / mpp
    img = cv2.resize(img, None, fx=f, fy=f, interpolation=cv2.INTER_AREA)
    reps = (-(-window // img.shape[0]) + 1, -(-window // img.shape[1]) + 1)
    img = np.pad(img, ((0, img.shape[0] * reps[0]), (0, img.shape[1] * reps[1]), (0, 0)), mode="symmetric")
    return np.ascontiguousarray(img[:window, :window])


def tissue_window(window: int, mpp: float) -> np.ndarray:
    """(1, 3, window, window) float input in [0, 1]: :func:`tissue_rgb` as the network takes it."""
    x = tissue_rgb(window, mpp).astype(np.float32) / 255.0
    return np.ascontiguousarray(x.transpose(2, 0, 1)[None])


def _time(fn: Callable[[], dict[str, np.ndarray]], repeats: int) -> tuple[float, dict[str, np.ndarray]]:
    out = fn()  # warm-up (graph export and compilation, allocations)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), out


def run_backends(
    model: torch.nn.Module, x: np.ndarray, names: list[str], threads: int, repeats: int
) -> dict[str, dict]:
    """Time every backend in ``names`` on input ``x``; maps are compared with ``torch``'s.

    The compiled backends are the library's own runners (:func:`make_runner`), so this measures
    exactly what ``--backend`` runs; ``openvino`` only drops their fp32 precision hint.
    """
    torch.set_num_threads(threads)
    xt = torch.from_numpy(x).contiguous(memory_format=torch.channels_last)
    graph = _MapsGraph(model)

    def torch_fn(m: torch.nn.Module) -> Callable[[], dict[str, np.ndarray]]:
        def fn() -> dict[str, np.ndarray]:
            with torch.inference_mode():
                return {k: t.numpy() for k, t in zip(graph.keys, m(xt))}

        return fn

    results: dict[str, dict] = {}
    for name in names:
        if name == "torch":
            fn = torch_fn(graph.module)
        elif name == "torch_cl":
            fn = torch_fn(copy.deepcopy(graph.module).to(memory_format=torch.channels_last))
        elif name in ("onnxruntime", "openvino_f32"):
            fn = partial(make_runner(name.removesuffix("_f32"), model, threads), x)
        elif name == "openvino":
            import openvino as ov

            props = {"INFERENCE_NUM_THREADS": threads, "PERFORMANCE_HINT": "LATENCY"}
            core = ov.Core()
            compiled = core.compile_model(core.read_model(graph.onnx_bytes(x.shape[2])), "CPU", props)
            fn = lambda c=compiled: dict(zip(graph.keys, (np.asarray(v) for v in c(x).values())))  # noqa: E731
        else:
            raise SystemExit(f"error: unknown backend {name!r}")
        sec, out = _time(fn, repeats)
        results[name] = {"s_per_window": round(sec, 3), "maps": out}
    ref_maps = results["torch"]["maps"]
    for r in results.values():
        maps = r.pop("maps")
        r["speedup"] = round(results["torch"]["s_per_window"] / r["s_per_window"], 3)
        r["max_abs_diff"] = {k: float(np.abs(maps[k] - ref_maps[k]).max()) for k in graph.keys}
    return results


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--window", type=int, default=1024)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--model_path", default=None)
    p.add_argument("--backends", default="torch,torch_cl,onnxruntime,openvino_f32,openvino")
    p.add_argument("--out", default="bench_out/backends.json")
    args = p.parse_args()
    names = [n for n in args.backends.split(",") if n]
    if names[0] != "torch":
        names.insert(0, "torch")  # the reference of every ratio and difference
    path = args.model_path or default_model_path()
    model, cfg = load_model(path, "cpu")
    model = model.float().eval()
    x = tissue_window(args.window, cfg.proc_mpp)
    res = run_backends(model, x, names, args.threads, args.repeats)
    print(f"model {path}, window {args.window} px, {args.threads} threads, median of {args.repeats}")
    print("| backend | s / window | speedup vs torch | max |diff| per map |")
    print("|---|---|---|---|")
    for name, r in res.items():
        diffs = ", ".join(f"{k} {v:.2e}" for k, v in r.get("max_abs_diff", {}).items())
        print(f"| {name} | {r['s_per_window']:.3f} | {r.get('speedup', 1.0):.2f} | {diffs} |")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(
        out,
        json.dumps(
            {
                "model": str(path),
                "window": args.window,
                "threads": args.threads,
                "repeats": args.repeats,
                "backends": res,
            },
            indent=1,
        ),
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
