"""Whole-slide morphometry, summary.csv and report.html, against the oracle on a known layout.

The oracle renders exact maps of known ellipses, so the measured areas and
nearest-neighbour distances can be checked against the layout itself (not
against anything a trained model produced). The regions are small, so many
crypts have their nearest neighbour in another region.
"""

from __future__ import annotations

import csv
import json
import math
import os
import re
import shutil
import subprocess
from pathlib import Path

import cv2
import numpy as np
import pytest

from hovercrypt.config import InferConfig, PostprocConfig
from hovercrypt.infer.wsi import WsiOptions
from hovercrypt.infer.wsi_cli import run_wsi
from hovercrypt.infer.wsi_outputs import summary_columns
from hovercrypt.io.images import write_png
from hovercrypt.io.type_info import TypeInfo
from hovercrypt.postproc.morphometry import MEASUREMENT_KEYS, MEASUREMENTS
from hovercrypt.testing.oracle import OraclePredictor
from hovercrypt.testing.slides import random_layout, render_tile

MPP, PROC_MPP = 0.5, 2.0
F = PROC_MPP / MPP
TI = TypeInfo.default(3)


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    d = tmp_path_factory.mktemp("report")
    lay = random_layout(1600, 1200, [(100, 100, 1500, 1100)], 45, (32.0, 72.0), seed=3, gap=16, n_types=2)
    write_png(d / "in" / "colon.png", render_tile(lay, 1, 0, 0, 1600, 1200))
    (d / "in" / "broken.svs").write_bytes(b"II*\x00" + bytes(range(256)) * 40)
    opts = WsiOptions(
        proc_mpp=PROC_MPP,
        postproc=PostprocConfig(min_object_area_um2=100.0).pixels(PROC_MPP),
        type_info=TI,
        # 400 x 300 processing px: 4 x 3 regions, many crypts near their borders
        infer=InferConfig(tile_shape=128, margin_um=100.0, postproc_workers=1),
        progress=False,
        slide_mpp=MPP,
    )
    orc = OraclePredictor(lay.to_processing(F), 160, 128, nr_types=3)
    results = run_wsi(sorted((d / "in").iterdir()), d / "out", orc, opts, pool_kind="thread")
    return d / "out", lay, {r.slide: r for r in results}


def _crypts(out: Path) -> list[dict[str, str]]:
    return list(csv.DictReader(open(out / "colon" / "crypts.csv")))


@pytest.mark.filterwarnings("ignore:Corrupt EXIF data:UserWarning")  # the corrupt file
def test_crypts_csv_matches_the_layout(run):
    out, lay, res = run
    rows = _crypts(out)
    assert res["colon"].status == "ok" and len(rows) == res["colon"].total == len(lay.ellipses)
    assert list(rows[0])[-len(MEASUREMENT_KEYS) :] == list(MEASUREMENT_KEYS)
    truth = lay.ellipses[:, :2] * MPP  # centres in µm
    got = np.array([[float(r["centroid_x_um"]), float(r["centroid_y_um"])] for r in rows])
    match = np.argmin(np.linalg.norm(got[:, None] - truth[None], axis=2), axis=1)
    assert len(set(match)) == len(rows)  # one crypt per ellipse
    assert np.abs(got - truth[match]).max() < 1.5  # half a processing pixel (1 µm) and rounding
    # areas: pi a b against rasters at 2 µm/px (radii 8-18 processing px)
    true_area = math.pi * lay.ellipses[match, 2] * lay.ellipses[match, 3] * MPP**2
    area = np.array([float(r["area_um2"]) for r in rows])
    rel = np.abs(area / true_area - 1)
    assert rel.max() < 0.15 and np.median(rel) < 0.06
    # nearest neighbours over the whole slide, across the 4 x 3 regions
    d = np.linalg.norm(truth[:, None] - truth[None], axis=2)
    np.fill_diagonal(d, np.inf)
    nn = np.array([float(r["nn_distance_um"]) for r in rows])
    np.testing.assert_allclose(nn, d.min(1)[match], atol=2.0)
    types = {int(r["type"]) for r in rows}
    assert types <= {1, 2} and {r["type_name"] for r in rows} <= {"type1", "type2"}
    circ = np.array([float(r["circularity"]) for r in rows])
    assert 0.8 < np.median(circ) <= 1.05  # ellipses of axis ratio up to ~2


