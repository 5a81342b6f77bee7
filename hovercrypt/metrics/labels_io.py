"""Finding and reading label maps for evaluation: .mat, .npy, PNG/TIFF and the GlaS layout.

Prediction and ground-truth folders come from different tools, so files are
paired by *stem* after stripping known suffixes (``_anno`` of GlaS, ``_inst``,
``_label``). A GlaS-style folder (images beside ``<name>_anno.png``) is
recognised by the presence of ``_anno`` files; the images are then ignored.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from hovercrypt.errors import InputError
from hovercrypt.io.images import as_label, read_label
from hovercrypt.io.labels import LABEL_IMAGE_EXTS, csv_type, mat_label, read_image_csv, read_mat, type_lookup
from hovercrypt.io.type_info import TypeInfo

IMAGE_LABEL_EXTS = LABEL_IMAGE_EXTS
LABEL_EXTS = (".mat", ".npy", *IMAGE_LABEL_EXTS)
STRIP_SUFFIXES = ("_anno", "_inst", "_label", "_labels")
TYPE_SUFFIX = "_type"  # <stem>_type.<ext> beside a PNG/TIFF/npy label is its per-pixel type map


@dataclass
class LabelFile:
    """One label map on disk; ``types`` is a type map, a mapping id -> type, or None."""

    path: Path
    inst: np.ndarray
    types: np.ndarray | Mapping[int, int] | None


def _stem(path: Path) -> str:
    stem = path.stem
    for suf in STRIP_SUFFIXES:
        if stem.endswith(suf) and len(stem) > len(suf):
            return stem[: -len(suf)]
    return stem


def list_label_files(folder: str | Path) -> dict[str, Path]:
    """Map stem -> label file of a folder.

    In a GlaS-style folder (any ``*_anno.*`` present) only the ``_anno`` files
    count. Otherwise every file with a label extension counts, except
    ``*_type.*`` type maps. A predictions folder holding only a ``mat/``
    subfolder (``run_infer.py`` output) is read from there.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise InputError(f"{folder}: not a directory")
    files = sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in LABEL_EXTS)
    if not files and (folder / "mat").is_dir():
        return list_label_files(folder / "mat")
    anno = [p for p in files if p.stem.endswith("_anno")]
    if anno:
        files = anno
    else:
        files = [p for p in files if not p.stem.endswith(TYPE_SUFFIX)]
    out: dict[str, Path] = {}
    for p in files:
        s = _stem(p)
        if s in out:
            raise InputError(f"{folder}: two label files share the stem {s!r}: {out[s].name} and {p.name}")
        out[s] = p
    if not out:
        raise InputError(f"{folder}: no label files ({', '.join(LABEL_EXTS)}) found")
    return out


def pair_folders(pred_dir: str | Path, true_dir: str | Path) -> list[tuple[str, Path, Path]]:
    """``[(stem, pred_file, true_file)]`` sorted by stem; files on one side only are an error."""
    pred, true = list_label_files(pred_dir), list_label_files(true_dir)
    only_p = sorted(set(pred) - set(true))
    only_t = sorted(set(true) - set(pred))
    if only_p or only_t:
        lines = []
        if only_p:
            lines.append(f"  only in pred_dir {pred_dir}: {', '.join(pred[s].name for s in only_p)}")
        if only_t:
            lines.append(f"  only in true_dir {true_dir}: {', '.join(true[s].name for s in only_t)}")
        raise InputError("prediction and ground-truth files do not match by name:\n" + "\n".join(lines))
    return [(s, pred[s], true[s]) for s in sorted(pred, key=_natural_key)]


def _natural_key(s: str) -> list:
    import re

    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", s)]


def _mat_types(path: Path, d: dict, inst: np.ndarray) -> np.ndarray | Mapping[int, int] | None:
    if "inst_type" in d:
        types = np.asarray(d["inst_type"]).ravel()
        if "inst_uid" in d:
            ids = np.asarray(d["inst_uid"]).ravel().astype(np.int64)
        else:
            ids = np.unique(inst)
            ids = ids[ids > 0]
        if ids.size != types.size:
            raise InputError(
                f"{path}: inst_type has {types.size} entries but inst_map has {ids.size} instances"
            )
        return {int(i): int(t) for i, t in zip(ids, types)}
    if "type_map" in d:
        return mat_label(path, d, "type_map")
    return None


