"""Side by side (issue 18, item 4): every registered model family, trained and scored alike.

One row per family of ``hovercrypt.models.registry`` (``run_train.py --list_models``), so that
a difference between rows is the family and nothing else:

- **same data**: the ``glas_hubmap`` preset and its patch files (``data/patches/glas_hubmap``,
  made by ``extract_patches.py --config=glas_hubmap --split``): GlaS training patients plus the
  HuBMAP top-left quarter;
- **same recipe and budget**: the preset's phases, optimiser (AdamW, warm-up + cosine), frozen
  encoder BatchNorm and augmentation, at ``--steps_per_epoch`` x (1 frozen-encoder epoch + 2
  all-layer epochs) optimiser steps of batch 4 and one seed, exactly the budget of
  ``recipe_ablation.py`` (same ``budget_config``). A family without pretrained weights trains all
  layers in phase 1 (the trainer does so and says so), as freezing a random encoder would waste it;
- **same start where the family allows it**: every family with a ResNet encoder (``hovernet``,
  ``unet`` = the hand-written UNet decoder over a timm ResNet50, ``smp_unet``, ``unetplusplus``,
  ``deeplabv3plus``, ``fpn``, ``upernet``) starts from the ImageNet ResNet50 file (``--pretrained``);
  ``segformer`` takes its own MiT encoder (``mit_b2``, the one closest to ResNet50 in size) and
  ``unetr`` its own ViT (``vit_small``, likewise) from random weights (``segformer`` from a local
  file with ``--segformer_pretrained``). The semantic families predict 3 classes (crypt,
  background, boundary); HoVer-Net its NP + HV (+ type) maps;
- **same scoring, on held-out data only**: after training, ``last.pt`` (the model at the end of
  the budget; no checkpoint is picked on the validation data, and the trainer's own image
  validation is off so these images are seen once) goes through the tile inference of
  ``run_infer.py`` with the PyTorch backend (``upernet`` cannot be exported to ONNX) and each
  family's **default post-processing, not tuned**, scored by ``benchmarks/accuracy.py``'s
  ``evaluate_all``: the GlaS validation split (object F1 / Dice / Hausdorff in um, PQ, seconds per
  image on this machine) and the HuBMAP validation region (object F1 / recall / precision).

Each row trains in a child ``run_train.py`` under ``--log_root``/<family> (``_train_rows.py``,
shared with ``recipe_ablation.py``): a finished row is not trained again, an interrupted one
resumes from its ``last.pt``, and a row's scores are kept in its ``scores.json`` until its
checkpoint or ``--limit`` changes. Prints a Markdown table, writes ``bench_out/families.json``.

Usage: python benchmarks/families.py [--families hovernet,unet,...] [--steps_per_epoch 40]
       [--log_root logs/families] [--pretrained ../shared/weights/resnet50_imagenet_msra.pth]
       [--segformer_pretrained FILE] [--num_workers 1] [--batch_size 8] [--limit N]
       [--out bench_out/families.json] [--smoke]
``--smoke`` trains every row for one step per epoch without the trainer's image validation and
scores the first GlaS validation image only (``--limit 1``), to check the whole chain.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path
from typing import Any

import accuracy
from _train_rows import (
    DEFAULT_PRETRAINED,
    ROOT,
    budget_config,
    run_row,
    total_epochs,
    without_image_validation,
    write_json,
)
from docopt import docopt

from hovercrypt.config import Config
from hovercrypt.models.registry import family_names, get_family

#: family -> (encoder, starts from the ImageNet ResNet50 file); encoders matched to ResNet50's size
ENCODERS: dict[str, tuple[str, bool]] = {
    "hovernet": ("resnet50", True),
    "unet": ("resnet50", True),
    "smp_unet": ("resnet50", True),
    "unetplusplus": ("resnet50", True),
    "deeplabv3plus": ("resnet50", True),
    "fpn": ("resnet50", True),
    "upernet": ("resnet50", True),
    "segformer": ("mit_b2", False),
    "unetr": ("vit_small", False),
}
CONFIG = "glas_hubmap"


def family_config(base: Config, family: str, encoder: str) -> Config:
    """``base`` with the network of ``family`` over ``encoder`` (scoring pins PyTorch in :func:`score`)."""
    fam = get_family(family)
    changes: dict[str, Any] = {"arch": family, fam.encoder_field: encoder}
    if family != "hovernet":
        changes["unet_classes"] = 3  # the boundary class separates touching crypts
    model = dataclasses.replace(base.model, **changes)
    return dataclasses.replace(base, name=f"families_{family}", model=model)


def _init(family: str, args: argparse.Namespace) -> tuple[str, list[str]]:
    """The row's weight start, in words, and the ``run_train.py`` flags that give it."""
    imagenet = ENCODERS[family][1]
    path = args.pretrained if imagenet else args.segformer_pretrained if family == "segformer" else None
    if not path:
        return "random", []
    words = f"{'imagenet' if imagenet else 'local'} ({Path(path).name})"
    return words, [f"--pretrained={Path(path).resolve()}"]


