"""Crypt morphometry on drawn shapes whose answers are known by hand, and its exports.

Tolerances are the discretisation error of shapes a few dozen pixels across:
an area is exact to ~1/r, the Crofton perimeter to <1% on smooth outlines.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from hovercrypt.io.export import geojson_feature, instance_record, instances_document, to_feature_collection
from hovercrypt.io.type_info import TypeInfo
from hovercrypt.postproc import instance_info
from hovercrypt.postproc.morphometry import (
    MEASUREMENT_KEYS,
    MEASUREMENTS,
    nearest_neighbour_distances,
    physical_measurements,
    quartiles,
)
from hovercrypt.testing.synthetic import random_ellipses

TI = TypeInfo(("background", "benign", "malignant"), ((0, 0, 0), (0, 200, 0), (230, 0, 0)))
MPP = 0.5


def draw_ellipse(
    inst: np.ndarray, label: int, cx: float, cy: float, a: float, b: float, angle_deg: float = 0.0
) -> None:
    """Fill pixels whose centre lies in the ellipse; ``angle_deg`` turns the major axis
    counter-clockwise as displayed (image y points down)."""
    yy, xx = np.mgrid[: inst.shape[0], : inst.shape[1]]
    dx, dy = xx - cx, yy - cy
    t = math.radians(angle_deg)
    u = dx * math.cos(t) - dy * math.sin(t)  # along the major axis, direction (cos t, -sin t)
    v = dx * math.sin(t) + dy * math.cos(t)
    inst[(u / a) ** 2 + (v / b) ** 2 <= 1.0] = label


def measure(inst: np.ndarray, mpp: float = MPP) -> dict[int, dict]:
    return {k: physical_measurements(v, mpp) for k, v in instance_info(inst).items()}


def test_table_lists_every_measurement_once() -> None:
    assert len(set(MEASUREMENT_KEYS)) == len(MEASUREMENTS)
    assert {m.qupath for m in MEASUREMENTS} >= {"Area um^2", "Perimeter um", "Nearest neighbour um"}
    assert all(m.definition and m.unit for m in MEASUREMENTS)


@pytest.mark.parametrize("r", [12.0, 40.0])
def test_disc(r: float) -> None:
    inst = np.zeros((2 * int(r) + 20, 2 * int(r) + 24), np.int32)
    draw_ellipse(inst, 1, r + 10.3, r + 9.7, r, r)
    m = measure(inst)[1]
    assert m["area_um2"] == pytest.approx(math.pi * r * r * MPP**2, rel=2 / r)
    assert m["perimeter_um"] == pytest.approx(2 * math.pi * r * MPP, rel=0.02)
    assert m["equivalent_diameter_um"] == pytest.approx(2 * r * MPP, rel=1 / r)
    assert m["major_axis_um"] == pytest.approx(2 * r * MPP, rel=0.02)
    assert m["minor_axis_um"] == pytest.approx(2 * r * MPP, rel=0.02)
    assert m["circularity"] == pytest.approx(1.0, abs=0.03)
    assert m["eccentricity"] < 0.2  # sqrt(1 - (b/a)^2) amplifies a 1% axis difference to ~0.14
    assert m["solidity"] == pytest.approx(1.0, abs=0.005)  # a digitised disc is digitally convex
    assert m["nn_distance_um"] is None  # alone in the image


@pytest.mark.parametrize("angle", [0.0, 30.0, -60.0, 90.0])
def test_ellipse_axes_and_orientation(angle: float) -> None:
    a, b = 50.0, 20.0
    inst = np.zeros((140, 150), np.int32)
    draw_ellipse(inst, 3, 75.2, 69.6, a, b, angle)
    m = measure(inst, mpp=1.0)[3]
    assert m["major_axis_um"] == pytest.approx(2 * a, rel=0.02)
    assert m["minor_axis_um"] == pytest.approx(2 * b, rel=0.03)
    assert m["eccentricity"] == pytest.approx(math.sqrt(1 - (b / a) ** 2), abs=0.01)
    want = angle if angle > -90 else angle + 180  # (-90, 90]
    got = m["orientation_deg"]
    assert -90 < got <= 90
    assert min(abs(got - want), 180 - abs(got - want)) < 1.0
    h = ((a - b) / (a + b)) ** 2  # Ramanujan's perimeter of an ellipse
    perim = math.pi * (a + b) * (1 + 3 * h / (10 + math.sqrt(4 - 3 * h)))
    assert m["perimeter_um"] == pytest.approx(perim, rel=0.02)
    assert m["circularity"] == pytest.approx(4 * math.pi * math.pi * a * b / perim**2, rel=0.04)


def test_solidity_of_an_l_shape() -> None:
    """A 40 x 40 square missing a 20 x 20 corner: area 1200, hull 1400 (the corner's triangle)."""
    inst = np.zeros((60, 60), np.int32)
    inst[10:50, 10:50] = 1
    inst[10:30, 30:50] = 0
    m = measure(inst, mpp=1.0)[1]
    assert m["area_um2"] == 1200
    assert m["solidity"] == pytest.approx(1200 / 1400, abs=0.02)
    assert 0 < m["circularity"] < 0.8


def test_nearest_neighbour_distance_of_two_discs_and_a_far_one() -> None:
    inst = np.zeros((200, 400), np.int32)
    draw_ellipse(inst, 1, 60.3, 80.0, 15, 15)
    draw_ellipse(inst, 2, 60.3 + 72.0, 80.0 + 54.0, 15, 15)  # 90 px away (3-4-5 triangle)
    draw_ellipse(inst, 3, 350.0, 40.0, 10, 10)
    m = measure(inst)
    assert m[1]["nn_distance_um"] == pytest.approx(90 * MPP, abs=0.05)
    assert m[2]["nn_distance_um"] == pytest.approx(90 * MPP, abs=0.05)
    far = math.hypot(350.0 - 132.3, 40.0 - 134.0)
    assert m[3]["nn_distance_um"] == pytest.approx(far * MPP, abs=0.05)
    d = nearest_neighbour_distances([[0, 0], [3, 4], [10, 4]])
    np.testing.assert_allclose(d, [5, 5, 7])
    assert np.isnan(nearest_neighbour_distances([[1, 2]])).all()
    assert nearest_neighbour_distances(np.zeros((0, 2))).shape == (0,)


def test_measurements_do_not_depend_on_the_output_pixels() -> None:
    """Scaling coordinates to level-0 pixels (scale=4, mpp/4) gives the same µm values."""
    inst = random_ellipses((120, 140), 6, (10, 25), seed=2)
    info = instance_info(inst)
    for k, v in info.items():
        direct = instance_record(k, v, mpp=2.0)["measurements"]
        via = instance_record(k, v, scale=4.0, offset=(10, 20))  # pixel shape travels, in level-0 px
        assert "measurements" not in via and via["shape"]["perimeter"] == pytest.approx(
            4 * v["shape"]["perimeter"], rel=1e-3
        )
        later = physical_measurements(via, 0.5)
        for key in MEASUREMENT_KEYS:
            if direct[key] is None:
                assert later[key] is None
            else:
                assert later[key] == pytest.approx(direct[key], rel=1e-3, abs=1e-3)


def test_json_document_has_measurements_in_um() -> None:
    inst = np.zeros((80, 80), np.int32)
    draw_ellipse(inst, 1, 20, 20, 10, 10)
    draw_ellipse(inst, 2, 60, 60, 12, 8, 45)
    doc = json.loads(json.dumps(instances_document(instance_info(inst), {"mpp": 0.25}, TI)))
    for rec in doc["instances"].values():
        assert set(rec["measurements"]) == set(MEASUREMENT_KEYS) and "shape" not in rec
        assert rec["measurements"]["area_um2"] == pytest.approx(rec["area"] * 0.0625, abs=1e-3)
    assert doc["instances"]["1"]["measurements"]["nn_distance_um"] == pytest.approx(
        math.hypot(40, 40) * 0.25, abs=0.02
    )


def test_geojson_polygons_valid_closed_and_areas_agree() -> None:
    shapely = pytest.importorskip("shapely", reason="shapely (a dev dependency) checks the polygons")
    from shapely.geometry import shape

    inst = random_ellipses((300, 340), 14, (10, 40), seed=7, allow_touching=True)
    info = instance_info(inst)
    fc = json.loads(json.dumps(to_feature_collection(info, TI, mpp=MPP)))
    assert len(fc["features"]) == len(info)
    for feat in fc["features"]:
        ring = feat["geometry"]["coordinates"][0]
        assert ring[0] == ring[-1] and len(ring) >= 4
        poly = shape(feat["geometry"])
        assert poly.is_valid, shapely.validation.explain_validity(poly)
        meas = feat["properties"]["measurements"]
        assert all(isinstance(v, (int, float)) and math.isfinite(v) for v in meas.values())
        assert {m.qupath for m in MEASUREMENTS} <= set(meas)
        area_px = meas["Area px"]
        assert meas["Area um^2"] == pytest.approx(area_px * MPP**2, abs=1e-3)
        # the outline runs through boundary pixel centres, so the polygon misses half a pixel
        # along its perimeter (Pick: polygon = pixels - boundary/2 - 1): agree within that strip
        perim_px = meas["Perimeter um"] / MPP
        assert abs(poly.area - area_px) <= 0.5 * perim_px + 2
        assert poly.area == pytest.approx(area_px, rel=0.12)


def test_geojson_leaves_out_a_missing_neighbour() -> None:
    inst = np.zeros((40, 40), np.int32)
    draw_ellipse(inst, 1, 20.3, 19.6, 12, 12)
    ((k, v),) = instance_info(inst).items()
    meas = geojson_feature(k, v, TI, mpp=1.0)["properties"]["measurements"]
    assert "Nearest neighbour um" not in meas and meas["Circularity"] == pytest.approx(1, abs=0.05)
    # without a resolution only pixel values are written (no made-up µm)
    assert "Area um^2" not in geojson_feature(k, v, TI)["properties"]["measurements"]


def test_tiny_instances_do_not_break() -> None:
    inst = np.zeros((10, 12), np.int32)
    inst[2, 3] = 1  # one pixel
    inst[5:8, 8] = 2  # a vertical line
    m = measure(inst, mpp=1.0)
    assert m[1]["area_um2"] == 1 and m[1]["solidity"] == 1.0
    assert m[2]["major_axis_um"] > m[2]["minor_axis_um"] > 0  # pixel squares: width ~1, not 0
    assert m[2]["orientation_deg"] == pytest.approx(90.0)
    for rec in m.values():
        assert all(v is None or math.isfinite(v) for v in rec.values())


def test_hull_pixel_count_is_exact() -> None:
    from hovercrypt.postproc.morphometry import hull_pixel_count

    assert hull_pixel_count(np.array([[0, 0], [4, 0], [4, 3], [0, 3]])) == 20
    assert hull_pixel_count(np.array([[0, 0], [4, 0], [0, 4]])) == 15  # 5 + 4 + 3 + 2 + 1
    assert hull_pixel_count(np.array([[2, 2]])) == 1
    assert hull_pixel_count(np.array([[0, 0], [6, 3]])) == 4  # (0,0) (2,1) (4,2) (6,3)
    rng = np.random.default_rng(0)
    pts = rng.integers(0, 30, (12, 2))
    import cv2

    hull = cv2.convexHull(pts.astype(np.int32))[:, 0, :]
    yy, xx = np.mgrid[:30, :30]
    inside = [
        cv2.pointPolygonTest(hull.reshape(-1, 1, 2), (int(x), int(y)), False) >= 0
        for x, y in zip(xx.ravel(), yy.ravel())
    ]
    assert hull_pixel_count(hull) == sum(inside)


def test_quartiles() -> None:
    assert quartiles([]) == {"median": None, "q1": None, "q3": None}
    q = quartiles([1, 2, 3, 4, 5, None, float("nan")])
    assert q == {"median": 3.0, "q1": 2.0, "q3": 4.0}


def test_readme_defines_every_measurement(repo_root) -> None:
    """The README's table is the user's reference: every column and QuPath name must be in it."""
    text = (repo_root / "README.md").read_text(encoding="utf-8")
    for m in MEASUREMENTS:
        assert f"| `{m.key}` | {m.qupath} |" in text, m.key
