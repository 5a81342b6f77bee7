"""Accuracy of HoVer-Net and the UNet baseline on the patient-disjoint GlaS validation split.

Both models run through the same tile inference (``segment_image``) on the full validation
images at their native 0.465 um/px, and are scored with the same metrics against the
annotations: GlaS object F1 / Dice / Hausdorff, AJI, PQ, and type F1 (benign / malignant,
centroids paired within ``--radius_um``). The split is the one ``extract_patches.py --split``
makes from ``data.valid_fraction`` and ``data.split_seed``, so no validation patient was trained on.

Usage:
  accuracy.py [--hovernet=<ckpt>] [--unet=<ckpt>] [--glas_dir=<dir>] [--out=<json>]
              [--limit=<n>] [--radius_um=<um>] [--batch_size=<n>] [--tta]

Options:
  --hovernet=<ckpt>   HoVer-Net checkpoint. Default: the shipped model.
  --unet=<ckpt>       UNet checkpoint (skipped when not given and not shipped).
  --glas_dir=<dir>    GlaS training folder [default: ../shared/data/glas/train].
  --out=<json>        Where to write the JSON [default: bench_out/accuracy.json].
  --limit=<n>         Only the first n validation images (quick look).
  --radius_um=<um>    Centroid pairing radius for the type metrics [default: 50].
  --batch_size=<n>    Tiles per network batch [default: 8].
  --tta               Flip test-time augmentation (4 passes per tile, averaged), as run_infer.py --tta.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any

from docopt import docopt
from tqdm import tqdm

import hovercrypt
from hovercrypt.data.readers import list_records, read_record
from hovercrypt.data.split import patient_split
from hovercrypt.infer.predictor import NetworkPredictor
from hovercrypt.infer.tile import segment_image
from hovercrypt.io.atomic import atomic_write_text
from hovercrypt.io.type_info import load_type_info
from hovercrypt.metrics.evaluate import aggregate, evaluate_detailed
from hovercrypt.models.checkpoint import default_model_path
from hovercrypt.presets import glas_config

SHIPPED_UNET = Path(hovercrypt.__file__).parent / "weights" / "hovercrypt_glas_unet.pt"
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


def validation_records(glas_dir: str) -> tuple[Any, list[Any]]:
    cfg = glas_config(glas_dir)
    records = list_records(cfg.data)
    _, valid = patient_split(
        [(r.name, r.patient) for r in records], cfg.data.valid_fraction, cfg.data.split_seed
    )
    return cfg, [r for r in records if r.name in valid]


def evaluate_model(
    ckpt: Path, cfg: Any, records: list[Any], radius_um: float, batch_size: int, tta: bool = False
) -> dict[str, Any]:
    """Run one checkpoint over the validation images; pooled and mean metrics plus timing."""
    pred = NetworkPredictor.from_checkpoint(ckpt, batch_size=batch_size, tta=tta)
    pcfg = pred.config
    params = pcfg.postproc.pixels(pcfg.proc_mpp)
    info_types = load_type_info("type_info.json") if Path("type_info.json").is_file() else None
    rows, raws, seconds = [], [], 0.0
    for rec in tqdm(records, desc=ckpt.name, unit="img"):
        sample = read_record(rec, cfg.data, info_types)
        t0 = time.perf_counter()
        inst, info = segment_image(
            pred, sample.image, pcfg.proc_mpp, params, input_mpp=cfg.data.image_mpp, batch_size=batch_size
        )
        seconds += time.perf_counter() - t0
        pred_types = {i: int(d["type"] or 0) for i, d in info.items()}
        m, raw = evaluate_detailed(
            sample.inst, inst, sample.type_map, pred_types, mpp=cfg.data.image_mpp, radius_um=radius_um
        )
        m["image"] = rec.name
        rows.append(m)
        raws.append(raw)
    numeric = [{k: v for k, v in r.items() if k != "image"} for r in rows]
    summary = aggregate(numeric, raws)
    return {
        "checkpoint": str(ckpt),
        "arch": pred.arch,
        "tta": tta,
        "encoder": pcfg.model.encoder if pred.arch == "hovernet" else pcfg.model.unet_encoder,
        "mode": pcfg.model.mode,
        "proc_mpp": pcfg.proc_mpp,
        "seconds_per_image": seconds / max(1, len(records)),
        "pooled": summary["pooled"],
        "mean": summary["mean"],
        "per_image": rows,
    }


def format_table(results: dict[str, dict[str, Any]]) -> str:
    names = list(results)
    lines = ["| metric (pooled over the validation images) | " + " | ".join(names) + " |"]
    lines.append("|---|" + "---|" * len(names))
    for key, label in COLUMNS:
        vals = []
        for n in names:
            v = results[n]["pooled"].get(key)
            vals.append("n/a" if v is None else f"{v:.3f}" if key != "obj_hausdorff_um" else f"{v:.1f}")
        lines.append(f"| {label} | " + " | ".join(vals) + " |")
    lines.append("| s / image (CPU, this run) | " + " | ".join(
        f"{results[n]['seconds_per_image']:.2f}" for n in names) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = docopt(__doc__, argv=argv)
    cfg, records = validation_records(args["--glas_dir"])
    if not records:
        print(f"no validation images found under {args['--glas_dir']}", file=sys.stderr)
        return 1
    if args["--limit"]:
        records = records[: int(args["--limit"])]
    models: dict[str, Path] = {"hovernet": Path(args["--hovernet"] or default_model_path())}
    unet = args["--unet"] or (SHIPPED_UNET if SHIPPED_UNET.is_file() else None)
    if unet:
        models["unet"] = Path(unet)
    print(f"{len(records)} validation images, patients "
          f"{sorted({r.patient for r in records}, key=lambda p: int(p) if p.isdigit() else 0)}")
    results = {
        name: evaluate_model(
            path, cfg, records, float(args["--radius_um"]), int(args["--batch_size"]), bool(args["--tta"])
        )
        for name, path in models.items()
    }
    print(format_table(results))
    out = Path(args["--out"])
    payload = {
        "images": [r.name for r in records],
        "radius_um": float(args["--radius_um"]),
        "models": results,
    }
    atomic_write_text(out, json.dumps(payload, indent=2, default=float))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
