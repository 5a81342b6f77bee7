"""``run_infer.py tile``: segment and count crypts in a folder of image tiles.

For each image: read, resample to the model's processing resolution, run the
overlap-tile inference, post-process, map back to the input resolution, and
write ``json/``, ``mat/``, ``overlay/`` and ``geojson/`` outputs; one
``counts.csv`` covers the run (``status`` = ``ok`` or ``error: ...``). A bad
image is reported and skipped so one corrupt file does not cost a long batch;
its row keeps empty counts (not a misleading 0) and the exit code is 1.

``resolve_type_info``, ``prepare_output_dir`` and ``write_image_outputs`` are
shared with the whole-slide command; the options are read in :mod:`hovercrypt.infer.options`.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from hovercrypt.errors import USER_ERROR_EXIT, InputError, UserError
from hovercrypt.infer.options import check_args, float_opt, load_predictor
from hovercrypt.io.images import IMAGE_EXTS, read_rgb, write_png
from hovercrypt.io.type_info import TypeInfo, load_type_info, type_info_path

OUTPUT_DIRS = ("json", "mat", "overlay", "geojson")


def resolve_type_info(
    path: str | Path | None, nr_types: int, configured: str | Path | None = None
) -> TypeInfo:
    """Type names/colours by the one rule of :func:`hovercrypt.io.type_info.type_info_path`.

    ``path``: ``--type_info_path``; ``configured``: the config's ``type_info``. A file with
    fewer types than the model predicts is an error: crypts of the missing types would be
    exported nameless.
    """
    src = type_info_path(path, configured)
    if not src.is_file():  # only a broken install lacks the shipped file
        tqdm.write(f"notice: {src} not found; using generic type names", file=sys.stderr)
        return TypeInfo.default(nr_types)
    ti = load_type_info(src)
    if nr_types > 0 and len(ti) < nr_types:
        raise InputError(f"{src}: lists {len(ti)} types but the model predicts {nr_types} (with background)")
    return ti


def prepare_output_dir(path: str | Path) -> Path:
    """Create ``--output_dir``; an existing file there (or an uncreatable path) is a one-line error."""
    out = Path(path)
    if out.exists() and not out.is_dir():
        raise InputError(f"{out}: --output_dir exists and is not a directory")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise InputError(f"{out}: cannot create --output_dir ({e.strerror or type(e).__name__})") from e
    return out


def list_images(input_dir: str | Path) -> list[Path]:
    d = Path(input_dir)
    if not d.is_dir():
        raise InputError(f"{d}: input directory not found")
    files = sorted(p for p in d.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_EXTS)
    files = [p for p in files if not p.name.startswith(".")]
    if not files:
        raise InputError(f"{d}: no images ({', '.join(IMAGE_EXTS)}) found")
    stems: dict[str, str] = {}
    for p in files:  # outputs are named by stem: a.png and a.jpg would overwrite each other
        if p.stem in stems:
            raise InputError(f"{d}: {stems[p.stem]} and {p.name} share the name {p.stem!r}; rename one")
        stems[p.stem] = p.name
    return files


def write_image_outputs(
    output_dir: str | Path,
    stem: str,
    image: np.ndarray,
    inst_map: np.ndarray,
    info: Mapping[int, Mapping[str, Any]],
    type_info: TypeInfo,
    meta: Mapping[str, Any],
    mpp: float | None = None,
) -> None:
    """Write ``json/<stem>.json``, ``mat/<stem>.mat``, ``overlay/<stem>.png``, ``geojson/<stem>.geojson``."""
    from hovercrypt.io.export import to_feature_collection, write_geojson, write_instances_json, write_mat
    from hovercrypt.io.overlay import draw_overlay

    out = Path(output_dir)
    write_instances_json(out / "json" / f"{stem}.json", info, meta, type_info)
    write_mat(out / "mat" / f"{stem}.mat", inst_map, info)
    thickness = max(1, round(min(image.shape[:2]) / 400))
    write_png(out / "overlay" / f"{stem}.png", draw_overlay(image, info, type_info, thickness=thickness))
    fc = to_feature_collection(info, type_info, object_type="annotation", mpp=mpp)
    write_geojson(out / "geojson" / f"{stem}.geojson", fc["features"])


def run_tile_cli(args: Mapping[str, Any]) -> int:
    """Entry point for ``run_infer.py tile`` (``args``: the docopt dict). Returns the exit code."""
    from hovercrypt.infer.tile import segment_image
    from hovercrypt.io.export import count_by_type, count_columns, write_counts_csv

    try:
        files = list_images(args["--input_dir"])
        out_dir = prepare_output_dir(args["--output_dir"])
        check_args(args)
        input_mpp = float_opt(args, "--input_mpp")
        predictor = load_predictor(args)
        cfg = predictor.config
        type_info = resolve_type_info(args.get("--type_info_path"), predictor.nr_types, cfg.type_info)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return USER_ERROR_EXIT
    batch_size = cfg.infer.batch_size
    proc_mpp = float(cfg.proc_mpp)
    params = cfg.postproc.pixels(proc_mpp)
    columns = ["image", *count_columns(type_info, predictor.nr_types), "total", "status"]
    rows: list[dict[str, Any]] = []
    failed: list[str] = []
    for path in tqdm(files, desc="images", unit="img"):
        t0 = time.perf_counter()
        try:
            image = read_rgb(path)
            inst, info = segment_image(
                predictor, image, proc_mpp, params, input_mpp=input_mpp, batch_size=batch_size
            )
            meta = {
                "image": path.name,
                "width": int(image.shape[1]),
                "height": int(image.shape[0]),
                "mpp": input_mpp or proc_mpp,
                "proc_mpp": proc_mpp,
                "model": getattr(predictor, "model_path", None),
                "arch": predictor.arch,
                "tta": bool(getattr(predictor, "tta", False)),
                "seconds": round(time.perf_counter() - t0, 3),
            }
            write_image_outputs(out_dir, path.stem, image, inst, info, type_info, meta, mpp=meta["mpp"])
        except Exception as e:  # one bad image must not stop the batch
            msg = str(e) if isinstance(e, InputError) else f"{path}: {type(e).__name__}: {e}"
            tqdm.write(f"error: {msg}", file=sys.stderr)
            failed.append(path.name)
            # count cells stay empty; the status is kept on one line for spreadsheet users
            rows.append({"image": path.name, "status": "error: " + " ".join(msg.split())})
            continue
        counts = count_by_type(info, type_info, predictor.nr_types)
        rows.append({"image": path.name, **counts, "status": "ok"})
    write_counts_csv(out_dir / "counts.csv", rows, columns)
    if failed:
        print(f"error: {len(failed)} of {len(files)} image(s) failed: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0