def score(log_dir: Path, sets: list, batch_size: int, limit: int) -> dict[str, Any]:
    """``accuracy.evaluate_all`` of the row's ``last.pt`` (no robustness runs), cached per checkpoint."""
    from hovercrypt.infer.predictor import NetworkPredictor

    ckpt = log_dir / "last.pt"
    st = ckpt.stat()
    key = {"mtime_ns": st.st_mtime_ns, "size": st.st_size, "limit": limit, "batch_size": batch_size}
    cache = log_dir / "scores.json"
    if cache.is_file():
        kept = json.loads(cache.read_text())
        if kept.get("key") == key:
            return kept["result"]
    argv = ["--no_robustness", f"--config={CONFIG}", f"--batch_size={batch_size}"]
    argv += [f"--limit={limit}"] if limit else []
    opts = docopt(accuracy.__doc__, argv=argv)
    pred = NetworkPredictor.from_checkpoint(ckpt, batch_size=batch_size, backend="torch")
    n_params = sum(p.numel() for p in pred.model.parameters())
    res = accuracy.evaluate_all(ckpt, sets, opts, log_dir, pred=pred)
    res.update(parameters=n_params, backend=pred.backend, postproc="default (not tuned)")
    write_json(cache, {"key": key, "result": res})
    return res


def _scored(src: Any, records: list, limit: int) -> list:
    """The records ``evaluate_all`` scores: ``--limit`` cuts the GlaS split only."""
    return records[:limit] if limit and src.source_name() == "glas" else records


