"""Hash the outputs that a refactoring must leave byte-identical, to compare two trees.

Run it once on a clean copy of the code before a change and once after, each time with that
tree first on ``sys.path``, and compare the two JSON files (they must be equal)::

    cd /tmp/before && PYTHONPATH=/tmp/before python /work/main/tests/tools/snapshot_outputs.py \
        --out /tmp/snap_before.json
    cd /work/main && PYTHONPATH=/work/main python tests/tools/snapshot_outputs.py --out /tmp/snap_after.json
    cmp /tmp/snap_before.json /tmp/snap_after.json   # or: python ... --compare A B

What is hashed (sha256 of the raw array bytes / of canonical JSON):

- ``shipped/<image>``: the shipped model (``hovercrypt/weights``) on 3 images of the GlaS
  patient-disjoint validation split, through ``hovercrypt.infer.tile.segment_image`` at the
  checkpoint's stored post-processing: network maps, instance map, per-pixel type map, instance info;
- ``unet<C>/synthetic``: a randomly initialised tiny UNet (seed 0; 2 and 3 classes) on one
  synthetic H&E image, same path, at the UNet family's default post-processing;
- ``wsi/<file>``: the output files of one small synthetic slide run through the whole-slide
  engine with the oracle predictor (instances, GeoJSON, counts, crypts table, morphometry).

It is a tool, not a test (no ``test_`` prefix): it needs the GlaS data (``--glas`` or
``$HOVERCRYPT_GLAS``, default ``../shared/data/glas/train``) and takes about a minute on 2 cores.
The synthetic and oracle helpers are imported from ``hovercrypt.testing`` when it exists and from
their older homes otherwise, so the same script runs on both trees.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib
import json
import os
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

GLAS_IMAGES = ("train_12", "train_18", "train_2")  # first three of the GlaS validation split, by name
WSI_FILES = ("instances.jsonl", "synth.geojson", "crypts.csv", "morphometry.json")


def _import(*names: str) -> Any:
    """The first module of ``names`` that imports (helpers moved between releases)."""
    for name in names:
        try:
            return importlib.import_module(name)
        except ModuleNotFoundError:
            continue
    raise ModuleNotFoundError(f"none of {names} can be imported")


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _sha_array(a: np.ndarray) -> str:
    a = np.ascontiguousarray(a)
    return _sha(f"{a.dtype.str}{a.shape}".encode() + a.tobytes())


def _plain(v: Any) -> Any:
    if isinstance(v, dict):
        return {str(k): _plain(x) for k, x in v.items()}
    if isinstance(v, list | tuple):
        return [_plain(x) for x in v]
    if isinstance(v, np.ndarray):
        return _plain(v.tolist())
    if isinstance(v, np.generic):
        return v.item()
    return v


def _sha_json(v: Any) -> str:
    return _sha(json.dumps(_plain(v), sort_keys=True).encode())


def _segment_hashes(predictor: Any, image: np.ndarray, proc_mpp: float, params: dict[str, Any],
                    input_mpp: float | None) -> dict[str, str]:
    from hovercrypt.infer.tile import predict_resampled, segment_image

    maps = predict_resampled(predictor, image, proc_mpp, input_mpp, batch_size=8)
    inst, info = segment_image(predictor, image, proc_mpp, params, input_mpp=input_mpp, batch_size=8)
    types = np.zeros(inst.shape, np.int32)
    for i, rec in info.items():
        types[inst == i] = int(rec["type"] or 0)
    out = {f"maps_{k}": _sha_array(v) for k, v in sorted(maps.items())}
    out.update(inst=_sha_array(inst), type_map=_sha_array(types), info=_sha_json(info), count=str(len(info)))
    return out


def shipped_model(glas: Path) -> dict[str, dict[str, str]]:
    from hovercrypt.infer.predictor import NetworkPredictor
    from hovercrypt.io.images import read_rgb
    from hovercrypt.models.checkpoint import default_model_path

    pred = NetworkPredictor.from_checkpoint(default_model_path(), batch_size=8)
    cfg = pred.config
    params = cfg.postproc.pixels(cfg.proc_mpp)
    return {
        f"shipped/{name}": _segment_hashes(pred, read_rgb(glas / f"{name}.png"), cfg.proc_mpp, params, 0.465)
        for name in GLAS_IMAGES
    }


def tiny_unet() -> dict[str, dict[str, str]]:
    import torch

    from hovercrypt.config import Config, ModelConfig
    from hovercrypt.infer.predictor import NetworkPredictor
    from hovercrypt.models import build_model

    synthetic = _import("hovercrypt.testing.synthetic", "hovercrypt.data.synthetic")
    inst = synthetic.random_ellipses((300, 340), 12, seed=3)
    image = synthetic.render_he(inst, seed=3)
    out = {}
    for classes in (2, 3):
        mcfg = ModelConfig(arch="unet", mode="fast", unet_base_width=4, unet_classes=classes, nr_types=3)
        cfg = Config(model=mcfg)
        torch.manual_seed(0)
        model = build_model(mcfg)
        pred = NetworkPredictor(model, "cpu", batch_size=8, amp="none", config=cfg)
        params = cfg.postproc.pixels(1.0)
        out[f"unet{classes}/synthetic"] = _segment_hashes(pred, image, 1.0, params, None)
        out[f"unet{classes}/clean_maps"] = _semantic_maps_hashes(inst, classes, params)
    return out


def _semantic_maps_hashes(inst: np.ndarray, classes: int, params: dict[str, Any]) -> dict[str, str]:
    """The UNet post-processing on noisy one-hot maps of a known layout (the random UNet's are flat)."""
    from hovercrypt.data.targets import seg_target
    from hovercrypt.postproc import maps_to_instances

    seg = seg_target(inst, classes, 2)
    prob = np.eye(classes, dtype=np.float32)[seg]
    prob += np.random.default_rng(5).uniform(0.0, 0.6, prob.shape).astype(np.float32)
    prob /= prob.sum(axis=2, keepdims=True)
    pred = np.asarray(maps_to_instances({"seg": prob}, "unet", params), np.int32)
    return {"inst": _sha_array(pred), "count": str(int(pred.max()))}


def oracle_wsi(work: Path) -> dict[str, dict[str, str]]:
    from hovercrypt.config import Config
    from hovercrypt.infer.wsi import WsiOptions
    from hovercrypt.infer.wsi_cli import run_wsi
    from hovercrypt.io.type_info import TypeInfo

    slides = _import("hovercrypt.testing.slides", "hovercrypt.io.synthetic_slide")
    oracle = _import("hovercrypt.testing.oracle", "hovercrypt.infer.oracle")
    size, mpp, proc_mpp = 4096, 0.5, 2.0
    f = proc_mpp / mpp
    tissue = [(256, 256, 2300, 3900), (2600, 300, 3900, 2500)]
    radii = (32.0, 72.0)
    fixed = slides.boundary_crypts(tissue, size, size, [int(384 * f), int(128 * f)], radii, seed=1)
    layout = slides.random_layout(size, size, tissue, 150, radii, seed=0, gap=16, fixed=fixed, n_types=2)
    path = slides.write_layout_slide(work / "synth.tif", layout, mpp)
    post = Config().postproc
    post = type(post)(**{**_fields(post), "min_object_area_um2": 100.0})
    run = {"tile_shape": 384, "margin_um": 100.0}
    common = {"proc_mpp": proc_mpp, "postproc": post.pixels(proc_mpp), "type_info": TypeInfo.default(3),
              "progress": False}
    kw: dict[str, Any] = {}
    if "infer" in _field_names(WsiOptions):  # the run settings live in InferConfig
        from hovercrypt.config import InferConfig

        opts = WsiOptions(**common, infer=InferConfig(**run, postproc_workers=2))
    else:
        opts = WsiOptions(**common, **run)
        kw["workers"] = 2
    orc = oracle.OraclePredictor(layout.to_processing(f), 160, 128, nr_types=3)
    (res,) = run_wsi([path], work / "out", orc, opts, pool_kind="thread", **kw)
    folder = work / "out" / "synth"
    hashes = {name: _sha((folder / name).read_bytes()) for name in WSI_FILES}
    hashes["count"] = f"{res.status} {res.total} {sorted(res.types.items())}"
    return {"wsi/synth": hashes}


def _fields(obj: Any) -> dict[str, Any]:
    return {name: getattr(obj, name) for name in _field_names(obj)}


def _field_names(obj: Any) -> list[str]:
    import dataclasses

    return [f.name for f in dataclasses.fields(obj)]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, help="JSON file to write")
    ap.add_argument("--glas", type=Path, default=Path(os.environ.get("HOVERCRYPT_GLAS",
                                                                     "../shared/data/glas/train")))
    ap.add_argument("--compare", nargs=2, type=Path, metavar=("A", "B"), help="compare two snapshots")
    args = ap.parse_args(argv)
    if args.compare:
        a, b = (json.loads(p.read_text()) for p in args.compare)
        diff = sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k))
        print("identical" if not diff else f"differ: {diff}")
        return 1 if diff else 0
    if args.out is None:
        ap.error("--out is required (or --compare A B)")
    import torch

    torch.set_num_threads(1)  # a fixed thread count: float sums do not depend on the machine's load
    snap: dict[str, Any] = {}
    snap.update(shipped_model(args.glas))
    snap.update(tiny_unet())
    with tempfile.TemporaryDirectory() as tmp:
        snap.update(oracle_wsi(Path(tmp)))
    args.out.write_text(json.dumps(snap, indent=1, sort_keys=True) + "\n")
    print(f"{len(snap)} entries -> {args.out} (hovercrypt from {sys.modules['hovercrypt'].__file__})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
