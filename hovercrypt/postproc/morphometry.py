"""Crypt morphometry: size, shape and spacing of every instance.

Counts are where crypt studies start; architecture (size, shape, spacing) is
what changes in colitis, after radiation and in neoplasia. The measurements are
taken once, in the instance-info pass, on the instance's own bounding-box crop
(:func:`crop_shape`), in the pixels of that pass. Lengths and areas are stored
in pixels (``inst["shape"]``) so they can follow the same ``scale`` as the
coordinates (processing -> level-0 pixels) and become µm only where the output
resolution is known (:func:`physical_measurements`).

Definitions (also in the README, generated from :data:`MEASUREMENTS`):

- second moments are those of the union of the pixel *squares* (centre
  covariance + 1/12 per axis), so a 1-pixel-wide line has a width of about one
  pixel rather than zero;
- the perimeter is the Crofton estimate (4 directions) of the outer boundary of
  the largest piece (holes are not boundary). On discs and ellipses of 10-120 px
  radius it is within 0.5% of the true length, where the traced 8-connected
  outline overestimates by ~5%, which would bias circularity to ~0.9 for a disc.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np


@dataclass(frozen=True)
class Measurement:
    """One per-crypt measurement: its names in each output and how it scales with pixel size."""

    key: str  # record key (instances.jsonl / json ``measurements``) and crypts.csv column
    px_key: str  # key in the pixel-unit ``shape`` dict of instance_info ("area": the record's area)
    qupath: str  # GeoJSON measurement name (QuPath measurement table column)
    power: int  # 2 for areas, 1 for lengths, 0 for scale-free values
    unit: str
    definition: str


MEASUREMENTS: tuple[Measurement, ...] = (
    Measurement("area_um2", "area", "Area um^2", 2, "µm²", "number of pixels × pixel area"),
    Measurement(
        "perimeter_um",
        "perimeter",
        "Perimeter um",
        1,
        "µm",
        "length of the outer boundary (largest piece, holes ignored), Crofton estimate over 4 directions",
    ),
    Measurement(
        "equivalent_diameter_um",
        "equivalent_diameter",
        "Equivalent diameter um",
        1,
        "µm",
        "diameter of the disc with the same area, √(4·area/π)",
    ),
    Measurement(
        "major_axis_um",
        "major_axis",
        "Major axis um",
        1,
        "µm",
        "major axis of the ellipse with the same second moments, 4√λ₁ "
        "(λ₁ ≥ λ₂ the eigenvalues of the covariance of the crypt's pixel squares)",
    ),
    Measurement("minor_axis_um", "minor_axis", "Minor axis um", 1, "µm", "minor axis of that ellipse, 4√λ₂"),
    Measurement(
        "eccentricity",
        "eccentricity",
        "Eccentricity",
        0,
        "-",
        "√(1 − λ₂/λ₁) of that ellipse: 0 for a disc, towards 1 for elongated crypts",
    ),
    Measurement(
        "solidity",
        "solidity",
        "Solidity",
        0,
        "-",
        "area / number of pixels whose centres lie in the convex hull of the crypt's pixel centres: "
        "1 for convex crypts, lower for budding or branched ones",
    ),
    Measurement(
        "circularity",
        "circularity",
        "Circularity",
        0,
        "-",
        "4π·area/perimeter²: 1 for a disc, lower for elongated or ragged outlines "
        "(can exceed 1 slightly for objects a few pixels across)",
    ),
    Measurement(
        "orientation_deg",
        "orientation",
        "Orientation deg",
        0,
        "degrees",
        "angle of the major axis from the image x axis, counter-clockwise as displayed, in (−90, 90]",
    ),
    Measurement(
        "nn_distance_um",
        "nn_distance",
        "Nearest neighbour um",
        1,
        "µm",
        "distance from the centroid to the nearest other crypt's centroid (any type; whole slide, "
        "across region borders); empty when the image has a single crypt",
    ),
)
MEASUREMENT_KEYS: tuple[str, ...] = tuple(m.key for m in MEASUREMENTS)


def _crofton4(piece: np.ndarray) -> float:
    from skimage.measure import perimeter_crofton

    return float(perimeter_crofton(piece, directions=4))


def crop_shape(padded: np.ndarray, contours: Sequence[np.ndarray], best: int, area: int) -> dict[str, float]:
    """Pixel-unit shape of one instance from its zero-padded binary crop and its external contours.

    ``contours`` are those of ``cv2.findContours(padded, RETR_EXTERNAL, ...)``;
    ``best`` indexes the largest piece, whose outline is the crypt's perimeter.
    Returns lengths in pixels, angles in degrees and scale-free ratios.
    """
    m = cv2.moments(padded, binaryImage=True)
    n = max(m["m00"], 1.0)
    a, b, c = m["mu20"] / n + 1 / 12, m["mu11"] / n, m["mu02"] / n + 1 / 12
    root = math.sqrt(((a - c) / 2) ** 2 + b * b)
    lam1, lam2 = (a + c) / 2 + root, max((a + c) / 2 - root, 0.0)
    theta = 0.5 * math.atan2(2 * b, a - c)  # from +x towards +y (down): clockwise on screen
    orient = -math.degrees(theta)
    if orient <= -90.0:
        orient += 180.0

    piece = np.zeros_like(padded)
    cv2.drawContours(piece, [contours[best]], -1, 1, thickness=cv2.FILLED)
    perim = _crofton4(piece)
    hull = cv2.convexHull(np.concatenate(contours))[:, 0, :]
    hull_area = max(hull_pixel_count(hull), area, 1)
    return {
        "perimeter": perim,
        "equivalent_diameter": math.sqrt(4 * area / math.pi),
        "major_axis": 4 * math.sqrt(lam1),
        "minor_axis": 4 * math.sqrt(lam2),
        "eccentricity": math.sqrt(max(0.0, 1 - lam2 / lam1)) if lam1 > 0 else 0.0,
        "solidity": area / hull_area,
        "circularity": 4 * math.pi * area / perim**2 if perim > 0 else 0.0,
        "orientation": orient,
    }


def hull_pixel_count(hull: np.ndarray) -> int:
    """Number of pixel centres (integer points) inside or on the convex polygon ``hull`` (K, 2).

    Counted exactly, row by row, from the polygon's edges, so a digitised convex shape has
    a hull of exactly its own pixels and a solidity of 1 (rasterising the hull with
    ``fillConvexPoly`` adds pixels the edges only graze: 0.97 for a disc of 12 px radius).
    """
    pts = np.asarray(hull, np.int64).reshape(-1, 2)
    if len(pts) < 3:
        d = np.abs(pts[-1] - pts[0])
        return int(math.gcd(int(d[0]), int(d[1]))) + 1
    ys = np.arange(pts[:, 1].min(), pts[:, 1].max() + 1, dtype=np.float64)[:, None]
    x1, y1 = pts[:, 0].astype(np.float64), pts[:, 1].astype(np.float64)
    x2, y2 = np.roll(x1, -1), np.roll(y1, -1)
    spans = (ys >= np.minimum(y1, y2)) & (ys <= np.maximum(y1, y2))
    flat = y1 == y2
    with np.errstate(invalid="ignore", divide="ignore"):
        xs = np.where(flat, x1, x1 + (ys - y1) * (x2 - x1) / (y2 - y1))
    lo = np.where(spans, np.where(flat, np.minimum(x1, x2), xs), np.inf).min(1)
    hi = np.where(spans, np.where(flat, np.maximum(x1, x2), xs), -np.inf).max(1)
    return int((np.floor(hi + 1e-9) - np.ceil(lo - 1e-9) + 1).clip(0).sum())


def nearest_neighbour_distances(points: Any) -> np.ndarray:
    """Distance from each (x, y) point to its nearest other point (NaN when there is no other).

    A KD-tree keeps this O(N log N), so a slide with a million crypts takes seconds.
    """
    from scipy.spatial import cKDTree

    pts = np.asarray(points, np.float64).reshape(-1, 2)
    if len(pts) < 2:
        return np.full(len(pts), np.nan)
    dist, _ = cKDTree(pts).query(pts, k=2)
    return dist[:, 1]


def add_nearest_neighbours(info: Mapping[int, dict[str, Any]]) -> None:
    """Store each instance's nearest-neighbour distance (pixels) in its ``shape`` dict, in place."""
    keys = list(info)
    nn = nearest_neighbour_distances([info[k]["centroid"] for k in keys])
    for k, d in zip(keys, nn, strict=True):
        info[k].setdefault("shape", {})["nn_distance"] = None if np.isnan(d) else float(d)


