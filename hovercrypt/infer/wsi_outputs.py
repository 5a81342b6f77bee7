"""Per-slide and per-run outputs of whole-slide inference.

Chunk part files (one JSON Lines file per region, written atomically by the
post-processing workers) are merged here, in region order, into the final
``instances.jsonl`` with ids 1..N, the QuPath GeoJSON, ``crypts.csv`` (one row
per crypt, morphometry in µm), ``morphometry.json`` (per-type medians and
quartiles), a thumbnail with contours and the report figures. Records stream
part by part; only the centroids, areas and nearest-neighbour distances (a few
numbers per crypt) are held, because the nearest neighbour of a crypt may lie
in another region.

Run-level tables (``summary.csv``) and ``report.html`` are rebuilt from the
slide folders on disk (:func:`write_run_report`), like ``counts.csv``.
"""

from __future__ import annotations

import csv
import json
import logging
import math
from array import array
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from hovercrypt.infer.stitch import part_path
from hovercrypt.io.atomic import atomic_write, atomic_write_text
from hovercrypt.io.export import (
    UNTYPED_COLUMN,
    count_columns,
    geojson_feature,
    named_counts,
    write_counts_csv,
    write_geojson,
    write_jsonl,
)
from hovercrypt.io.images import write_png
from hovercrypt.io.overlay import draw_overlay
from hovercrypt.io.report import (
    OVERVIEW_FILE,
    read_slide_statistics,
    render_slide_figures,
    report_canvas,
    write_jpeg,
    write_report,
)
from hovercrypt.io.type_info import TypeInfo
from hovercrypt.postproc.morphometry import (
    MEASUREMENT_KEYS,
    nearest_neighbour_distances,
    physical_measurements,
    quartiles,
)

log = logging.getLogger("hovercrypt.wsi")
#: per-crypt CSV columns before the measurements (centroid in µm from the slide's top-left corner)
CRYPT_COLUMNS = ("id", "type", "type_name", "type_prob", "centroid_x_um", "centroid_y_um")
#: per-slide statistics summarised in summary.csv and the report (median, q1, q3 of each)
STAT_KEYS = ("area_um2", "nn_distance_um")
ALL_GROUP = "all"


@dataclass
class SlideResult:
    """One row of ``counts.csv`` (plus bookkeeping)."""

    slide: str
    status: str = "ok"
    types: dict[str, int] = field(default_factory=dict)  # type id (as str) -> count
    total: int = 0
    tissue_area_mm2: float = 0.0
    tiles: int = 0
    oversize: int = 0
    seconds: float = 0.0
    #: seconds per pipeline stage: the main thread waiting for the reader, in the predictor
    #: (tiling + network), waiting for post-processing; and post-processing time summed over workers
    stages: dict[str, float] = field(default_factory=dict)

    def row(self, type_info: TypeInfo, nr_types: int) -> dict[str, Any]:
        """The CSV row; a failed slide has empty count/area/density cells, never a 0 that reads as real."""
        r: dict[str, Any] = {"slide": self.slide}
        if self.status != "ok":
            r["status"] = self.status
            return r
        r.update(named_counts({int(k): v for k, v in self.types.items()}, type_info, nr_types))
        r["total"] = self.total
        r["tissue_area_mm2"] = f"{self.tissue_area_mm2:.4f}"
        dens = self.total / self.tissue_area_mm2 if self.tissue_area_mm2 > 0 else 0.0
        r["crypts_per_mm2"] = f"{dens:.3f}"
        r["status"] = self.status
        return r

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=1, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> SlideResult:
        return cls(**json.loads(text))


def write_counts(path: Path, results: Sequence[SlideResult], type_info: TypeInfo, nr_types: int) -> None:
    cols = [
        "slide",
        *count_columns(type_info, nr_types),
        "total",
        "tissue_area_mm2",
        "crypts_per_mm2",
        "status",
    ]
    write_counts_csv(path, [r.row(type_info, nr_types) for r in results], cols)