def test_jsonl_and_geojson_carry_the_measurements(run):
    out, _, _ = run
    rows = {int(r["id"]): r for r in _crypts(out)}
    lines = [json.loads(s) for s in open(out / "colon" / "instances.jsonl")]
    assert len(lines) == len(rows)
    for rec in lines:
        assert "shape" not in rec and set(rec["measurements"]) == set(MEASUREMENT_KEYS)
        assert rec["measurements"]["area_um2"] == pytest.approx(float(rows[rec["id"]]["area_um2"]))
        assert rec["measurements"]["area_um2"] == pytest.approx(rec["area"] * MPP**2, rel=1e-3)
    gj = json.loads((out / "colon" / "colon.geojson").read_text())
    names = {m.qupath for m in MEASUREMENTS}
    for feat in gj["features"]:
        meas = feat["properties"]["measurements"]
        assert names <= set(meas)
        rid = meas["Instance id"]
        assert meas["Nearest neighbour um"] == pytest.approx(float(rows[rid]["nn_distance_um"]), abs=1e-3)


def test_summary_csv(run):
    out, _, res = run
    with open(out / "summary.csv") as f:
        header = next(csv.reader(f))
    assert header == summary_columns(TI, 3)
    rows = {r["slide"]: r for r in csv.DictReader(open(out / "summary.csv"))}
    assert set(rows) == {"colon", "broken"}
    b = rows["broken"]
    assert b["status"].startswith("error:") and b["all_count"] == "" and b["all_area_um2_median"] == ""
    c = rows["colon"]
    crypts = _crypts(out)
    area = np.array([float(r["area_um2"]) for r in crypts])
    nn = np.array([float(r["nn_distance_um"]) for r in crypts])
    tissue = res["colon"].tissue_area_mm2
    assert int(c["all_count"]) == len(crypts)
    assert float(c["all_per_mm2"]) == pytest.approx(len(crypts) / tissue, rel=1e-3)
    assert float(c["all_area_um2_median"]) == pytest.approx(np.median(area), abs=1e-3)
    assert float(c["all_area_um2_q1"]) == pytest.approx(np.percentile(area, 25), abs=1e-3)
    assert float(c["all_nn_distance_um_q3"]) == pytest.approx(np.percentile(nn, 75), abs=1e-3)
    for name in ("type1", "type2"):
        a = np.array([float(r["area_um2"]) for r in crypts if r["type_name"] == name])
        assert int(c[f"{name}_count"]) == len(a) > 0
        assert float(c[f"{name}_area_um2_median"]) == pytest.approx(np.median(a), abs=1e-3)
    assert c["untyped_count"] == "0" and c["untyped_area_um2_median"] == ""


def test_report_is_self_contained(run):
    out, _, _ = run
    text = (out / "report.html").read_text()
    assert text.startswith("<!DOCTYPE html>") and "</html>" in text
    assert 'id="colon"' in text and 'id="broken"' in text and "broken.svs" in text
    srcs = re.findall(r'src="([^"]*)"', text)
    assert len(srcs) == 3 and all(s.startswith("data:image/") for s in srcs)  # outlines, density, hist
    assert "<script" not in text and "http://" not in text and "https://" not in text
    assert (out / "colon" / "density.png").is_file() and (out / "colon" / "histograms.png").is_file()


def _browser() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable"):
        if path := shutil.which(name):
            return path
    return None


def test_report_renders_in_a_headless_browser(run, tmp_path):
    browser = _browser()
    if browser is None:
        pytest.skip("no Chromium/Chrome on PATH (Debian: apt-get install chromium)")
    out, _, _ = run
    shot = tmp_path / "report.png"
    cmd = [
        browser,
        "--headless",
        "--disable-gpu",
        "--hide-scrollbars",
        "--window-size=1200,1000",
        f"--screenshot={shot}",
        (out / "report.html").resolve().as_uri(),
    ]
    if hasattr(os, "geteuid") and os.geteuid() == 0:
        cmd.insert(1, "--no-sandbox")  # Chromium refuses to run as root with its sandbox
    proc = subprocess.run(
        cmd, capture_output=True, text=True, timeout=120, env={**os.environ, "HOME": str(tmp_path)}
    )
    assert shot.is_file(), f"no screenshot; exit {proc.returncode}: {proc.stderr[-2000:]}"
    img = cv2.imread(str(shot))
    assert img is not None and img.shape[:2] == (1000, 1200)
    grey = cv2.cvtColor(img, cv2.COLOR_BGR2GRAY)
    assert (grey < 200).mean() > 0.03  # text, tables and images, not a blank page
    hsv = cv2.cvtColor(img, cv2.COLOR_BGR2HSV)
    assert ((hsv[..., 1] > 80) & (hsv[..., 2] > 60)).mean() > 0.01  # the coloured figures rendered
