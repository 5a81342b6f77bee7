"""Score predicted crypt/gland instances against ground truth: Dice, AJI, AJI+, PQ, GlaS and type metrics.

Usage:
  compute_stats.py --pred_dir=DIR --true_dir=DIR [options]
  compute_stats.py (-h | --help)

Options:
  --mode=MODE            instance | type (type adds detection F1, per-type F1 and type accuracy)
                         [default: instance]
  --pred_dir=DIR         Predicted label maps: .mat (inst_map [+ inst_type]), .npy, PNG/TIFF;
                         a run_infer.py output folder is read from its mat/ subfolder.
  --true_dir=DIR         Ground-truth label maps, same formats, or a GlaS folder
                         (<name>_anno.png beside the images; the images are ignored).
  --mpp=F                Microns per pixel of the label maps (GlaS: 0.465) [default: 0.5]
  --radius_um=F          Centroid pairing radius of the type metrics, in microns [default: 30]
  --true_types_csv=CSV   Image-level ground-truth types, e.g. GlaS grade.csv (--mode=type).
  --name_column=COL      Image-name column of --true_types_csv [default: name]
  --types_column=COL     Type column of --true_types_csv [default: grade_glas]
  --type_info_path=PATH  type_info.json whose type names map the CSV values to type ids
                         (case-insensitive; default: the one shipped with hovercrypt).
  --type_values=MAP      CSV value -> type id, e.g. benign:1,malignant:2 (replaces
                         --type_info_path). A CSV value that maps to no type is an error.
  --no_hausdorff         Skip the object Hausdorff distance (the slowest metric).
  --out=DIR              Output folder for per_image.csv and summary.json [default: stats]
  --quiet                No per-image table, no progress bar.
  -h --help              Show this help.
"""

from __future__ import annotations

import sys

from docopt import docopt

from hovercrypt.errors import USER_ERROR_EXIT, InputError, UserError
from hovercrypt.infer.options import float_opt


def _type_values(spec: str | None) -> dict[str, int] | None:
    if not spec:
        return None
    out = {}
    for item in spec.split(","):
        name, sep, tid = item.rpartition(":")
        if not sep or not name or not tid.strip().isdigit():
            raise InputError(f"--type_values must look like benign:1,malignant:2; bad item {item!r}")
        out[name.strip()] = int(tid)
    return out


def main(argv: list[str] | None = None) -> int:
    args = docopt(__doc__, argv=argv)
    from hovercrypt.io.type_info import load_type_info, type_info_path
    from hovercrypt.metrics.folder import evaluate_folders, format_table, write_outputs
    from hovercrypt.metrics.labels_io import read_types_csv, type_values_from_info

    try:
        mpp, radius = float_opt(args, "--mpp"), float_opt(args, "--radius_um")
        values = _type_values(args["--type_values"])  # checked even when unused: a typo should not pass
        image_types = None
        if args["--true_types_csv"]:
            if values is None:
                values = type_values_from_info(load_type_info(type_info_path(args["--type_info_path"])))
            image_types = read_types_csv(
                args["--true_types_csv"], args["--name_column"], args["--types_column"], values=values
            )
        rows, summary = evaluate_folders(
            args["--pred_dir"],
            args["--true_dir"],
            args["--mode"],
            mpp,
            radius,
            image_types,
            hausdorff=not args["--no_hausdorff"],
            progress=not args["--quiet"],
        )
        csv_path, json_path = write_outputs(args["--out"], rows, summary)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return USER_ERROR_EXIT
    table = format_table(rows, summary)
    if args["--quiet"]:
        table = "\n".join(
            line for line in table.splitlines() if line.startswith(("name", "mean", "pooled", "-"))
        )
    print(table)
    print(f"\nwrote {csv_path} and {json_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
