"""``run_infer.py tile``: segment and count crypts in a folder of image tiles.

For each image: read, resample to the model's processing resolution, run the
overlap-tile inference, post-process, map back to the input resolution, and
write ``json/``, ``mat/``, ``overlay/`` and ``geojson/`` outputs; one
``counts.csv`` covers the run (``status`` = ``ok`` or ``error: ...``). A bad
image is reported and skipped so one corrupt file does not cost a long batch;
its row keeps empty counts (not a misleading 0) and the exit code is 1.

``resolve_device``, ``resolve_type_info`` and ``write_image_outputs`` are
shared with the whole-slide command.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from hovercrypt.config import ConfigError
from hovercrypt.io.images import IMAGE_EXTS, InputError, read_rgb, write_png
from hovercrypt.io.type_info import TypeInfo, load_type_info

OUTPUT_DIRS = ("json", "mat", "overlay", "geojson")


def _notice(msg: str) -> None:
    tqdm.write(msg, file=sys.stderr)


def resolve_device(gpu: str | None) -> str:
    """``--gpu`` value -> torch device string. Empty -> CPU (with a notice); "0" or "0,1" -> cuda:0."""
    gpu = (gpu or "").strip()
    if not gpu:
        _notice("notice: no --gpu given, running on the CPU")
        return "cpu"
    import torch

    first = gpu.split(",")[0].strip()
    if not first.isdigit():
        raise InputError(f"--gpu must be GPU ids like 0 or 0,1; got {gpu!r}")
    if not torch.cuda.is_available() or int(first) >= torch.cuda.device_count():
        raise InputError(f"--gpu {gpu}: CUDA device {first} is not available (use --gpu= for the CPU)")
    if "," in gpu:
        _notice(f"notice: tile inference uses one GPU; using cuda:{first}")
    return f"cuda:{first}"


#: ``type_info.json`` at the repository root (beside ``run_infer.py``): the default of
#: ``--type_info_path``, so the type names do not depend on the current directory.
DEFAULT_TYPE_INFO = Path(__file__).resolve().parents[2] / "type_info.json"


def resolve_type_info(
    path: str | Path | None, nr_types: int, default: str | Path | None = DEFAULT_TYPE_INFO
) -> TypeInfo:
    """Type names/colours from ``path`` (given explicitly) or else from ``default``.

    A path the user typed that does not exist is an error (a typo must not
    silently turn the type names into ``type1, type2``); only when no path was
    given and the default file is absent are generic names used (with a notice).
    A file with fewer types than the model predicts is an error: crypts of the
    missing types would be exported nameless.
    """
    if path:
        if not Path(path).is_file():
            raise InputError(f"{path}: type info file (--type_info_path) not found")
        src = Path(path)
    elif default is not None and Path(default).is_file():
        src = Path(default)
    else:
        _notice(f"notice: no --type_info_path and no {default}; using generic type names")
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


def _float_opt(args: Mapping[str, Any], key: str) -> float | None:
    v = args.get(key)
    if v in (None, ""):
        return None
    try:
        f = float(v)
    except ValueError as e:
        raise InputError(f"{key} must be a number, got {v!r}") from e
    if f <= 0:
        raise InputError(f"{key} must be > 0, got {v}")
    return f


def _int_opt(args: Mapping[str, Any], key: str, default: int, minimum: int = 1) -> int:
    v = args.get(key)
    try:
        n = int(v) if v not in (None, "") else default
    except ValueError as e:
        raise InputError(f"{key} must be an integer, got {v!r}") from e
    if n < minimum:
        raise InputError(f"{key} must be >= {minimum}, got {n}")
    return n


def load_predictor(args: Mapping[str, Any], batch_size: int) -> Any:
    """The checkpoint from ``--model_path`` (default: the shipped model) as a NetworkPredictor."""
    from hovercrypt.infer.predictor import NetworkPredictor

    model_path = args.get("--model_path")
    if not model_path:
        from hovercrypt.models.checkpoint import default_model_path

        model_path = default_model_path()
    if not Path(model_path).is_file():
        hint = "give one with --model_path"
        if str(model_path) in ("unet", "hovernet"):  # docopt reads --model=unet as --model_path=unet
            hint = "the architecture comes from the checkpoint; give the checkpoint file with --model_path"
        raise InputError(f"{model_path}: model checkpoint not found ({hint})")
    device = resolve_device(args.get("--gpu"))
    tta = bool(args.get("--tta"))
    pred = NetworkPredictor.from_checkpoint(model_path, device, batch_size=batch_size, tta=tta)
    if pred.config is None:
        raise InputError(f"{model_path}: checkpoint holds no config (proc_mpp, post-processing)")
    if args.get("--postproc"):
        pred.config = pred.config.replace(postproc=load_postproc_overrides(args["--postproc"], pred.config))
    try:
        pred.configure(**speed_settings(args, pred.config.infer))
    except ValueError as e:
        raise InputError(str(e)) from e
    return pred


def speed_settings(args: Mapping[str, Any], infer: Any) -> dict[str, Any]:
    """Window and CPU settings for ``NetworkPredictor.configure``: CLI options over ``InferConfig``."""
    return {
        "window": _int_opt(args, "--window", int(infer.window), minimum=0),
        "window_border": _int_opt(args, "--window_border", int(infer.window_border), minimum=0),
        "channels_last": bool(infer.channels_last) or bool(args.get("--channels_last")),
        "threads": _int_opt(args, "--threads", int(infer.threads), minimum=0),
    }


def load_postproc_overrides(spec: str | Path, cfg: Any) -> Any:
    """The checkpoint's ``PostprocConfig`` with the fields given by ``spec`` replaced.

    ``spec`` is a JSON file or an inline JSON object (``{"np_thresh": 0.6}``).
    Post-processing is tuned after training (``benchmarks/tune_postproc.py`` writes such a
    file), so it can change without touching the model. Only the keys given are replaced;
    unknown keys, wrong types or out-of-range values are errors that name the source.
    """
    import dataclasses
    import json

    from hovercrypt.config import PostprocConfig
    from hovercrypt.typed_dicts import build_dataclass

    text, where = str(spec), "--postproc"
    if not text.lstrip().startswith("{"):
        path = Path(spec)
        if not path.is_file():
            raise InputError(f"{path}: --postproc file not found (give a JSON file or an inline JSON object)")
        try:
            text, where = path.read_text(encoding="utf-8"), str(path)
        except (OSError, UnicodeDecodeError) as e:
            raise InputError(f"{path}: cannot read --postproc file ({e})") from e
    try:
        overrides = json.loads(text)
    except json.JSONDecodeError as e:
        raise InputError(f"{where}: not valid JSON ({e})") from e
    if not isinstance(overrides, dict):
        raise InputError(f"{where}: expected a JSON object of post-processing fields")
    try:
        post = build_dataclass(PostprocConfig, {**dataclasses.asdict(cfg.postproc), **overrides}, "postproc")
        post.validate()
    except ConfigError as e:
        raise InputError(f"{where}: {e}") from e
    return post


def run_tile_cli(args: Mapping[str, Any]) -> int:
    """Entry point for ``run_infer.py tile`` (``args``: the docopt dict). Returns the exit code."""
    from hovercrypt.infer.tile import segment_image
    from hovercrypt.io.export import count_by_type, count_columns, write_counts_csv

    try:
        files = list_images(args["--input_dir"])
        out_dir = prepare_output_dir(args["--output_dir"])
        batch_size = _int_opt(args, "--batch_size", 8)
        input_mpp = _float_opt(args, "--input_mpp")
        predictor = load_predictor(args, batch_size)
        cfg = predictor.config
        type_info = resolve_type_info(args.get("--type_info_path"), predictor.nr_types)
    except (InputError, ConfigError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
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