def scale_shape(shape: Mapping[str, Any], scale: float) -> dict[str, Any]:
    """The pixel-unit shape dict with lengths multiplied by ``scale`` (ratios and angles kept)."""
    powers = {m.px_key: m.power for m in MEASUREMENTS}
    return {k: (v * scale ** powers.get(k, 0) if v is not None else None) for k, v in shape.items()}


def physical_measurements(inst: Mapping[str, Any], mpp: float) -> dict[str, float | None]:
    """The :data:`MEASUREMENTS` of one instance in µm (``inst``: ``area`` and ``shape`` in pixels
    of ``mpp`` µm). Missing values (no neighbour) are None."""
    shape = inst.get("shape") or {}
    out: dict[str, float | None] = {}
    for m in MEASUREMENTS:
        v = inst.get("area") if m.px_key == "area" else shape.get(m.px_key)
        out[m.key] = None if v is None else round(float(v) * mpp**m.power, 4 if m.power == 0 else 3)
    return out


def quartiles(values: Iterable[float | None]) -> dict[str, float | None]:
    """Median and the quartiles that bound the IQR; None (not 0) when there are no values."""
    v = np.asarray([x for x in values if x is not None], np.float64)
    v = v[np.isfinite(v)]
    if not len(v):
        return {"median": None, "q1": None, "q3": None}
    q1, med, q3 = np.percentile(v, [25, 50, 75])
    return {"median": float(med), "q1": float(q1), "q3": float(q3)}
