"""Whole-slide engine against the oracle predictor on a synthetic 8k x 8k pyramidal slide.

The slide holds several hundred crypts, many centred on region and tile
corners and edges; the oracle renders exact maps, so the count must equal the
truth exactly and every crypt must come back whole, once.
"""

from __future__ import annotations

import csv
import importlib.util
import json
from dataclasses import replace
from pathlib import Path

import cv2
import numpy as np
import pytest

from hovercrypt.config import InferConfig, PostprocConfig
from hovercrypt.infer.regions import margin_pixels, plan_regions, tiles_in
from hovercrypt.infer.wsi import WsiOptions, process_slide
from hovercrypt.infer.wsi_cli import run_wsi
from hovercrypt.infer.wsi_outputs import SlideResult
from hovercrypt.io.images import write_png
from hovercrypt.io.type_info import TypeInfo
from hovercrypt.metrics import pq
from hovercrypt.testing.oracle import OraclePredictor, render_instances
from hovercrypt.testing.slides import (
    CryptLayout,
    boundary_crypts,
    random_layout,
    render_tile,
    write_layout_slide,
)

SIZE, MPP, PROC_MPP = 8192, 0.5, 2.0  # level 0; processing is 4x coarser: 2048 x 2048 px
F = PROC_MPP / MPP
TISSUE = [(256, 256, 4600, 7936), (5600, 512, 7936, 5000)]  # glass stripe between the pieces
RADII = (32.0, 72.0)  # level-0 px: crypt diameters 32-72 µm
TILE_SHAPES = (512, 384)  # processing px; region corners at multiples of these


def _opts(tile_shape: int, slide_mpp: float | None = None, **infer) -> WsiOptions:
    """Options of these tests; ``infer``: fields of ``InferConfig`` (e.g. ``postproc_workers``)."""
    return WsiOptions(
        proc_mpp=PROC_MPP,
        postproc=PostprocConfig(min_object_area_um2=100.0).pixels(PROC_MPP),
        type_info=TypeInfo.default(3),
        infer=InferConfig(tile_shape=tile_shape, margin_um=100.0, **infer),
        slide_mpp=slide_mpp,
        progress=False,
    )


@pytest.fixture(scope="module")
def slide(tmp_path_factory) -> tuple[Path, CryptLayout]:
    d = tmp_path_factory.mktemp("wsi")
    steps = [int(t * F) for t in TILE_SHAPES] + [int(128 * F)]  # region grids and the oracle tile grid
    fixed = boundary_crypts(TISSUE, SIZE, SIZE, steps, RADII, seed=1)
    layout = random_layout(SIZE, SIZE, TISSUE, 500, RADII, seed=0, gap=16, fixed=fixed, n_types=2)
    path = write_layout_slide(d / "synth.tif", layout, MPP)
    return path, layout


@pytest.fixture(scope="module")
def runs(slide, tmp_path_factory) -> dict[int, tuple[Path, OraclePredictor, SlideResult]]:
    path, layout = slide
    out = {}
    for ts in TILE_SHAPES:
        orc = OraclePredictor(layout.to_processing(F), 160, 128, nr_types=3)
        d = tmp_path_factory.mktemp(f"run{ts}")
        (res,) = run_wsi([path], d, orc, _opts(ts, postproc_workers=2), pool_kind="thread")
        out[ts] = (d, orc, res)
    return out


def _records(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in open(run_dir / "synth" / "instances.jsonl")]


def _to_proc_map(records: list[dict], shape: tuple[int, int]) -> np.ndarray:
    """Rasterise level-0 contours back onto the processing grid (pixel-centre mapping)."""
    inst = np.zeros(shape, np.int32)
    for r in records:
        pts = (np.asarray(r["contour"], np.float64) + 0.5) / F - 0.5
        cv2.fillPoly(inst, [np.round(pts).astype(np.int32).reshape(-1, 1, 2)], int(r["id"]))
    return inst


def test_layout_is_demanding(slide):
    _, layout = slide
    assert len(layout.ellipses) >= 300
    # many crypts straddle a region edge of the 512 grid (processing px) and a tile edge (128)
    e = layout.to_processing(F)
    r = np.maximum(e[:, 2], e[:, 3])
    for step, minimum in ((512, 40), (128, 150)):
        crosses = (np.abs(e[:, 0] - np.round(e[:, 0] / step) * step) < r) | (
            np.abs(e[:, 1] - np.round(e[:, 1] / step) * step) < r
        )
        assert crosses.sum() >= minimum


