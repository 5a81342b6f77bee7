"""Benchmark: numba ``hv_maps`` against a straightforward numpy reference, same run.

Usage: benchmarks/targets.py [options]

Options:
  --size=N     Image side in pixels [default: 1000].
  --n=N        Number of instances to place [default: 150].
  --repeat=N   Timed runs (median reported) [default: 20].
  --out=PATH   JSON result file [default: bench_out/targets.json].

The reference loops over instances and works on each instance's bounding-box
crop (the usual numpy way). Both are timed after a warm-up call, so numba's
compile time is excluded. Results are checked to agree before timing.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
from docopt import docopt

from hovercrypt.data.targets import hv_maps
from hovercrypt.io.atomic import atomic_write_text
from hovercrypt.testing.synthetic import random_ellipses


def hv_reference(inst: np.ndarray) -> np.ndarray:
    """Per-instance loop over bounding-box crops, vectorised inside each crop."""
    out = np.zeros(inst.shape + (2,), np.float32)
    ids = np.unique(inst)
    ids = ids[ids > 0]
    from scipy import ndimage

    boxes = ndimage.find_objects(inst)
    for k in ids:
        sl = boxes[k - 1]
        crop = inst[sl] == k
        ys, xs = np.nonzero(crop)
        for c, coords in enumerate((xs, ys)):
            d = coords - coords.mean()
            v = np.zeros(d.shape, np.float64)
            neg, pos = d < 0, d > 0
            if neg.any():
                v[neg] = d[neg] / -d[neg].min()
            if pos.any():
                v[pos] = d[pos] / d[pos].max()
            view = out[sl][..., c]
            view[ys, xs] = v
    return out


def _time(fn, arg, repeat: int) -> tuple[float, float]:
    """(median, min) wall time in ms after a warm-up call; min shows the uncontended speed."""
    fn(arg)  # warm-up (numba compile / caches)
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn(arg)
        times.append(time.perf_counter() - t0)
    return float(np.median(times) * 1000.0), float(np.min(times) * 1000.0)


def main(argv: list[str] | None = None) -> dict:
    args = docopt(__doc__, argv=argv)
    size, n, repeat = int(args["--size"]), int(args["--n"]), int(args["--repeat"])
    inst = random_ellipses((size, size), n, radius_range=(15, 45), seed=0, allow_touching=True)
    k = int(len(np.unique(inst)) - 1)
    np.testing.assert_allclose(hv_maps(inst), hv_reference(inst), atol=1e-5)
    (t_nb, m_nb) = _time(hv_maps, inst, repeat)
    (t_ref, m_ref) = _time(hv_reference, inst, max(3, repeat // 4))
    rows = [("numpy reference (bbox crops)", t_ref, m_ref), ("hv_maps (numba, 2 passes)", t_nb, m_nb)]
    print(f"hv_maps on {size}x{size}, {k} instances (after warm-up)")
    print(f"{'method':32s} {'median ms':>10s} {'min ms':>8s} {'ratio':>7s}")
    for name, t, m in rows:
        print(f"{name:32s} {t:10.2f} {m:8.2f} {t_ref / t:6.1f}x")
    result = {
        "size": size,
        "instances": k,
        "reference_ms": t_ref,
        "hv_maps_ms": t_nb,
        "reference_min_ms": m_ref,
        "hv_maps_min_ms": m_nb,
        "speedup": t_ref / t_nb,
        "target_ms": 5.0,
        "meets_target": t_nb <= 5.0,
    }
    out = Path(args["--out"])
    atomic_write_text(out, json.dumps(result, indent=2))
    print(f"wrote {out}")
    return result


if __name__ == "__main__":
    main()