def iter_records(part_dir: Path, indices: Sequence[int]) -> Iterator[dict[str, Any]]:
    """Records of all chunks in region order, with final ids 1..N assigned on the fly."""
    next_id = 1
    for idx in sorted(indices):
        with open(part_path(part_dir, idx)) as f:
            for line in f:
                rec = json.loads(line)
                rec["id"] = next_id
                next_id += 1
                yield rec


def _final_records(
    part_dir: Path, indices: Sequence[int], slide_mpp: float, nn_px: np.ndarray
) -> Iterator[dict[str, Any]]:
    """Records with their morphometry in µm, nearest neighbours taken over the whole slide."""
    for k, rec in enumerate(iter_records(part_dir, indices)):
        shape = dict(rec.pop("shape", None) or {})
        shape["nn_distance"] = None if math.isnan(nn_px[k]) else float(nn_px[k])
        rec["measurements"] = physical_measurements({"area": rec["area"], "shape": shape}, slide_mpp)
        yield rec


def _crypt_row(rec: dict[str, Any], slide_mpp: float) -> list[Any]:
    cx, cy = rec["centroid"]
    m = rec["measurements"]
    tp = rec.get("type_prob")
    return [
        rec["id"],
        rec["type"],
        rec.get("type_name", ""),
        "" if tp is None else tp,
        round(cx * slide_mpp, 3),
        round(cy * slide_mpp, 3),
        *("" if m.get(k) is None else m[k] for k in MEASUREMENT_KEYS),
    ]


def group_statistics(groups: dict[str, dict[str, array]]) -> dict[str, dict[str, Any]]:
    """{group: {"count", "area_um2": quartiles, "nn_distance_um": quartiles}} from per-group values."""
    return {
        g: {"count": len(v["area_um2"]), **{k: quartiles(v[k]) for k in STAT_KEYS}} for g, v in groups.items()
    }


def merge_outputs(
    slide_dir: Path,
    name: str,
    part_dir: Path,
    indices: Sequence[int],
    type_info: TypeInfo,
    slide_mpp: float,
    thumb: np.ndarray,
    thumb_scale: float,
) -> dict[str, int]:
    """Write instances.jsonl, <name>.geojson, crypts.csv, morphometry.json, thumbnail.png and the
    report figures (density.png, histograms.png); returns counts per type id (str)."""
    types: dict[str, int] = {}
    centroids = np.array([r["centroid"] for r in iter_records(part_dir, indices)], np.float64).reshape(-1, 2)
    nn_px = nearest_neighbour_distances(centroids)
    groups: dict[str, dict[str, array]] = {ALL_GROUP: {k: array("d") for k in STAT_KEYS}}

    with atomic_write(slide_dir / "crypts.csv", "w") as fcsv:
        writer = csv.writer(fcsv, lineterminator="\n")
        writer.writerow([*CRYPT_COLUMNS, *MEASUREMENT_KEYS])

        def counted() -> Iterator[dict[str, Any]]:
            for rec in _final_records(part_dir, indices, slide_mpp, nn_px):
                types[str(rec["type"])] = types.get(str(rec["type"]), 0) + 1
                writer.writerow(_crypt_row(rec, slide_mpp))
                tname = rec.get("type_name") or (
                    type_info.name(rec["type"]) if rec["type"] else UNTYPED_COLUMN
                )
                for g in (ALL_GROUP, tname):
                    vals = groups.setdefault(g, {k: array("d") for k in STAT_KEYS})
                    for k in STAT_KEYS:
                        v = rec["measurements"][k]
                        vals[k].append(math.nan if v is None else v)
                yield rec

        write_jsonl(slide_dir / "instances.jsonl", counted())
    write_geojson(
        slide_dir / f"{name}.geojson",
        (
            geojson_feature(r["id"], r, type_info, "detection", mpp=slide_mpp)
            for r in _final_records(part_dir, indices, slide_mpp, nn_px)
        ),
    )
    stats = {"slide": name, "mpp": slide_mpp, "groups": group_statistics(groups)}
    atomic_write_text(slide_dir / "morphometry.json", json.dumps(stats, indent=1))
    # contours: level-0 pixel centres -> thumbnail pixel centres; the report's smaller copy gets
    # its own, thicker outlines (1-px lines of the full thumbnail vanish when it is shrunk)
    small, s_small = report_canvas(thumb)
    canvases = [(thumb, thumb_scale, 1), (small, thumb_scale * s_small, 2)]

    def draw(batch: dict[int, dict[str, Any]]) -> None:
        for k, (img, sc, thick) in enumerate(canvases):
            o = 0.5 * sc - 0.5
            canvases[k] = (
                draw_overlay(img, batch, type_info, thickness=thick, scale=sc, offset=(o, o)),
                sc,
                thick,
            )

    batch: dict[int, dict[str, Any]] = {}
    for rec in iter_records(part_dir, indices):
        batch[rec["id"]] = rec
        if len(batch) >= 5000:
            draw(batch)
            batch = {}
    if batch:
        draw(batch)
    write_png(slide_dir / "thumbnail.png", canvases[0][0])
    write_jpeg(slide_dir / OVERVIEW_FILE, canvases[1][0])
    off = 0.5 * thumb_scale - 0.5
    try:  # figures are a convenience: a plotting failure must not cost the slide's results
        render_slide_figures(
            slide_dir, thumb, centroids * thumb_scale + off, slide_mpp / thumb_scale, groups, type_info
        )
    except Exception as e:  # noqa: BLE001
        log.warning("%s: report figures not drawn (%s: %s)", name, type(e).__name__, e)
    return types