def test_oracle_count_exact_and_pq(slide, runs):
    _, layout = slide
    d = runs[512][0]
    rec = _records(d)
    assert len(rec) == len(layout.ellipses)
    assert [r["id"] for r in rec] == list(range(1, len(rec) + 1))
    e = layout.to_processing(F)
    side = int(SIZE / F)
    truth = render_instances(e, 0, 0, side, side)
    pred = _to_proc_map(rec, truth.shape)
    res = pq(truth, pred)
    assert res["fp"] == 0 and res["fn"] == 0
    assert res["pq"] >= 0.95
    # types: the oracle's one-hot type map is reproduced per crypt
    for t in (1, 2):
        assert sum(r["type"] == t for r in rec) == int((layout.ellipses[:, 5] == t).sum()) > 0


def test_boundary_crypts_whole_and_once(slide, runs):
    """Crypts on region/tile corners: exactly one prediction each, with the full area."""
    _, layout = slide
    rec = _records(runs[512][0])
    cents = np.array([r["centroid"] for r in rec])
    areas = np.array([r["area"] for r in rec])
    e = layout.to_processing(F)
    on_corner = np.flatnonzero(
        (np.abs(e[:, 0] / 512 - np.round(e[:, 0] / 512)) * 512 < 1)
        & (np.abs(e[:, 1] / 512 - np.round(e[:, 1] / 512)) * 512 < 1)
    )
    assert len(on_corner) >= 5
    for i in on_corner:
        cx0, cy0 = layout.ellipses[i, :2]
        dist = np.hypot(cents[:, 0] - cx0, cents[:, 1] - cy0)
        near = np.flatnonzero(dist < max(layout.ellipses[i, 2:4]))
        assert len(near) == 1, f"crypt {i} at a region corner found {len(near)} times"
        true_area = np.pi * layout.ellipses[i, 2] * layout.ellipses[i, 3]
        assert abs(areas[near[0]] / true_area - 1) < 0.1  # whole, not a quarter


def test_unchanged_when_tile_shape_changes(runs):
    def key(r: dict) -> str:
        return json.dumps({k: v for k, v in r.items() if k != "id"}, sort_keys=True)

    a = sorted(key(r) for r in _records(runs[512][0]))
    b = sorted(key(r) for r in _records(runs[384][0]))
    assert a == b