def _check_inputs(base: Config, args: argparse.Namespace, names: list[str]) -> None:
    """One-line errors for missing files and a budget the patch files cannot give."""
    manifest = ROOT / base.data.patch_dir / "train" / "manifest.csv"
    if not manifest.is_file():
        sys.exit(f"error: {manifest}: no patch files; run extract_patches.py --config={CONFIG} --split")
    batch = base.train.phases[0].batch_size
    n_batches = -(-(len(manifest.read_text().splitlines()) - 1) // batch)
    if args.steps_per_epoch < 1 or args.steps_per_epoch > n_batches:
        sys.exit(f"error: --steps_per_epoch {args.steps_per_epoch}: must be 1..{n_batches} "
                 f"(the patch files hold {n_batches} batches of {batch})")
    for opt in ("pretrained", "segformer_pretrained"):
        path = getattr(args, opt)
        used = any(ENCODERS[n][1] for n in names) if opt == "pretrained" else "segformer" in names
        if path and used and not Path(path).is_file():
            sys.exit(f"error: --{opt} {path}: file not found")
    if args.limit < 0:
        sys.exit(f"error: --limit {args.limit}: must be >= 0")


def _row(family: str, run: Any, steps: int, init: str, res: dict[str, Any]) -> dict[str, Any]:
    glas, hub = res.get("glas", {}), res.get("hubmap", {})
    return {
        "family": family, "encoder": res["encoder"], "init": init, "steps": steps,
        "train_s": run.train_s, "wall_s": run.wall_s, "parameters": res["parameters"],
        "seconds_per_glas_image": glas.get("seconds_per_image"),
        "glas": {k: glas.get("pooled", {}).get(k) for k in ("obj_f1", "obj_dice", "obj_hausdorff_um", "pq")},
        "hubmap": {k: hub.get("pooled", {}).get(k) for k in ("obj_f1", "obj_recall", "obj_precision")},
        "scores": res,
    }


def format_table(rows: dict[str, dict[str, Any]]) -> str:
    """The Markdown table of the rows (n/a where a source was not scored)."""
    def cell(v: Any, fmt: str) -> str:
        return "n/a" if v is None else format(v, fmt)

    lines = [
        "| family | encoder | init | steps | train s | GlaS obj F1 | GlaS obj Dice | GlaS obj Hausdorff (µm) "
        "| GlaS PQ | HuBMAP obj F1 | HuBMAP recall | HuBMAP precision | s / GlaS image | params (M) |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows.values():
        g, h = r["glas"], r["hubmap"]
        cells = [r["family"], r["encoder"], r["init"], str(r["steps"]), f"{r['train_s']:.0f}",
                 cell(g["obj_f1"], ".3f"), cell(g["obj_dice"], ".3f"), cell(g["obj_hausdorff_um"], ".1f"),
                 cell(g["pq"], ".3f"), cell(h["obj_f1"], ".3f"), cell(h["obj_recall"], ".3f"),
                 cell(h["obj_precision"], ".3f"), cell(r["seconds_per_glas_image"], ".2f"),
                 f"{r['parameters'] / 1e6:.1f}"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--families", default="", help="comma list (default: every family)")
    p.add_argument("--steps_per_epoch", type=int, default=40)
    p.add_argument("--log_root", default="logs/families")
    p.add_argument("--pretrained", default=DEFAULT_PRETRAINED, help="ImageNet ResNet50 (empty: random)")
    p.add_argument("--segformer_pretrained", default="", help="local MiT weights for segformer (else random)")
    p.add_argument("--num_workers", type=int, default=1)
    p.add_argument("--batch_size", type=int, default=8, help="tiles per network batch when scoring")
    p.add_argument("--limit", type=int, default=0, help="score the first n GlaS validation images only")
    p.add_argument("--out", default="bench_out/families.json")
    p.add_argument("--smoke", action="store_true")
    args = p.parse_args()
    registered = set(family_names())
    missing = sorted(registered - set(ENCODERS))
    if missing:
        print(f"note: no benchmark settings for the families {missing}; add them to ENCODERS", flush=True)
    names = [f for f in args.families.split(",") if f] or [f for f in ENCODERS if f in registered]
    unknown = sorted(set(names) - (set(ENCODERS) & registered))
    if unknown:
        sys.exit(f"error: unknown families {unknown}; choose from {[f for f in ENCODERS if f in registered]}")
    if args.smoke:
        args.limit = args.limit or 1
    base = without_image_validation(budget_config(args.steps_per_epoch))
    _check_inputs(base, args, names)
    cfg_all, sets = accuracy.validation_sets(CONFIG)
    if not any(src.source_name() == "glas" and recs for src, recs in sets):
        sys.exit(f"error: no GlaS validation images for the {CONFIG} preset (is ../shared/data there?)")
    root = Path(args.log_root) / ("smoke" if args.smoke else "")
    rows: dict[str, dict[str, Any]] = {}
    for family in names:
        cfg = family_config(base, family, ENCODERS[family][0])
        init, fresh = _init(family, args)
        log_dir = root / family
        run = run_row(family, cfg, log_dir, args.num_workers, args.smoke, fresh)
        steps = (1 if args.smoke else args.steps_per_epoch) * total_epochs(cfg)
        print(f"[{family}] trained ({run.train_s:.0f} s); scoring {log_dir / 'last.pt'}", flush=True)
        rows[family] = _row(family, run, steps, init, score(log_dir, sets, args.batch_size, args.limit))
        brief = {k: v for k, v in rows[family].items() if k != "scores"}
        print(f"[{family}] {json.dumps(brief, default=float)}", flush=True)
    payload = {
        "config": cfg_all.name, "steps_per_epoch": args.steps_per_epoch, "smoke": args.smoke,
        "epochs": [ph.epochs for ph in base.train.phases], "seed": base.train.seed, "limit": args.limit,
        "postproc": "each family's default, not tuned", "backend": "torch",
        "validation": {s.source_name(): [r.name for r in _scored(s, recs, args.limit)] for s, recs in sets},
        "families": rows,
    }
    out = write_json(args.out, payload)
    print("\n" + format_table(rows))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
