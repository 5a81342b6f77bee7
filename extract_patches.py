"""Extract training patches from an annotated dataset folder.

Usage:
  extract_patches.py [options]
  extract_patches.py -h | --help

Options:
  --config=SPEC         Preset name (glas, default), .json or .py file; default: config.py
                        next to this script (not in the current folder).
  --input_dir=DIR       Dataset folder (images + label maps); default: data.image_dir. A type CSV
                        configured inside the old folder (GlaS grade.csv) is taken from DIR.
  --output_dir=DIR      Output folder for train/ and valid/; default: data.patch_dir.
  --win=N               Patch (window) size in pixels at proc_mpp; default: data.patch_size (540).
  --step=N              Step between windows; default: data.patch_step (164).
  --tiling=MODE         mirror (reflect-pad borders) or valid (windows inside the image only).
  --proc_mpp=MPP        Processing resolution, um/px; default: proc_mpp of the config.
  --image_mpp=MPP       Resolution of the source images, um/px; default: data.image_mpp.
  --split               Deterministic patient-disjoint train/valid split (data.valid_fraction, split_seed).
  --valid_fraction=F    Share of images for validation with --split.
  --seed=N              Split seed.
  --keep_unannotated    Keep patches without any annotated pixel.
  --min_annotated=F     Drop patches with a smaller annotated-pixel fraction.
  --max_blank=F         Drop patches with a larger fraction of white-glass / black pixels.
  --overwrite           Replace patches already in the output folder.
  --quiet               No progress bar.
"""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path

from docopt import docopt

from hovercrypt.config import ConfigError
from hovercrypt.data.patches import extract_patches
from hovercrypt.errors import InputError
from hovercrypt.presets import load_config

#: CLI option -> (section, field, type)
OVERRIDES = {
    "--input_dir": ("data", "image_dir", str),
    "--output_dir": ("data", "patch_dir", str),
    "--win": ("data", "patch_size", int),
    "--step": ("data", "patch_step", int),
    "--tiling": ("data", "tiling", str),
    "--proc_mpp": (None, "proc_mpp", float),
    "--image_mpp": ("data", "image_mpp", float),
    "--valid_fraction": ("data", "valid_fraction", float),
    "--seed": ("data", "split_seed", int),
    "--min_annotated": ("data", "min_annotated_fraction", float),
    "--max_blank": ("data", "max_blank_fraction", float),
}


#: used without --config; found next to the script so the current folder does not matter
DEFAULT_CONFIG = Path(__file__).with_name("config.py")


def build_config(args: dict):
    cfg = load_config(args["--config"] or DEFAULT_CONFIG)
    top: dict = {}
    data: dict = {}
    for opt, (section, name, typ) in OVERRIDES.items():
        if args[opt] is None:
            continue
        try:
            value = typ(args[opt])
        except ValueError as e:
            raise ConfigError(f"{opt}={args[opt]!r}: expected {typ.__name__}") from e
        (data if section == "data" else top)[name] = value
    if args["--keep_unannotated"]:
        data["keep_unannotated"] = True
    csv_path = Path(cfg.data.type_csv) if cfg.data.type_csv else None
    if "image_dir" in data and csv_path is not None and csv_path.parent == Path(cfg.data.image_dir):
        # a per-image CSV kept inside the dataset folder moves with it (GlaS grade.csv)
        data["type_csv"] = str(Path(data["image_dir"]) / csv_path.name)
    return dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, **data), **top)


def main(argv: list[str] | None = None) -> int:
    args = docopt(__doc__, argv=argv)
    try:
        cfg = build_config(args)
        out, split, progress = cfg.data.patch_dir, args["--split"], not args["--quiet"]
        report = extract_patches(cfg, out, split=split, overwrite=args["--overwrite"], progress=progress)
    except (ConfigError, InputError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(report.summary())
    print(f"patches written to {cfg.data.patch_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
