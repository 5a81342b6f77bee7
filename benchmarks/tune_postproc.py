"""Tune a checkpoint's post-processing on the training split of every source, then check it on validation.

The post-processing defaults were set on ground-truth maps, which are clean; a
trained network's maps are not. This script predicts the maps of every image
once, then searches the post-processing parameters one at a time (coordinate
descent, ``--rounds`` passes over the parameter list) to maximise
``score = (object F1 + object Dice + PQ) / 3`` pooled over the **training**
images of every source of ``--config`` (GlaS training patients and the HuBMAP
training quarter for ``glas_hubmap``; pixels outside ``_valid.png`` are not
scored); a value is taken only if it gains more than 0.001. Validation images
are never used to choose a value: they are scored once with the stored
parameters and once with the tuned ones, so the gain reported is an honest
held-out number.

``--write_postproc`` saves the tuned values as a JSON file that
``run_infer.py --postproc=<json>`` accepts; ``--update_checkpoint`` stores them
in the checkpoint's config (atomically) so that they become its defaults.

Usage:
  tune_postproc.py [--model=<ckpt>] [--config=<spec>] [--out=<json>] [--rounds=<n>]
                   [--limit=<n>] [--write_postproc=<json>] [--update_checkpoint]

Options:
  --model=<ckpt>            Checkpoint to tune. Default: the shipped HoVer-Net.
  --config=<spec>           Configuration whose sources and split define the images [default: glas_hubmap].
  --out=<json>              Where to write the report [default: bench_out/tune_postproc.json].
  --rounds=<n>              Coordinate-descent passes [default: 2].
  --limit=<n>               Only the first n images of each split (quick look).
  --write_postproc=<json>   Also write the tuned post-processing section here.
  --update_checkpoint       Store the tuned values in the checkpoint's config.
"""

from __future__ import annotations

import dataclasses
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np
from docopt import docopt
from tqdm import tqdm

from hovercrypt.data.patches import dataset_splits
from hovercrypt.data.readers import read_record
from hovercrypt.data.resample import resize_labels
from hovercrypt.infer.predictor import NetworkPredictor
from hovercrypt.infer.tile import predict_resampled
from hovercrypt.io.atomic import atomic_write_text
from hovercrypt.models.checkpoint import default_model_path, update_stored_config
from hovercrypt.postproc.tune import METRICS, Case, score_postproc, tune_postproc
from hovercrypt.presets import load_config


def predict_cases(pred: NetworkPredictor, records: list[Any], src: Any, desc: str) -> list[Case]:
    """Network maps of each record at the model's processing resolution (the expensive part, done once).

    Images with a valid-pixel mask (large regions) are scored at the processing resolution,
    with the annotation resampled there, to keep the many metric evaluations of the search cheap.
    """
    proc_mpp = float(pred.config.proc_mpp)
    cases = []
    for rec in tqdm(records, desc=desc, unit="img"):
        sample = read_record(rec, src, None)
        maps = predict_resampled(pred, sample.image, proc_mpp, src.image_mpp)
        if sample.valid is None:
            cases.append(Case(rec.name, maps, sample.inst))
            continue
        hw = next(iter(maps.values())).shape[:2]
        true = resize_labels(sample.inst, hw)
        valid = resize_labels(sample.valid.astype(np.uint8), hw) > 0
        cases.append(Case(rec.name, maps, true, valid))
    return cases


def main(argv: list[str] | None = None) -> int:
    args = docopt(__doc__, argv=argv)
    ckpt = Path(args["--model"] or default_model_path())
    cfg = load_config(args["--config"])
    splits = dataset_splits(cfg)
    if args["--limit"]:
        n = int(args["--limit"])
        splits = [(src, tr[:n], va[:n]) for src, tr, va in splits]
    if not any(tr for _, tr, _ in splits) or not any(va for _, _, va in splits):
        print(f"no training / validation images for config {args['--config']}", file=sys.stderr)
        return 1
    pred = NetworkPredictor.from_checkpoint(ckpt, batch_size=8)
    arch, proc_mpp, image_mpp = pred.arch, float(pred.config.proc_mpp), cfg.data.image_mpp
    stored = pred.config.postproc
    train_cases, valid_cases = [], []
    for src, tr, va in splits:
        train_cases += predict_cases(pred, tr, src, f"maps (train, {src.source_name()})")
        valid_cases += predict_cases(pred, va, src, f"maps (valid, {src.source_name()})")
    tuned, trail = tune_postproc(
        train_cases, arch, stored, proc_mpp, image_mpp, rounds=int(args["--rounds"]), log=print
    )
    report = {
        "checkpoint": str(ckpt),
        "arch": arch,
        "proc_mpp": proc_mpp,
        "train_images": len(train_cases),
        "valid_images": len(valid_cases),
        "objective": "(obj_f1 + obj_dice + pq) / 3, pooled over the training images",
        "min_gain": 1e-3,
        "stored": dataclasses.asdict(stored),
        "tuned": dataclasses.asdict(tuned),
        "changed": {k: v for k, v in dataclasses.asdict(tuned).items() if v != getattr(stored, k)},
        "train": {"stored": trail[0], "tuned": score_postproc(train_cases, arch, tuned, proc_mpp, image_mpp)},
        "valid": {
            "stored": score_postproc(valid_cases, arch, stored, proc_mpp, image_mpp),
            "tuned": score_postproc(valid_cases, arch, tuned, proc_mpp, image_mpp),
        },
        "trail": trail,
    }
    print(f"changed: {report['changed']}")
    print("| split | params | " + " | ".join(METRICS) + " | score |")
    print("|---|---|" + "---|" * (len(METRICS) + 1))
    for split in ("train", "valid"):
        for which in ("stored", "tuned"):
            s = report[split][which]
            print(f"| {split} | {which} | " + " | ".join(f"{s[k]:.3f}" for k in (*METRICS, "score")) + " |")
    out = Path(args["--out"])
    atomic_write_text(out, json.dumps(report, indent=2))
    print(f"wrote {out}")
    if args["--write_postproc"]:
        atomic_write_text(Path(args["--write_postproc"]), json.dumps(dataclasses.asdict(tuned), indent=2))
        print(f"wrote {args['--write_postproc']}")
    if args["--update_checkpoint"]:
        update_stored_config(ckpt, postproc=tuned)
        print(f"stored the tuned post-processing in {ckpt} ({arch})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
