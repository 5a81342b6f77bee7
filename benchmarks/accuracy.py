"""Accuracy of HoVer-Net and the UNet baseline on held-out validation data, and its robustness.

Every model runs through the same tile inference (``segment_image``) as ``run_infer.py``, on
whole validation images at their native resolution, and is scored with the same metrics:

- **GlaS validation split** (patient-disjoint, ``data.valid_fraction`` / ``data.split_seed``, as
  ``extract_patches.py --split``): GlaS object F1 / Dice / Hausdorff, AJI, PQ and type F1
  (centroids paired within ``--radius_um``), pooled over the images;
- **robustness** on the same images: told a um/px 25% too high and 25% too low (the image is
  then resampled wrongly, as for a slide with bad metadata), and stain-shifted (haematoxylin and
  eosin densities scaled by factors drawn per image from [0.7, 1.3], seed 0); the drop in object
  F1 against the plain score is printed;
- **HuBMAP validation region** (the held-out quarter of the ``glas_hubmap`` configuration):
  crypt precision / recall / F1 by the GlaS rule (a prediction matches a crypt it covers by at
  least 50%), pixels outside ``_valid.png`` ignored. An overlay PNG is written for inspection.

Usage:
  accuracy.py [--hovernet=<ckpt>] [--unet=<ckpt>] [--config=<spec>] [--out=<json>] [--limit=<n>]
              [--radius_um=<um>] [--batch_size=<n>] [--tta] [--no_robustness] [--no_hubmap]
              [--stain_norm=<method>] [--window=<px>] [--window_border=<px>] [--backend=<name>]
              [--precision=<p>]

Options:
  --hovernet=<ckpt>       HoVer-Net checkpoint. Default: the shipped model.
  --unet=<ckpt>           UNet checkpoint to compare (none is shipped; skipped when not given).
  --config=<spec>         Configuration whose sources and split define the validation data
                          [default: glas_hubmap].
  --out=<json>            Where to write the JSON [default: bench_out/accuracy.json].
  --limit=<n>             Only the first n GlaS validation images (quick look).
  --radius_um=<um>        Centroid pairing radius for the type metrics [default: 50].
  --batch_size=<n>        Tiles per network batch [default: 8].
  --tta                   Flip test-time augmentation (4 passes per tile, averaged), as run_infer.py --tta.
  --no_robustness         Skip the wrong-um/px and stain-shift runs.
  --no_hubmap             Skip the HuBMAP validation region.
  --stain_norm=<method>   Stain normalisation before inference: none or reinhard [default: none].
  --window=<px>           Inference window, as run_infer.py --window; 0 = the training window [default: 0].
  --window_border=<px>    Border dropped around a large window's output [default: 32].
  --backend=<name>        Network backend: torch, openvino, onnxruntime or auto [default: torch].
  --precision=<p>         OpenVINO arithmetic, as run_infer.py --precision: auto, f32 or bf16
                          [default: auto].
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
from docopt import docopt
from tqdm import tqdm

from hovercrypt.data.augment import hed_jitter
from hovercrypt.data.patches import dataset_splits
from hovercrypt.data.readers import read_record
from hovercrypt.infer.predictor import NetworkPredictor
from hovercrypt.infer.stain import lab_stats, reinhard
from hovercrypt.infer.tile import segment_image
from hovercrypt.io.atomic import atomic_write_text
from hovercrypt.io.type_info import load_type_info, type_info_path
from hovercrypt.metrics.evaluate import aggregate, evaluate_detailed
from hovercrypt.models.checkpoint import default_model_path
from hovercrypt.models.registry import get_family
from hovercrypt.presets import load_config

COLUMNS = [
    ("obj_f1", "object F1"),
    ("obj_dice", "object Dice"),
    ("obj_hausdorff_um", "object Hausdorff (um)"),
    ("aji", "AJI"),
    ("pq", "PQ"),
    ("dice", "pixel Dice"),
    ("f1_detection", "detection F1"),
    ("f1_type1", "F1 benign"),
    ("f1_type2", "F1 malignant"),
    ("type_accuracy", "type accuracy"),
]


def validation_sets(spec: str) -> tuple[Any, list[tuple[Any, list[Any]]]]:
    """The configuration and ``(source, validation records)`` per source (nothing trained on)."""
    cfg = load_config(spec)
    return cfg, [(src, va) for src, _, va in dataset_splits(cfg)]


def stain_shift(image: np.ndarray, index: int) -> np.ndarray:
    """The seeded stain shift of the robustness check: H and E densities x U[0.7, 1.3] each."""
    f = np.random.default_rng([0, index]).uniform(0.7, 1.3, size=2)
    return hed_jitter(image, (float(f[0]), float(f[1])))


def evaluate_model(
    pred: NetworkPredictor, src: Any, records: list[Any], radius_um: float, batch_size: int,
    mpp_factor: float = 1.0, stain: bool = False, hausdorff: bool = True, overlay: Path | None = None,
    norm_target: np.ndarray | None = None,
) -> dict[str, Any]:
    """Run one predictor over the records of one source; pooled and mean metrics plus timing.

    ``mpp_factor`` tells the model a resolution that far off the true one; ``stain`` shifts
    the stains first. Pixels outside a valid-pixel mask are removed from both sides.
    """
    pcfg = pred.config
    params = pcfg.postproc.pixels(pcfg.proc_mpp)
    info_types = load_type_info(type_info_path())
    rows, raws, seconds = [], [], 0.0
    for i, rec in enumerate(tqdm(records, desc=src.source_name(), unit="img", leave=False)):
        sample = read_record(rec, src, info_types)
        image = stain_shift(sample.image, i) if stain else sample.image
        if norm_target is not None:
            image = reinhard(image, norm_target)
        t0 = time.perf_counter()
        inst, info = segment_image(
            pred, image, pcfg.proc_mpp, params, input_mpp=src.image_mpp * mpp_factor, batch_size=batch_size
        )
        seconds += time.perf_counter() - t0
        true = sample.inst
        if sample.valid is not None:
            inst, true = np.where(sample.valid, inst, 0), np.where(sample.valid, true, 0)
        if overlay is not None:
            save_overlay(overlay.with_name(f"{overlay.stem}_{rec.name}.png"), sample.image, true, inst)
        pred_types = {i: int(d["type"] or 0) for i, d in info.items()}
        m, raw = evaluate_detailed(
            true, inst, sample.type_map, pred_types, mpp=src.image_mpp, radius_um=radius_um,
            hausdorff=hausdorff,
        )
        m["image"] = rec.name
        rows.append(m)
        raws.append(raw)
    numeric = [{k: v for k, v in r.items() if k != "image"} for r in rows]
    summary = aggregate(numeric, raws)
    return {
        "seconds_per_image": seconds / max(1, len(records)),
        "pooled": summary["pooled"],
        "counts": summary["counts"],
        "mean": summary["mean"],
        "per_image": rows,
    }


def save_overlay(path: Path, image: np.ndarray, true: np.ndarray, pred: np.ndarray, scale: int = 4) -> None:
    """Annotated crypts in green, predictions in magenta, downsampled ``scale`` x (for a look)."""
    import cv2

    from hovercrypt.io.images import write_png

    size = (image.shape[1] // scale, image.shape[0] // scale)
    small = cv2.resize(image, size, interpolation=cv2.INTER_AREA)
    for lab, colour in ((true, (0, 200, 0)), (pred, (230, 0, 230))):
        lab_s = cv2.resize(lab.astype(np.int32), small.shape[1::-1], interpolation=cv2.INTER_NEAREST)
        edge = (cv2.dilate(lab_s.astype(np.float32), np.ones((3, 3))) != lab_s) | (
            cv2.erode(lab_s.astype(np.float32), np.ones((3, 3))) != lab_s
        )
        small[edge & (cv2.dilate((lab_s > 0).astype(np.uint8), np.ones((3, 3))) > 0)] = colour
    path.parent.mkdir(parents=True, exist_ok=True)
    write_png(path, small)


def evaluate_all(
    ckpt: Path, sets: list, args: dict, out_dir: Path, pred: NetworkPredictor | None = None
) -> dict[str, Any]:
    """Plain GlaS, robustness, and HuBMAP results of one checkpoint.

    ``pred``: the checkpoint already loaded (``benchmarks/families.py`` counts its parameters
    and fixes its backend first); by default it is loaded here with ``--batch_size`` / ``--tta``.
    """
    bs = int(args["--batch_size"])
    if pred is None:
        window = int(args["--window"])
        pred = NetworkPredictor.from_checkpoint(
            ckpt, batch_size=1 if window else bs, tta=bool(args["--tta"]), window=window,
            window_border=int(args["--window_border"]) if window else 0, backend=args["--backend"],
            precision=args["--precision"],
        )  # fmt: skip
    radius = float(args["--radius_um"])
    norm = None
    if args["--stain_norm"] == "reinhard":  # target: the GlaS *training* images (never validation)
        splits = dataset_splits(load_config(args["--config"]))
        glas_train = [tr for src, tr, _ in splits if src.source_name() == "glas"]
        src0 = next(src for src, _ in sets if src.source_name() == "glas")
        norm = lab_stats(read_record(r, src0, None).image for r in glas_train[0])
    elif args["--stain_norm"] != "none":
        raise SystemExit(f"--stain_norm must be none or reinhard, got {args['--stain_norm']!r}")
    pcfg = pred.config
    res: dict[str, Any] = {
        "checkpoint": str(ckpt), "arch": pred.arch, "tta": bool(args["--tta"]), "backend": pred.backend,
        "precision": pred.precision,
        "windows": [pred.input_size, pred.output_size],
        "stain_norm": args["--stain_norm"], "mode": pcfg.model.mode, "proc_mpp": pcfg.proc_mpp,
        "encoder": getattr(pcfg.model, get_family(pred.arch).encoder_field),
    }
    for src, records in sets:
        name = src.source_name()
        if not records or (name != "glas" and args["--no_hubmap"]):
            continue
        if name == "glas" and args["--limit"]:
            records = records[: int(args["--limit"])]
        overlay = None if name == "glas" else out_dir / f"overlay_{pred.arch}_{name}.png"
        res[name] = evaluate_model(pred, src, records, radius, bs, hausdorff=name == "glas", overlay=overlay,
                                   norm_target=norm)
        if name != "glas" or args["--no_robustness"]:
            continue
        base = res[name]["pooled"]["obj_f1"]
        rob = {}
        conditions = (
            ("mpp_told_25pct_high", {"mpp_factor": 1.25}),
            ("mpp_told_25pct_low", {"mpp_factor": 0.75}),
            ("stain_shifted", {"stain": True}),
        )
        for key, kw in conditions:
            r = evaluate_model(pred, src, records, radius, bs, hausdorff=False, norm_target=norm, **kw)
            rob[key] = {"obj_f1": r["pooled"]["obj_f1"], "obj_dice": r["pooled"]["obj_dice"],
                        "drop_obj_f1": base - r["pooled"]["obj_f1"]}
        res["robustness"] = rob
    return res


def format_table(results: dict[str, dict[str, Any]]) -> str:
    """Markdown tables: GlaS validation metrics, robustness drops, HuBMAP crypt detection."""
    names = [n for n in results if "glas" in results[n]]
    lines = ["| GlaS validation (pooled) | " + " | ".join(names) + " |", "|---|" + "---|" * len(names)]
    for key, label in COLUMNS:
        vals = []
        for n in names:
            v = results[n]["glas"]["pooled"].get(key)
            vals.append("n/a" if v is None else f"{v:.3f}" if key != "obj_hausdorff_um" else f"{v:.1f}")
        lines.append(f"| {label} | " + " | ".join(vals) + " |")
    lines.append("| s / image (CPU, this run) | " + " | ".join(
        f"{results[n]['glas']['seconds_per_image']:.2f}" for n in names) + " |")
    rob = [n for n in names if "robustness" in results[n]]
    if rob:
        lines += ["", "| robustness: object F1 (drop) | " + " | ".join(rob) + " |"]
        lines.append("|---|" + "---|" * len(rob))
        for key in results[rob[0]]["robustness"]:
            rs = [results[n]["robustness"][key] for n in rob]
            cells = [f"{r['obj_f1']:.3f} (drop {r['drop_obj_f1']:+.3f})" for r in rs]
            lines.append(f"| {key} | " + " | ".join(cells) + " |")
    hub = [n for n in results if "hubmap" in results[n]]
    if hub:
        lines += ["", "| HuBMAP validation region | " + " | ".join(hub) + " |"]
        lines.append("|---|" + "---|" * len(hub))
        for key in ("obj_recall", "obj_precision", "obj_f1", "obj_dice", "pq"):
            vals = [f"{results[n]['hubmap']['pooled'][key]:.3f}" for n in hub]
            lines.append(f"| {key} | " + " | ".join(vals) + " |")
        for key in ("n_true", "n_pred", "obj_tp", "obj_fp", "obj_fn"):
            vals = [str(results[n]["hubmap"]["counts"][key]) for n in hub]
            lines.append(f"| {key} | " + " | ".join(vals) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = docopt(__doc__, argv=argv)
    cfg, sets = validation_sets(args["--config"])
    glas = [recs for src, recs in sets if src.source_name() == "glas"]
    if not glas or not glas[0]:
        print(f"no GlaS validation images found for config {args['--config']}", file=sys.stderr)
        return 1
    models: dict[str, Path] = {"hovernet": Path(args["--hovernet"] or default_model_path())}
    if args["--unet"]:
        models["unet"] = Path(args["--unet"])
    for src, recs in sets:
        pats = sorted({str(r.patient or r.name) for r in recs})
        print(f"{src.source_name()}: {len(recs)} validation images ({', '.join(pats)})")
    out = Path(args["--out"])
    results = {name: evaluate_all(path, sets, args, out.parent) for name, path in models.items()}
    print(format_table(results))
    payload = {
        "config": cfg.name,
        "validation": {src.source_name(): [r.name for r in recs] for src, recs in sets},
        "radius_um": float(args["--radius_um"]),
        "models": results,
    }
    atomic_write_text(out, json.dumps(payload, indent=2, default=float))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