def summary_columns(type_info: TypeInfo, nr_types: int) -> list[str]:
    """summary.csv header: per group (all crypts, then each type, untyped) count, density, quartiles."""
    cols = ["slide", "status", "tissue_area_mm2"]
    for g in [ALL_GROUP, *count_columns(type_info, nr_types)]:
        cols += [f"{g}_count", f"{g}_per_mm2"]
        cols += [f"{g}_{k}_{q}" for k in STAT_KEYS for q in ("median", "q1", "q3")]
    return cols


def summary_row(res: SlideResult, stats: dict[str, Any] | None, type_info: TypeInfo, nr_types: int) -> dict:
    """One summary.csv row; failed slides (and missing statistics) keep empty cells, never a fake 0."""
    row: dict[str, Any] = {"slide": res.slide, "status": res.status}
    if res.status != "ok":
        return row
    row["tissue_area_mm2"] = f"{res.tissue_area_mm2:.4f}"
    groups = (stats or {}).get("groups")
    if groups is None:
        return row
    for g in [ALL_GROUP, *count_columns(type_info, nr_types)]:
        st = groups.get(g, {"count": 0})
        n = int(st.get("count", 0))
        row[f"{g}_count"] = n
        row[f"{g}_per_mm2"] = f"{n / res.tissue_area_mm2:.3f}" if res.tissue_area_mm2 > 0 else ""
        for k in STAT_KEYS:
            for q, v in (st.get(k) or {}).items():
                row[f"{g}_{k}_{q}"] = "" if v is None else f"{v:.3f}"
    return row


def write_summary(
    path: Path, out_dir: Path, results: Sequence[SlideResult], type_info: TypeInfo, nr_types: int
) -> None:
    rows = [summary_row(r, read_slide_statistics(out_dir / r.slide), type_info, nr_types) for r in results]
    write_counts_csv(path, rows, summary_columns(type_info, nr_types))


def write_run_report(
    out_dir: str | Path, results: Sequence[SlideResult], type_info: TypeInfo, nr_types: int
) -> bool:
    """Write ``summary.csv`` and ``report.html`` for a run; False (logged) if either failed.

    Called once the slides are done; an error here must not turn finished slides into failures.
    """
    out_dir = Path(out_dir)
    try:
        write_summary(out_dir / "summary.csv", out_dir, results, type_info, nr_types)
        write_report(out_dir / "report.html", out_dir, results, type_info, nr_types)
    except Exception:  # noqa: BLE001 - reported, and the run's results stay valid
        log.exception("summary.csv / report.html could not be written")
        return False
    return True
