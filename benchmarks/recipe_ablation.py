"""Recipe ablation (issue 13): short training runs of the same budget, one recipe change per row.

Every row starts from the ImageNet ResNet50 (``--pretrained``), trains the `fast` HoVer-Net of
the ``glas_hubmap`` preset (GlaS train patients + the HuBMAP top-left quarter) for the same
number of optimiser steps (``--steps_per_epoch`` x 1 frozen-encoder epoch + 2 all-layer epochs,
batch 4), and is scored once at the end by the trainer's image-level validation: whole
validation images (GlaS validation patients + the HuBMAP bottom-right quarter) through the real
tile inference and default post-processing, object F1 / Dice / PQ per source. The rows add the
knobs in turn, so each row differs from the one above it by one change:

- ``A_previous``: the previous recipe: patch files, Adam, constant learning rate (StepLR with a
  25-epoch period never steps), encoder BatchNorm re-estimated in phase 2, colour jitter only,
  scale augmentation 0.8-1.2;
- ``B_crops``: random crops of whole images instead of the patch files;
- ``C_adamw_cosine``: AdamW (weight decay 0.01) with linear warm-up + cosine decay per step;
- ``D_frozen_bn``: the pretrained encoder keeps its ImageNet BatchNorm statistics;
- ``E_stain_scale``: HED stain augmentation and scale augmentation 0.7-1.4 (the shipped recipe);
- ``F_unet``: the UNet over the same pretrained ResNet50 with the recipe of row E (issue 14's
  equal-budget baseline at this short budget);
- ``G_patches``: row E with the patch files instead of random crops (the crops/patches
  comparison with the full recipe).

Each row runs ``run_train.py`` in a child process under ``--log_root``/<row>; a finished row
(its ``metrics.csv`` holds the last epoch) is not run again, an interrupted one resumes from its
``last.pt`` (the machinery is shared with ``families.py``: ``_train_rows.py``). Writes
``bench_out/recipe_ablation.json`` and prints a Markdown table.

Usage: python benchmarks/recipe_ablation.py [--rows A_previous,B_crops,...] [--steps_per_epoch 40]
       [--log_root logs/ablation] [--pretrained ../shared/weights/resnet50_imagenet_msra.pth]
       [--num_workers 1] [--smoke]
``--smoke`` runs every row for one step without validation (to check the configurations).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from collections.abc import Callable
from pathlib import Path

from _train_rows import (
    DEFAULT_PRETRAINED,
    budget_config,
    run_row,
    total_epochs,
    without_image_validation,
    write_json,
)

from hovercrypt.config import Config

METRICS = ("img_obj_f1", "img_obj_dice", "img_pq")


def _previous(cfg: Config) -> Config:
    phases = [
        dataclasses.replace(p, optimizer="adam", weight_decay=0.0, schedule="step", warmup_steps=0)
        for p in cfg.train.phases
    ]
    aug = dataclasses.replace(cfg.train.augment, hed_prob=0.0, affine_prob=0.5, affine_scale=(0.8, 1.2))
    train = dataclasses.replace(cfg.train, phases=phases, augment=aug, freeze_encoder_bn=False)
    return dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, sampling="patches"), train=train)


def row_configs(steps: int) -> dict[str, Config]:
    """Each row = the row above + one change; E is the shipped recipe at this budget."""
    base = budget_config(steps)
    a = _previous(base)
    b = dataclasses.replace(a, data=dataclasses.replace(a.data, sampling="crops"))
    c = dataclasses.replace(b, train=dataclasses.replace(b.train, phases=base.train.phases))
    d = dataclasses.replace(c, train=dataclasses.replace(c.train, freeze_encoder_bn=True))
    e = dataclasses.replace(d, train=dataclasses.replace(d.train, augment=base.train.augment))
    f = dataclasses.replace(
        e, model=dataclasses.replace(e.model, arch="unet", unet_encoder="resnet50", unet_classes=3)
    )
    g = dataclasses.replace(e, data=dataclasses.replace(e.data, sampling="patches"))
    rows = {
        "A_previous": a,
        "B_crops": b,
        "C_adamw_cosine": c,
        "D_frozen_bn": d,
        "E_stain_scale": e,
        "F_unet": f,
        "G_patches": g,
    }
    return {k: dataclasses.replace(v, name=k) for k, v in rows.items()}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--rows", default="")
    p.add_argument("--steps_per_epoch", type=int, default=40)
    p.add_argument("--log_root", default="logs/ablation")
    p.add_argument("--pretrained", default=DEFAULT_PRETRAINED)
    p.add_argument("--num_workers", type=int, default=1)
    p.add_argument("--out", default="bench_out/recipe_ablation.json")
    p.add_argument("--smoke", action="store_true")
    args = p.parse_args()
    if not Path(args.pretrained).is_file():
        sys.exit(f"error: --pretrained {args.pretrained}: file not found")
    configs = row_configs(args.steps_per_epoch)
    names = [r for r in args.rows.split(",") if r] or list(configs)
    unknown = sorted(set(names) - set(configs))
    if unknown:
        sys.exit(f"error: unknown rows {unknown}; choose from {list(configs)}")
    prepare: Callable[[Config], Config] = without_image_validation if args.smoke else (lambda c: c)
    root = Path(args.log_root) / ("smoke" if args.smoke else "")
    fresh = [f"--pretrained={args.pretrained}"]
    results: dict[str, dict] = {}
    for name in names:
        cfg = prepare(configs[name])
        run = run_row(name, cfg, root / name, args.num_workers, args.smoke, fresh)
        steps = args.steps_per_epoch * total_epochs(cfg)
        res: dict = {"wall_s": run.wall_s, "train_s": run.train_s, "steps": steps}
        for key, v in run.last.items():
            if key.startswith("valid/img_") and v not in ("", None):
                res[key.removeprefix("valid/")] = round(float(v), 4)
        results[name] = res
        print(f"[{name}] {json.dumps(res)}", flush=True)
    write_json(args.out, {"steps_per_epoch": args.steps_per_epoch, "rows": results})
    print("\n| row | GlaS obj F1 | GlaS obj Dice | HuBMAP obj F1 | HuBMAP obj Dice | train s |")
    print("|---|---|---|---|---|---|")
    for name, r in results.items():
        cells = [r.get(f"{m}_{src}", float("nan")) for src in ("glas",) for m in METRICS[:2]]
        cells += [r.get(f"{m}_hubmap", float("nan")) for m in METRICS[:2]]
        print(f"| {name} | " + " | ".join(f"{c:.3f}" for c in cells) + f" | {r['train_s']:.0f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
