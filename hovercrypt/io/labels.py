"""Label files read by both the training data and the evaluation: extensions, HoVer-Net ``.mat``
files and image-level type CSVs (GlaS ``grade.csv``), each with one implementation.

Training (:mod:`hovercrypt.data.readers`) and scoring (:mod:`hovercrypt.metrics.labels_io`)
used to read these in two ways, with two sets of rules for which CSV row is which image and
which value is which type; now a file is read the same way wherever it is used.
"""

from __future__ import annotations

import csv
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from hovercrypt.errors import InputError
from hovercrypt.io.images import as_label

#: label maps stored as images (``.bmp``: the original GlaS release)
LABEL_IMAGE_EXTS = (".png", ".tif", ".tiff", ".bmp")


def read_mat(path: str | Path) -> tuple[np.ndarray, dict[str, Any]]:
    """A HoVer-Net ``.mat`` file: its ``inst_map`` (int32, 2-D) and all its variables."""
    import scipy.io

    path = Path(path)
    try:
        d = scipy.io.loadmat(str(path))
    except Exception as e:  # scipy raises several types for corrupt / non-mat files
        raise InputError(f"{path}: cannot be read as a .mat file ({type(e).__name__}: {e})") from e
    if "inst_map" not in d:
        keys = sorted(k for k in d if not k.startswith("__"))
        raise InputError(f"{path}: no 'inst_map' in the .mat file (keys: {keys})")
    return mat_label(path, d, "inst_map"), d


def mat_label(path: Path, d: Mapping[str, Any], name: str) -> np.ndarray:
    """Variable ``name`` of a loaded ``.mat`` file as a 2-D integer label map."""
    arr = as_label(np.asarray(d[name]), f"{path}:{name}")
    if arr.ndim != 2:
        raise InputError(f"{path}: {name} must be 2-D, got shape {arr.shape}")
    return arr


def read_image_csv(
    path: str | Path, name_column: str, columns: Sequence[str] = (), what: str = "type CSV"
) -> dict[str, dict[str, str]]:
    """Rows of a per-image CSV by image stem (``a.png`` and ``a`` both name image ``a``).

    ``columns``: further columns that must exist. A missing file or column, or a row without
    a name, is an error naming the file (and the line).
    """
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: {what} not found")
    with path.open(newline="") as f:
        reader = csv.DictReader(f)
        header = reader.fieldnames or []
        for col in (name_column, *columns):
            if col not in header:
                raise InputError(f"{path}: no column {col!r} (columns: {header})")
        rows = {}
        for i, row in enumerate(reader, start=2):
            name = (row.get(name_column) or "").strip()
            if not name:
                raise InputError(f"{path}: line {i} has an empty {name_column!r}")
            rows[Path(name).stem] = row
    return rows


def type_lookup(values: Mapping[str, int]) -> dict[str, int]:
    """CSV value -> type id, matched case-insensitively (``Benign`` = ``benign``)."""
    lookup: dict[str, int] = {}
    for name, tid in values.items():
        key = name.strip().casefold()
        if key in lookup and lookup[key] != int(tid):
            raise InputError(f"type names {name!r} differ only in case but map to different ids")
        lookup[key] = int(tid)
    return lookup


def csv_type(value: str | None, lookup: Mapping[str, int]) -> int | None:
    """The type id of one CSV cell, or None when it matches no type."""
    return lookup.get((value or "").strip().casefold())
