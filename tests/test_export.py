"""Instance exports: JSON, JSON Lines, .mat, QuPath GeoJSON, counts CSV, overlay."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import scipy.io

from hovercrypt.io.export import (
    closed_ring,
    count_by_type,
    count_columns,
    geojson_feature,
    instance_record,
    to_feature_collection,
    write_counts_csv,
    write_geojson,
    write_instances_json,
    write_jsonl,
    write_mat,
)
from hovercrypt.io.overlay import UNTYPED_COLOUR, draw_overlay
from hovercrypt.io.type_info import TypeInfo
from hovercrypt.postproc import instance_info
from hovercrypt.testing.synthetic import random_ellipses

TI = TypeInfo(("background", "benign", "malignant"), ((0, 0, 0), (0, 200, 0), (230, 0, 0)))


@pytest.fixture(scope="module")
def layout():
    """An instance map with ellipses (some cut by the border) and a type per instance."""
    inst = random_ellipses((97, 131), 12, radius_range=(6, 18), seed=3)
    ids = np.unique(inst)[1:]
    types = {int(i): 1 + int(i) % 2 for i in ids}
    tp = np.zeros((*inst.shape, 3), np.float32)
    tp[..., 0] = 1.0
    for i, t in types.items():
        tp[inst == i] = np.eye(3, dtype=np.float32)[t] * 0.8 + 0.1
    return inst, types, instance_info(inst, tp)


def test_closed_ring_closes_and_handles_degenerate_contours():
    ring = closed_ring([[0, 0], [4, 0], [4, 3]])
    assert ring[0] == ring[-1] and len(ring) == 4
    assert closed_ring([[0, 0], [4, 0], [4, 3], [0, 0]]) == ring  # already closed: not doubled
    one = closed_ring([[5, 7]])  # a 1-pixel instance: a half-pixel square around it
    assert one[0] == one[-1] and len(one) == 5
    xs, ys = [p[0] for p in one], [p[1] for p in one]
    assert (min(xs), max(xs), min(ys), max(ys)) == (4.5, 5.5, 6.5, 7.5)
    moved = closed_ring([[0, 0], [4, 0], [4, 3]], scale=2.0, offset=(10, 20))
    assert moved[:3] == [[10, 20], [18, 20], [18, 26]]
    shifted = closed_ring([[0, 0], [4, 0], [4, 3]], scale=2.0, half_pixel=True)
    assert shifted[:3] == [[1, 1], [9, 1], [9, 7]]
    with pytest.raises(ValueError, match="empty"):
        closed_ring([])


def test_geojson_features_follow_qupath_conventions(layout, tmp_path):
    inst, types, info = layout
    n = write_geojson(tmp_path / "a.geojson", to_feature_collection(info, TI, mpp=0.5)["features"])
    doc = json.loads((tmp_path / "a.geojson").read_text())
    assert doc["type"] == "FeatureCollection" and n == len(doc["features"]) == len(info)
    h, w = inst.shape
    for feat in doc["features"]:
        assert feat["type"] == "Feature" and feat["geometry"]["type"] == "Polygon"
        ring = np.array(feat["geometry"]["coordinates"][0])
        assert len(ring) >= 4 and np.array_equal(ring[0], ring[-1])
        # QuPath coordinates: pixel (i, j) spans [i, i+1), so vertices are pixel centres + 0.5
        assert ring[:, 0].min() >= 0.5 and ring[:, 0].max() <= w - 0.5
        assert ring[:, 1].min() >= 0.5 and ring[:, 1].max() <= h - 0.5
        props = feat["properties"]
        i = props["measurements"]["Instance id"]
        assert props["objectType"] == "annotation"
        assert props["classification"] == {"name": TI.name(types[i]), "color": list(TI.color(types[i]))}
        assert props["measurements"]["Area px"] == int((inst == i).sum())
        assert props["measurements"]["Area um^2"] == pytest.approx((inst == i).sum() * 0.25, abs=1e-3)
        # every ring vertex lies on its instance (contours trace boundary pixel centres)
        assert np.all(inst[(ring[:, 1] - 0.5).astype(int), (ring[:, 0] - 0.5).astype(int)] == i)


def test_geojson_untyped_and_detection():
    inst = {"bbox": [2, 3, 5, 6], "centroid": [3, 4], "contour": [], "area": 9, "type": 0, "type_prob": None}
    f = geojson_feature(7, inst, TI, object_type="detection")
    assert f["properties"]["objectType"] == "detection" and "classification" not in f["properties"]
    assert "Type probability" not in f["properties"]["measurements"]
    ring = f["geometry"]["coordinates"][0]  # no contour: the box's pixel centres (+0.5)
    assert ring[0] == ring[-1]
    assert {tuple(p) for p in ring} == {(2.5, 3.5), (4.5, 3.5), (4.5, 5.5), (2.5, 5.5)}
    with pytest.raises(ValueError, match="object_type"):
        geojson_feature(7, inst, TI, object_type="cell")


def test_json_and_jsonl_round_trip(layout, tmp_path):
    inst, types, info = layout
    write_instances_json(tmp_path / "a.json", info, {"image": "a.png", "mpp": 0.5}, TI)
    doc = json.loads((tmp_path / "a.json").read_text())
    assert doc["image"] == "a.png" and doc["nr_instances"] == len(info)
    assert sorted(int(k) for k in doc["instances"]) == sorted(info)
    for k, rec in doc["instances"].items():
        src = info[int(k)]
        assert rec["bbox"] == src["bbox"] and rec["area"] == src["area"]
        assert rec["centroid"] == pytest.approx(src["centroid"], abs=1e-3)
        assert rec["type"] == types[int(k)] and rec["type_name"] == TI.name(types[int(k)])
        assert rec["type_prob"] == pytest.approx(0.9, abs=1e-3)
        assert rec["contour"][0] == rec["contour"][-1]
    recs = [instance_record(k, v, scale=4.0, offset=(100, 200)) for k, v in sorted(info.items())]
    assert write_jsonl(tmp_path / "a.jsonl", recs) == len(info)
    lines = [json.loads(s) for s in (tmp_path / "a.jsonl").read_text().splitlines()]
    k0 = min(info)
    assert lines[0]["id"] == k0
    assert lines[0]["centroid"] == pytest.approx(np.array(info[k0]["centroid"]) * 4 + [100, 200], abs=1e-3)
    assert lines[0]["area"] == info[k0]["area"] * 16


def test_mat_export(layout, tmp_path):
    inst, types, info = layout
    write_mat(tmp_path / "a.mat", inst, info)
    m = scipy.io.loadmat(tmp_path / "a.mat")
    assert m["inst_map"].dtype == np.int32 and np.array_equal(m["inst_map"], inst)
    k = len(info)
    assert m["inst_type"].shape == (k, 1) and m["inst_centroid"].shape == (k, 2)
    for row, i in enumerate(m["inst_uid"][:, 0]):
        ys, xs = np.nonzero(inst == i)
        assert m["inst_type"][row, 0] == types[int(i)]
        np.testing.assert_allclose(m["inst_centroid"][row], [xs.mean(), ys.mean()], atol=1e-9)


def test_counts(layout, tmp_path):
    inst, types, info = layout
    assert count_columns(TI, 3) == ["benign", "malignant", "untyped"]
    assert count_columns(TypeInfo.default(0), 0) == []
    c = count_by_type(info, TI, 3)
    assert c["benign"] == sum(t == 1 for t in types.values())
    assert c["malignant"] == sum(t == 2 for t in types.values())
    assert c["untyped"] == 0
    assert c["total"] == len(types)
    cols = ["image", "benign", "malignant", "untyped", "total"]
    write_counts_csv(tmp_path / "c.csv", [{"image": "a", **c}], cols)
    rows = list(csv.DictReader((tmp_path / "c.csv").open()))
    assert rows == [{"image": "a", **{k: str(v) for k, v in c.items()}}]


def test_counts_columns_add_up_to_total_with_untyped_instances(layout):
    """An instance the type head gave no foreground vote (type 0) is counted as ``untyped``."""
    _, types, info = layout
    first = min(info)
    mixed = {**info, first: {**info[first], "type": 0}}
    c = count_by_type(mixed, TI, 3)
    assert c["untyped"] == 1 and c["total"] == len(types)
    assert c["benign"] + c["malignant"] + c["untyped"] == c["total"]
    assert c["benign"] + c["malignant"] == len(types) - 1
    rec = instance_record(first, mixed[first], type_info=TI)
    assert rec["type"] == 0 and rec["type_name"] == "untyped"  # a found crypt is never "background"
    # a model without a type head: no per-type columns at all, only the total
    assert count_by_type(mixed, TypeInfo.default(0), 0) == {"total": len(types)}


def test_overlay_draws_type_colours(layout):
    inst, types, info = layout
    img = np.full((*inst.shape, 3), 255, np.uint8)
    ov = draw_overlay(img, info, TI, thickness=1)
    assert ov.shape == img.shape and np.array_equal(img, np.full_like(img, 255))  # input untouched
    for i, t in types.items():
        x, y = info[i]["contour"][0]
        assert tuple(ov[y, x]) == TI.color(t)
    untyped = {1: {**info[min(info)], "type": 0}}
    ov0 = draw_overlay(img, untyped, TI)
    x, y = untyped[1]["contour"][0]
    assert tuple(ov0[y, x]) == UNTYPED_COLOUR


@pytest.mark.parametrize("key", ["01", " 1", "1 ", "+1"])
def test_type_info_rejects_non_canonical_ids(key):
    """Keys that parse as 1 but are spelled otherwise are a clear error, not a KeyError."""
    from hovercrypt.errors import InputError
    from hovercrypt.io.type_info import parse_type_info

    data = {"0": ["background", [0, 0, 0]], key: ["benign", [0, 200, 0]]}
    with pytest.raises(InputError, match=r"ti\.json: type ids must be written as plain integers"):
        parse_type_info(data, "ti.json")


@pytest.mark.parametrize(
    "name", ["total", "untyped", "status", "image", "slide", "tissue_area_mm2", "crypts_per_mm2"]
)
def test_type_info_rejects_names_of_counts_columns(name, tmp_path):
    """A type called e.g. "total" would overwrite that counts.csv column."""
    from hovercrypt.errors import InputError
    from hovercrypt.io.type_info import load_type_info

    path = tmp_path / "ti.json"
    path.write_text(json.dumps({"0": ["background", [0, 0, 0]], "1": [name, [0, 200, 0]]}))
    with pytest.raises(InputError, match=rf"ti\.json: type name\(s\) \['{name}'\] clash with counts\.csv"):
        load_type_info(path)
