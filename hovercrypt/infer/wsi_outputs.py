"""Per-slide and per-run outputs of whole-slide inference.

Chunk part files (one JSON Lines file per region, written atomically by the
post-processing workers) are merged here, in region order, into the final
``instances.jsonl`` with ids 1..N, the QuPath GeoJSON, and a thumbnail with
contours. Everything streams part by part, so a slide with a million crypts
needs no more memory than its largest chunk.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from hovercrypt.infer.stitch import part_path
from hovercrypt.io.export import (
    count_columns,
    geojson_feature,
    named_counts,
    write_counts_csv,
    write_geojson,
    write_jsonl,
)
from hovercrypt.io.images import write_png
from hovercrypt.io.overlay import draw_overlay
from hovercrypt.io.type_info import TypeInfo


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
    """Write instances.jsonl, <name>.geojson and thumbnail.png; returns counts per type id (str)."""
    types: dict[str, int] = {}

    def counted() -> Iterator[dict[str, Any]]:
        for rec in iter_records(part_dir, indices):
            types[str(rec["type"])] = types.get(str(rec["type"]), 0) + 1
            yield rec

    write_jsonl(slide_dir / "instances.jsonl", counted())
    write_geojson(
        slide_dir / f"{name}.geojson",
        (
            geojson_feature(r["id"], r, type_info, "detection", mpp=slide_mpp)
            for r in iter_records(part_dir, indices)
        ),
    )
    # contours: level-0 pixel centres -> thumbnail pixel centres
    off = 0.5 * thumb_scale - 0.5
    overlay = thumb
    batch: dict[int, dict[str, Any]] = {}
    for rec in iter_records(part_dir, indices):
        batch[rec["id"]] = rec
        if len(batch) >= 5000:
            overlay = draw_overlay(
                overlay, batch, type_info, thickness=1, scale=thumb_scale, offset=(off, off)
            )
            batch = {}
    if batch:
        overlay = draw_overlay(overlay, batch, type_info, thickness=1, scale=thumb_scale, offset=(off, off))
    write_png(slide_dir / "thumbnail.png", overlay)
    return types