def read_label_file(path: str | Path) -> LabelFile:
    """Read an instance map (int32) and, when the file carries them, the instance types."""
    path = Path(path)
    ext = path.suffix.lower()
    if ext == ".mat":
        inst, d = read_mat(path)
        return LabelFile(path, inst, _mat_types(path, d, inst))
    if ext == ".npy":
        inst, types = _read_npy(path)
    elif ext in IMAGE_LABEL_EXTS:
        inst, types = read_label(path), None
    else:
        raise InputError(f"{path}: unsupported label file type {ext!r}")
    return LabelFile(path, inst, types if types is not None else _type_map_beside(path, inst))


def _read_npy(path: Path) -> tuple[np.ndarray, np.ndarray | None]:
    """(instances, type map or None) of an (H, W), (H, W, 2) inst + type or 5-channel patch array."""
    try:
        arr = np.load(path, allow_pickle=False)
    except Exception as e:
        raise InputError(f"{path}: cannot be read as .npy ({type(e).__name__}: {e})") from e
    if arr.ndim == 3 and arr.shape[2] == 2:  # (inst, type)
        return as_label(arr[..., 0], str(path)), as_label(arr[..., 1], str(path))
    if arr.ndim == 3 and arr.shape[2] == 5:  # patch layout: RGB, inst, type
        return as_label(arr[..., 3], str(path)), as_label(arr[..., 4], str(path))
    if arr.ndim == 2:
        return as_label(arr, str(path)), None
    raise InputError(f"{path}: expected (H, W), (H, W, 2) or (H, W, 5) array, got {arr.shape}")


def _type_map_beside(path: Path, inst: np.ndarray) -> np.ndarray | None:
    """``<stem>_type.<ext>`` beside a label map (``_anno`` stripped), checked to match its size."""
    base = path.stem[: -len("_anno")] if path.stem.endswith("_anno") else path.stem
    for e in (*IMAGE_LABEL_EXTS, ".npy"):
        tp = path.with_name(base + TYPE_SUFFIX + e)
        if tp.is_file():
            types = as_label(np.load(tp, allow_pickle=False), str(tp)) if e == ".npy" else read_label(tp)
            if types.shape != inst.shape:
                raise InputError(f"{tp}: type map shape {types.shape} differs from {path.name} {inst.shape}")
            return types
    return None


def type_values_from_info(info: TypeInfo) -> dict[str, int]:
    """CSV value -> type id from ``type_info.json`` names, so CSV ids always equal the model's ids.

    Background (id 0) is left out: an image-level type of 0 would make every object untyped.
    """
    return {name: i for i, name in enumerate(info.names) if i > 0}


def read_types_csv(
    path: str | Path,
    name_column: str = "name",
    type_column: str = "grade_glas",
    *,
    values: Mapping[str, int],
) -> dict[str, int]:
    """Image-level types (e.g. GlaS ``grade.csv``): stem -> type id, applied to every object of the image.

    ``values`` maps the CSV strings (case-insensitively) to type ids; it is
    required because ids inferred from the CSV's own values (e.g. sort order)
    silently disagree with the model's ids when a class is absent or sorts differently.
    """
    lookup = type_lookup(values)
    if not lookup:
        raise InputError(f"{path}: no type names to map the values of column {type_column!r} to")
    rows = read_image_csv(path, name_column, (type_column,), "types CSV")
    raw = {name: (r[type_column] or "").strip() for name, r in rows.items()}
    bad = sorted({v for v in raw.values() if csv_type(v, lookup) is None})
    if bad:
        known = ", ".join(f"{n}={int(t)}" for n, t in values.items())
        raise InputError(
            f"{path}: column {type_column!r} has values {bad} that match no type; known types: {known}"
        )
    return {k: lookup[v.casefold()] for k, v in raw.items()}