def test_outputs_and_counts(slide, runs):
    _, layout = slide
    d, orc, res = runs[512]
    sd = d / "synth"
    rec = _records(d)
    r0 = rec[0]
    assert set(r0) >= {"id", "bbox", "centroid", "contour", "type", "type_prob"}
    x0, y0, x1, y1 = r0["bbox"]
    assert 0 <= x0 < x1 <= SIZE and 0 <= y0 < y1 <= SIZE
    gj = json.loads((sd / "synth.geojson").read_text())
    assert gj["type"] == "FeatureCollection" and len(gj["features"]) == len(rec)
    ring = gj["features"][0]["geometry"]["coordinates"][0]
    assert ring[0] == ring[-1]
    thumb = cv2.imread(str(sd / "thumbnail.png"))
    assert thumb is not None and max(thumb.shape[:2]) == 2048
    mask = cv2.imread(str(sd / "tissue_mask.png"), cv2.IMREAD_GRAYSCALE)
    true_tissue = sum((x1 - x0) * (y1 - y0) for x0, y0, x1, y1 in TISSUE) * MPP * MPP / 1e6
    rows = list(csv.DictReader(open(d / "counts.csv")))
    assert len(rows) == 1 and rows[0]["status"] == "ok"
    assert int(rows[0]["total"]) == len(layout.ellipses)
    assert int(rows[0]["type1"]) + int(rows[0]["type2"]) == len(layout.ellipses)
    assert rows[0]["untyped"] == "0"
    area = float(rows[0]["tissue_area_mm2"])
    assert abs(area / true_tissue - 1) < 0.05
    assert float(rows[0]["crypts_per_mm2"]) == pytest.approx(len(rec) / area, rel=1e-3)
    # the glass stripe between the tissue pieces shows in the mask and its tiles are skipped
    gap_col = int((5200 / SIZE) * mask.shape[1])
    assert mask[:, gap_col].max() == 0 and mask[mask.shape[0] // 2].max() == 255
    assert not list(sd.glob("parts/*"))
    # only tissue tiles reach the predictor, and fewer than all tiles of all regions
    assert orc.tiles_seen == res.tiles
    margin = margin_pixels(100.0, PROC_MPP, 160, 128)
    every = sum(len(tiles_in(r, 128)) for r in plan_regions(2048, 2048, 512, margin))
    assert res.tiles < 0.9 * every


@pytest.mark.filterwarnings("ignore:Corrupt EXIF data:UserWarning")  # the corrupt file
def test_no_tissue_and_plain_png_and_corrupt(tmp_path, caplog):
    """A blank slide counts 0 (ok, with a warning); a plain PNG goes through the same path; a
    corrupt file is reported."""
    src = tmp_path / "in"
    blank = CryptLayout(2048, 2048, np.zeros((0, 6)), [])
    write_layout_slide(src / "blank.tif", blank, MPP)
    lay = random_layout(1600, 1200, [(100, 100, 1500, 1100)], 40, RADII, seed=3, gap=16)
    write_png(src / "plain.png", render_tile(lay, 1, 0, 0, 1600, 1200))
    (src / "broken.svs").write_bytes(b"II*\x00" + bytes(range(256)) * 40)
    orc_png = OraclePredictor(lay.to_processing(F), 160, 128)
    out = tmp_path / "out"
    slides = sorted(src.iterdir())
    res = run_wsi(slides, out, orc_png, _opts(256, slide_mpp=MPP, postproc_workers=1), pool_kind="thread")
    by = {r.slide: r for r in res}
    assert by["blank"].status == "ok" and by["blank"].total == 0 and by["blank"].tissue_area_mm2 == 0
    no_tissue = [r.getMessage() for r in caplog.records if "no tissue found" in r.getMessage()]
    assert len(no_tissue) == 1 and no_tissue[0].startswith("blank:")
    assert by["plain"].status == "ok" and by["plain"].total == len(lay.ellipses)
    assert by["broken"].status.startswith("error:") and "broken.svs" in by["broken"].status
    rows = {r["slide"]: r for r in csv.DictReader(open(out / "counts.csv"))}
    assert rows["blank"]["total"] == "0" and rows["blank"]["status"] == "ok"
    assert rows["broken"]["status"].startswith("error:")
    # a failed slide must not read like a real zero: its numeric cells stay empty
    numeric = ["total", "tissue_area_mm2", "crypts_per_mm2"]
    assert [rows["broken"][c] for c in numeric] == [""] * 3
    assert rows["blank"]["tissue_area_mm2"] == "0.0000" and rows["blank"]["crypts_per_mm2"] == "0.000"


def test_small_field_of_view_is_not_dropped_as_a_speck(tmp_path):
    """An image smaller than infer.min_tissue_area_um2 still has tissue, and its crypts are counted."""
    lay = random_layout(300, 300, [(0, 0, 300, 300)], 6, (24.0, 40.0), seed=5, gap=12)
    write_png(tmp_path / "in" / "fov.png", render_tile(lay, 1, 0, 0, 300, 300))
    # min_tissue_area_um2 > the 150 x 150 µm image
    opts = _opts(256, slide_mpp=MPP, min_tissue_area_um2=40000.0, postproc_workers=0)
    orc = OraclePredictor(lay.to_processing(F), 160, 128)
    res = run_wsi([tmp_path / "in" / "fov.png"], tmp_path / "out", orc, opts)
    assert res[0].status == "ok" and res[0].tissue_area_mm2 > 0.5 * (300 * MPP / 1000) ** 2
    assert len(lay.ellipses) > 0 and res[0].total == len(lay.ellipses)


def test_supplied_mask_limits_processing(slide, tmp_path):
    """With a mask covering only the left tissue piece, only crypts there are found."""
    path, layout = slide
    mask = np.zeros((256, 256), np.uint8)
    mask[:, : int(5200 / SIZE * 256)] = 255
    (tmp_path / "masks").mkdir()
    write_png(tmp_path / "masks" / "synth.png", mask)
    orc = OraclePredictor(layout.to_processing(F), 160, 128, nr_types=3)
    res = run_wsi([path], tmp_path / "o", orc, _opts(1024, postproc_workers=0), mask_dir=tmp_path / "masks")
    left = int((layout.ellipses[:, 0] < 5200).sum())
    assert res[0].status == "ok" and res[0].total == left


def test_process_slide_rejects_missing_mpp(tmp_path):
    write_png(tmp_path / "x.png", np.full((64, 64, 3), 240, np.uint8))
    orc = OraclePredictor(np.zeros((0, 6)), 160, 128)
    with pytest.raises(Exception, match="slide_mpp"):
        process_slide(tmp_path / "x.png", tmp_path / "o", orc, _opts(256))


def _small_network(nr_types: int = 3):
    """A tiny random-weight HoVer-Net (resnet10t encoder, thin decoders) and its Config."""
    from hovercrypt.config import Config, ModelConfig
    from hovercrypt.models import build_model

    cfg = Config(
        proc_mpp=1.0,
        model=ModelConfig(
            encoder="resnet10t", mode="fast", nr_types=nr_types, decoder_width=0.125, dense_units=(1, 1)
        ),
    )
    cfg = cfg.replace(data={**cfg.to_dict()["data"], "patch_size": 256})
    return build_model(cfg.model), cfg


@pytest.mark.filterwarnings("ignore:Corrupt EXIF data:UserWarning")  # the corrupt file
def test_cli_real_network_corrupt_slide_and_resume(tmp_path, monkeypatch, repo_root):
    """``run_infer.py wsi`` with a random-weight HoVer-Net checkpoint: a folder with one corrupt and
    one good slide; the run is stopped after 2 chunks, resumed, and finishes with exit code 1."""
    import torch

    from hovercrypt.infer import wsi_cli
    from hovercrypt.models.checkpoint import save_checkpoint
    from hovercrypt.testing.interrupt import RunInterrupted, stop_after

    spec = importlib.util.spec_from_file_location("run_infer", repo_root / "run_infer.py")
    run_infer = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(run_infer)
    main = run_infer.main

    torch.manual_seed(0)
    model, cfg = _small_network()
    save_checkpoint(tmp_path / "m.pt", model, cfg)
    src = tmp_path / "in"
    lay = random_layout(512, 512, [(32, 32, 480, 480)], 8, RADII, seed=6, gap=16)
    write_layout_slide(src / "small.tif", lay, MPP, downsamples=(1,))
    (src / "broken.svs").write_bytes(b"II*\x00" + bytes(range(256)) * 40)
    out = tmp_path / "out"
    argv = [
        "wsi",
        f"--input_dir={src}",
        f"--output_dir={out}",
        f"--model_path={tmp_path / 'm.pt'}",
        "--proc_mpp=2.0",
        "--tile_shape=64",
        "--workers=0",
        "--batch_size=4",
    ]  # 128 x 128 processing px: 2 x 2 regions sharing one 164-px network tile (CPU time is scarce)
    build = wsi_cli.wsi_options  # the CLI's options, plus a hook that stops the run like a kill
    with monkeypatch.context() as m:
        m.setattr(wsi_cli, "wsi_options", lambda *a: replace(build(*a), on_region_committed=stop_after(2)))
        with pytest.raises(RunInterrupted):
            main(argv)
    assert len(list((out / "small" / "parts").glob("chunk_*.jsonl"))) == 2
    assert main([*argv, "--resume"]) == 1
    rows = {r["slide"]: r for r in csv.DictReader(open(out / "counts.csv"))}
    assert rows["small"]["status"] == "ok" and rows["broken"]["status"].startswith("error:")
    assert "broken.svs" in (out / "wsi.log").read_text()
    lines = (out / "small" / "instances.jsonl").read_text().splitlines()
    assert len(lines) == int(rows["small"]["total"])
    done = json.loads((out / "small" / "done.json").read_text())
    assert done["tiles"] == 1  # the slide-level tile cache computes the shared tile once
    for line in lines:
        r = json.loads(line)
        x0, y0, x1, y1 = r["bbox"]
        assert 0 <= x0 < x1 <= 512 and 0 <= y0 < y1 <= 512
        assert r["type"] in (0, 1, 2) and len(r["contour"]) >= 2


def test_resume_with_other_type_names_restarts_the_slide(tmp_path):
    """The resume fingerprint covers the type names: a finished slide is redone, not reused with old names."""
    lay = random_layout(512, 512, [(32, 32, 480, 480)], 8, RADII, seed=6, gap=16, n_types=2)
    path = write_layout_slide(tmp_path / "small.tif", lay, MPP, downsamples=(1,))
    orc = OraclePredictor(lay.to_processing(F), 160, 128, nr_types=3)
    old = TypeInfo(("background", "a1", "a2"), ((0, 0, 0), (0, 200, 0), (230, 0, 0)))
    new = TypeInfo(("background", "b1", "b2"), ((0, 0, 0), (0, 200, 0), (230, 0, 0)))
    out = tmp_path / "out"
    (r1,) = run_wsi([path], out, orc, replace(_opts(64, postproc_workers=0), type_info=old))
    (r2,) = run_wsi([path], out, orc, replace(_opts(64, postproc_workers=0), type_info=new), resume=True)
    assert r1.status == r2.status == "ok" and r1.total == r2.total == len(lay.ellipses) > 0
    names = {json.loads(line)["type_name"] for line in open(out / "small" / "instances.jsonl")}
    assert names and names <= {"b1", "b2"}
    header = next(csv.reader(open(out / "counts.csv")))
    assert header[1:3] == ["b1", "b2"]
