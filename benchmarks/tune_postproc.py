"""Tune a checkpoint's post-processing on the GlaS training split, then check it on validation.

The post-processing defaults were set on ground-truth maps, which are clean; a
trained network's maps are not. This script predicts the maps of every image
once, then searches the post-processing parameters one at a time (coordinate
descent, ``--rounds`` passes over the parameter list) to maximise
``score = (object F1 + object Dice + PQ) / 3`` pooled over the **training**
images; a value is taken only if it gains more than 0.001. Validation images
are never used to choose a value: they are scored once with the stored
parameters and once with the tuned ones, so the gain reported is an honest
held-out number.

``--write_postproc`` saves the tuned values as a JSON file that
``run_infer.py --postproc=<json>`` accepts; ``--update_checkpoint`` stores them
in the checkpoint's config (atomically) so that they become its defaults.

Usage:
  tune_postproc.py [--model=<ckpt>] [--glas_dir=<dir>] [--out=<json>] [--rounds=<n>]
                   [--limit=<n>] [--write_postproc=<json>] [--update_checkpoint]

Options:
  --model=<ckpt>            Checkpoint to tune. Default: the shipped HoVer-Net.
  --glas_dir=<dir>          GlaS training folder [default: ../shared/data/glas/train].
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

from docopt import docopt
from tqdm import tqdm

from hovercrypt.data.readers import list_records, read_record
from hovercrypt.data.split import patient_split
from hovercrypt.infer.predictor import NetworkPredictor
from hovercrypt.infer.tile import predict_resampled
from hovercrypt.io.atomic import atomic_write_text
from hovercrypt.models.checkpoint import default_model_path, update_stored_postproc
from hovercrypt.postproc.tune import METRICS, Case, score_postproc, tune_postproc
from hovercrypt.presets import glas_config


def predict_cases(pred: NetworkPredictor, records: list[Any], data_cfg: Any, desc: str) -> list[Case]:
    """Network maps of each record at the model's processing resolution (the expensive part, done once)."""
    proc_mpp = float(pred.config.proc_mpp)
    cases = []
    for rec in tqdm(records, desc=desc, unit="img"):
        sample = read_record(rec, data_cfg, None)
        maps = predict_resampled(pred, sample.image, proc_mpp, data_cfg.image_mpp)
        cases.append(Case(rec.name, maps, sample.inst))
    return cases


def main(argv: list[str] | None = None) -> int:
    args = docopt(__doc__, argv=argv)
    ckpt = Path(args["--model"] or default_model_path())
    cfg = glas_config(args["--glas_dir"])
    records = list_records(cfg.data)
    train_names, valid_names = patient_split(
        [(r.name, r.patient) for r in records], cfg.data.valid_fraction, cfg.data.split_seed
    )
    train = [r for r in records if r.name in set(train_names)]
    valid = [r for r in records if r.name in set(valid_names)]
    if args["--limit"]:
        n = int(args["--limit"])
        train, valid = train[:n], valid[:n]
    if not train or not valid:
        print(f"no GlaS images found under {args['--glas_dir']}", file=sys.stderr)
        return 1
    pred = NetworkPredictor.from_checkpoint(ckpt, batch_size=8)
    arch, proc_mpp, image_mpp = pred.arch, float(pred.config.proc_mpp), cfg.data.image_mpp
    stored = pred.config.postproc
    train_cases = predict_cases(pred, train, cfg.data, "maps (train)")
    valid_cases = predict_cases(pred, valid, cfg.data, "maps (valid)")
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
        update_stored_postproc(ckpt, tuned)
        print(f"stored the tuned post-processing in {ckpt} ({arch})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
