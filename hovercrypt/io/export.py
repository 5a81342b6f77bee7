"""Instance exports: JSON / JSON Lines, HoVer-Net-style .mat, QuPath GeoJSON, counts CSV.

Every writer takes the per-instance dicts of ``hovercrypt.postproc.instance_info``
(``bbox``, ``centroid``, ``contour``, ``area``, ``type``, ``type_prob``, ``shape``) so tile
and whole-slide inference share one code path. Coordinates are written as
given; the optional ``scale``/``offset`` (``out = in * scale + offset``) let the
slide engine move processing-resolution results to level-0 pixels without
touching the instances. All writes are atomic.

QuPath conventions followed by :func:`geojson_feature` (QuPath >= 0.3,
*File > Import objects from file*): a ``FeatureCollection`` of ``Feature``s
with ``Polygon`` geometries in full-resolution pixel units, origin at the
image's top-left corner (so pixel centres are at +0.5); each ring closed
(last point == first); ``properties`` hold ``objectType`` ("annotation" =
editable, "detection" = lightweight, for many objects), ``classification``
``{"name", "color": [r, g, b]}`` and ``measurements`` as a name -> number
mapping. The morphometry (:mod:`hovercrypt.postproc.morphometry`) travels in
pixels (``shape``, scaled with the coordinates) until the output's µm/px is
known; then it becomes ``measurements`` in µm.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from hovercrypt.io.atomic import atomic_write, atomic_write_text
from hovercrypt.io.type_info import TypeInfo
from hovercrypt.postproc.morphometry import MEASUREMENTS, physical_measurements, scale_shape

InstanceInfo = Mapping[int, Mapping[str, Any]]

#: counts.csv column and instance ``type_name`` for crypts the type head gave no foreground vote
#: (type 0); with it the per-type columns add up to ``total`` instead of leaving a silent gap.
UNTYPED_COLUMN = "untyped"


def _xy(points: Any, scale: float = 1.0, offset: Sequence[float] = (0.0, 0.0)) -> np.ndarray:
    """Points as float64 (N, 2) (x, y), transformed by ``scale`` and ``offset``."""
    arr = np.asarray(points, dtype=np.float64).reshape(-1, 2)
    if scale != 1.0 or offset[0] or offset[1]:
        arr = arr * scale + np.asarray(offset, np.float64)
    return arr


def _num(v: float) -> float | int:
    """A JSON number: ints stay ints, floats rounded to 3 decimals (sub-pixel noise only bloats files)."""
    f = float(v)
    return int(f) if f.is_integer() else round(f, 3)


def closed_ring(
    contour: Any, scale: float = 1.0, offset: Sequence[float] = (0.0, 0.0), half_pixel: bool = False
) -> list[list[float]]:
    """A closed polygon ring ``[[x, y], ..., first]``.

    Contours of 1-2 distinct points (tiny or 1-pixel-wide objects) are not
    valid polygons; they become the square around those pixel centres widened
    by half a pixel, so the ring has an area. ``half_pixel`` adds 0.5 before
    scaling: pixel-index coordinates (pixel centres at integers) become
    continuous ones where pixel ``(i, j)`` spans ``[i, i+1) x [j, j+1)`` (QuPath's).
    """
    pts = _xy(contour)
    if len(pts) > 1 and np.array_equal(pts[0], pts[-1]):
        pts = pts[:-1]
    if not len(pts):
        raise ValueError("empty contour")
    if len(np.unique(pts, axis=0)) < 3:
        x0, y0 = pts.min(0) - 0.5
        x1, y1 = pts.max(0) + 0.5
        pts = np.array([[x0, y0], [x1, y0], [x1, y1], [x0, y1]])
    if half_pixel:
        pts = pts + 0.5
    pts = _xy(pts, scale, offset)
    ring = [[_num(x), _num(y)] for x, y in pts]
    ring.append(list(ring[0]))
    return ring


def instance_record(
    inst_id: int,
    inst: Mapping[str, Any],
    scale: float = 1.0,
    offset: Sequence[float] = (0.0, 0.0),
    type_info: TypeInfo | None = None,
    mpp: float | None = None,
) -> dict[str, Any]:
    """A JSON-ready dict for one instance (also one line of a JSON Lines file).

    ``area`` is scaled by ``scale**2`` so it stays in the output pixel units.
    With ``mpp`` (µm per *output* pixel) the morphometry is written as
    ``measurements`` in µm; without it, as ``shape`` in output pixels, for a
    later step that knows the resolution (the whole-slide merge).
    """
    bbox = _xy(np.asarray(inst["bbox"]).reshape(2, 2), scale, offset).ravel()
    rec: dict[str, Any] = {
        "id": int(inst_id),
        "bbox": [_num(v) for v in bbox],
        "centroid": [_num(v) for v in _xy(inst["centroid"], scale, offset)[0]],
        "contour": [[_num(x), _num(y)] for x, y in _xy(inst["contour"], scale, offset)],
        "area": _num(float(inst["area"]) * scale * scale),
        "type": int(inst.get("type", 0) or 0),
        "type_prob": None if inst.get("type_prob") is None else _num(inst["type_prob"]),
    }
    if type_info is not None:  # a found crypt is never called "background": type 0 reads "untyped"
        rec["type_name"] = type_info.name(rec["type"]) if rec["type"] > 0 else UNTYPED_COLUMN
    if inst.get("measurements") is not None:  # already in µm
        rec["measurements"] = dict(inst["measurements"])
    elif inst.get("shape"):
        shape = scale_shape(inst["shape"], scale)
        if mpp:
            rec["measurements"] = physical_measurements({"area": rec["area"], "shape": shape}, mpp)
        else:
            rec["shape"] = {k: None if v is None else round(float(v), 4) for k, v in shape.items()}
    return rec


def instances_document(
    info: InstanceInfo, meta: Mapping[str, Any], type_info: TypeInfo | None = None
) -> dict[str, Any]:
    """The per-image JSON: image-level ``meta`` plus ``instances`` {id: record} (ids as strings).

    ``meta["mpp"]`` (µm per pixel of the instances), when given, turns the morphometry into µm.
    """
    doc = dict(meta)
    mpp = meta.get("mpp")
    if type_info is not None:
        doc["type_info"] = type_info.to_json_dict()
    doc["nr_instances"] = len(info)
    doc["instances"] = {
        str(int(k)): {
            kk: vv for kk, vv in instance_record(k, v, type_info=type_info, mpp=mpp).items() if kk != "id"
        }
        for k, v in sorted(info.items())
    }
    return doc


def write_instances_json(
    path: str | Path, info: InstanceInfo, meta: Mapping[str, Any], type_info: TypeInfo | None = None
) -> None:
    atomic_write_text(path, json.dumps(instances_document(info, meta, type_info)))


def write_jsonl(path: str | Path, records: Iterable[Mapping[str, Any]]) -> int:
    """Write one JSON object per line (streams, so slide-sized outputs need no big string); returns lines."""
    n = 0
    with atomic_write(path, "w") as f:
        for rec in records:
            f.write(json.dumps(rec))
            f.write("\n")
            n += 1
    return n


def write_mat(path: str | Path, inst_map: np.ndarray, info: InstanceInfo) -> None:
    """HoVer-Net-style .mat: ``inst_map`` int32 (H, W), ``inst_uid``/``inst_type`` (K, 1), ``inst_centroid``.

    ``inst_centroid`` is (K, 2) float (x, y). Rows follow ascending instance id;
    ``inst_uid`` gives the id of each row.
    """
    import scipy.io

    ids = sorted(int(k) for k in info)
    data = {
        "inst_map": np.ascontiguousarray(inst_map, dtype=np.int32),
        "inst_uid": np.array(ids, np.int32).reshape(-1, 1),
        "inst_type": np.array([int(info[i].get("type", 0) or 0) for i in ids], np.int32).reshape(-1, 1),
        "inst_centroid": np.array([_xy(info[i]["centroid"])[0] for i in ids], np.float64).reshape(-1, 2),
    }
    with atomic_write(path, "wb") as f:
        scipy.io.savemat(f, data, do_compression=True)


def geojson_feature(
    inst_id: int,
    inst: Mapping[str, Any],
    type_info: TypeInfo,
    object_type: str = "annotation",
    scale: float = 1.0,
    offset: Sequence[float] = (0.0, 0.0),
    mpp: float | None = None,
) -> dict[str, Any]:
    """One QuPath-importable polygon feature; ``mpp`` (of the output pixels) adds µm measurements.

    Vertices are shifted by half a pixel (see :func:`closed_ring`) so the polygon
    sits on the pixel boundaries in QuPath: coordinates lie in ``[0, W] x [0, H]``.
    The morphometry (``measurements`` in µm, or ``shape`` in pixels with ``mpp``)
    goes into QuPath's measurement table; a missing value (a crypt without a
    neighbour) is left out, as GeoJSON has no NaN.
    """
    if object_type not in ("annotation", "detection"):
        raise ValueError(f"object_type must be 'annotation' or 'detection', got {object_type!r}")
    t = int(inst.get("type", 0) or 0)
    area_px = float(inst["area"]) * scale * scale
    measurements: dict[str, float | int] = {"Instance id": int(inst_id), "Area px": _num(area_px)}
    if inst.get("type_prob") is not None:
        measurements["Type probability"] = _num(inst["type_prob"])
    phys = inst.get("measurements")
    if phys is None and mpp and inst.get("shape"):
        phys = physical_measurements({"area": area_px, "shape": scale_shape(inst["shape"], scale)}, mpp)
    if phys is not None:
        for m in MEASUREMENTS:
            if phys.get(m.key) is not None:
                measurements[m.qupath] = _num(phys[m.key])
    elif mpp:
        measurements["Area um^2"] = _num(area_px * mpp * mpp)
    contour = inst.get("contour")
    if contour is None or not len(contour):  # no traced boundary: fall back to the box's pixel centres
        x0, y0, x1, y1 = (float(v) for v in inst["bbox"])
        contour = [[x0, y0], [x1 - 1, y0], [x1 - 1, y1 - 1], [x0, y1 - 1]]
    label = type_info.name(t) if t > 0 else "crypt"
    props: dict[str, Any] = {"objectType": object_type, "name": f"{label} {int(inst_id)}"}
    if t > 0:  # type 0 (no type head) stays unclassified in QuPath rather than "background"
        props["classification"] = {"name": type_info.name(t), "color": [int(c) for c in type_info.color(t)]}
    props["isLocked"] = False
    props["measurements"] = measurements
    return {
        "type": "Feature",
        "geometry": {"type": "Polygon", "coordinates": [closed_ring(contour, scale, offset, True)]},
        "properties": props,
    }


def to_feature_collection(
    info: InstanceInfo,
    type_info: TypeInfo,
    object_type: str = "annotation",
    scale: float = 1.0,
    offset: Sequence[float] = (0.0, 0.0),
    mpp: float | None = None,
) -> dict[str, Any]:
    feats = [
        geojson_feature(k, v, type_info, object_type, scale, offset, mpp) for k, v in sorted(info.items())
    ]
    return {"type": "FeatureCollection", "features": feats}


def write_geojson(path: str | Path, features: Iterable[Mapping[str, Any]]) -> int:
    """Stream a FeatureCollection to ``path`` feature by feature; returns the feature count."""
    n = 0
    with atomic_write(path, "w") as f:
        f.write('{"type": "FeatureCollection", "features": [')
        for feat in features:
            f.write(",\n" if n else "\n")
            f.write(json.dumps(feat))
            n += 1
        f.write("\n]}\n")
    return n


def count_columns(type_info: TypeInfo, nr_types: int) -> list[str]:
    """Per-type count columns: names of type ids 1..T-1, then ``untyped``; none without a type head."""
    n = max(len(type_info), nr_types) if nr_types > 0 else 0
    if n == 0:
        return []
    return [type_info.name(t) for t in range(1, n)] + [UNTYPED_COLUMN]


def named_counts(per_type: Mapping[int, int], type_info: TypeInfo, nr_types: int) -> dict[str, int]:
    """Counts per type id -> the counts.csv columns plus ``total`` (the columns add up to it)."""
    cols = count_columns(type_info, nr_types)
    counts = dict.fromkeys(cols, 0)
    if cols:
        typed = cols[:-1]
        for t, n in per_type.items():
            name = typed[t - 1] if 0 < t <= len(typed) else UNTYPED_COLUMN
            counts[name] += int(n)
    counts["total"] = int(sum(per_type.values()))
    return counts


def count_by_type(info: InstanceInfo, type_info: TypeInfo, nr_types: int) -> dict[str, int]:
    """Counts per type name, ``untyped`` (type 0) and ``total``, for one image's instances."""
    per_type: dict[int, int] = {}
    for inst in info.values():
        t = int(inst.get("type", 0) or 0)
        per_type[t] = per_type.get(t, 0) + 1
    return named_counts(per_type, type_info, nr_types)


def write_counts_csv(path: str | Path, rows: Sequence[Mapping[str, Any]], columns: Sequence[str]) -> None:
    """Write ``rows`` (dicts) with a header of ``columns`` (missing values left empty)."""
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=list(columns), extrasaction="ignore", lineterminator="\n")
    w.writeheader()
    for r in rows:
        w.writerow(r)
    atomic_write_text(path, buf.getvalue())
