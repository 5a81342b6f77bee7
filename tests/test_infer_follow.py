"""Following crypts (``infer.follow_um``): only tissue tiles are planned, the crypts pull in the rest.

A crypt whose centroid lies on the tissue mask must come out whole however far
it reaches beyond the mask, exactly as when every tile within a crypt's
diameter of tissue is run, and a region's maps must not depend on what earlier
regions left in the cache (resume gives the same outputs).
"""

from __future__ import annotations

import json
import logging
import re

import numpy as np
import pytest
from test_infer_windows import ArrayReader, BoxPredictor, CountingOracle, instance_records, oracle_wsi_opts

from hovercrypt.config import Config, InferConfig
from hovercrypt.infer.regions import plan_regions
from hovercrypt.infer.tile import predict_image
from hovercrypt.infer.tile_cache import CachedSource, TilePlan, processing_order
from hovercrypt.infer.tissue import TissueIndex
from hovercrypt.models.registry import family_names, get_family
from hovercrypt.postproc.foreground import hovernet_foreground, semantic_foreground
from hovercrypt.typed_dicts import ConfigError


def _fg(maps: dict[str, np.ndarray]) -> np.ndarray:
    return maps["np"][..., 0] >= 0.5


def _bar_case(out: int = 48):
    """A red bar (the 'crypt') from a small tissue patch far into tissue-free glass, and noise elsewhere."""
    H, W = 420, 600
    rng = np.random.default_rng(3)
    img = rng.integers(0, 90, (H, W, 3), dtype=np.uint8)  # red < 0.5 everywhere: background
    img[200:236, 40:560, 0] = 255  # the bar: 36 px tall, 520 px long
    mask = np.zeros((H // 8 + 1, W // 8 + 1), bool)
    mask[24:31, 4:31] = True  # tissue only around the bar's left part (x 32..248, y 192..248)
    tissue = TissueIndex(mask, 1 / 8, grow=0)
    regions = plan_regions(W, H, 100, 60, keep=lambda b: tissue.touches(*b))
    return img, tissue, processing_order(regions, W, H)


def _run(img, tissue, order, follow, band=12, out=48, only=None):
    pred = BoxPredictor(out)
    plan = TilePlan.build(order if only is None else [only], out, pred.m, tissue)
    src = CachedSource(pred, plan, ArrayReader(img), img.shape[1::-1], 1.0, 5, follow=follow, band=band)
    maps = {r.index: src.maps(r, src.load(r)) for r in plan.order}
    return maps, src, pred


def test_following_runs_every_tile_the_crypt_reaches_and_no_other() -> None:
    img, tissue, order = _bar_case()
    whole = predict_image(BoxPredictor(48), img, batch_size=8)
    fg = _fg(whole)
    maps, src, pred = _run(img, tissue, order, _fg)
    assert src.followed > 0 and src.tiles_run == src.plan.n_tiles + src.followed
    assert len(pred.origins) == len(set(pred.origins))  # still each tile once
    for r in order:
        x0, y0, x1, y1 = r.ext
        want_fg = fg[y0:y1, x0:x1]
        for k, v in maps[r.index].items():
            # every bar pixel in the region has the whole-image maps (the bar is connected to tissue)
            assert np.array_equal(v[want_fg], whole[k][y0:y1, x0:x1][want_fg]), (r.index, k)
    # tiles far from the bar and the tissue were never run
    far = {(i, j) for i, j in src.plan.users if i * 48 >= 300 or (i + 1) * 48 <= 150}
    ran = {(oy + pred.m) // 48 for _, oy in pred.origins}
    assert not any(i * 48 >= 300 for i in ran) and far
    # without following, the bar is cut where the tissue tiles end
    cut, _, _ = _run(img, tissue, order, None)
    assert any(not np.array_equal(cut[r.index]["np"], maps[r.index]["np"]) for r in order)


def test_a_regions_maps_do_not_depend_on_the_regions_before_it() -> None:
    img, tissue, order = _bar_case()
    maps, _, _ = _run(img, tissue, order, _fg)
    for r in order:
        alone, _, _ = _run(img, tissue, order, _fg, only=r)
        for k, v in maps[r.index].items():
            assert np.array_equal(v, alone[r.index][k]), (r.index, k)


def test_band_reaches_tiles_near_but_not_touching_the_crypt() -> None:
    img, tissue, order = _bar_case()
    _, narrow, _ = _run(img, tissue, order, _fg, band=0)
    _, wide, _ = _run(img, tissue, order, _fg, band=30)
    assert wide.followed > narrow.followed > 0


def test_foreground_hooks_use_the_post_processing_thresholds() -> None:
    np_map = np.array([[0.49, 0.5], [0.7, 0.0]], np.float32)[..., None]
    got = hovernet_foreground({"np": np_map}, {"np_thresh": 0.5})
    assert got.tolist() == [[False, True], [True, False]]  # stage 1 of hv.py: NP >= np_thresh
    seg = np.zeros((1, 3, 3), np.float32)
    seg[0, :, 0] = 1 - np.array([0.5, 0.6, 0.9])
    seg[0, :, 1] = [0.5, 0.3, 0.45]
    seg[0, :, 2] = [0.0, 0.3, 0.45]
    assert semantic_foreground({"seg": seg}, {"unet_fg_thresh": 0.5}).tolist() == [[False, True, True]]
    two = semantic_foreground({"seg": seg[..., :2]}, {"unet_fg_thresh": 0.4})
    assert two.tolist() == [[True, False, True]]
    for name in family_names():  # derived families inherit the hook of their recipe
        assert get_family(name).map_foreground is not None, name


def test_follow_um_must_not_be_negative() -> None:
    with pytest.raises(ConfigError, match="follow_um"):
        Config(infer=InferConfig(follow_um=-1.0))


def test_wsi_crypts_beyond_the_tissue_mask_are_whole_with_fewer_tiles(tmp_path, caplog) -> None:
    """A supplied mask covers the left half; crypts sit on its edge and reach far past it."""
    from hovercrypt.infer.wsi import process_slide
    from hovercrypt.io.images import write_png
    from hovercrypt.testing.oracle import OraclePredictor
    from hovercrypt.testing.slides import random_layout, write_layout_slide

    mpp, proc, size = 0.5, 2.0, 4096
    # level-0 x of the mask's right edge: with its one-pixel dilation it ends just before a tile
    # column (128 px at proc = 512 level-0 px), so the tiles right of it are not tissue tiles
    edge = 1520
    # big crypts (x radius 160 level-0 px = 80 µm) centred just inside the mask, reaching 70 µm past it
    fixed = [(edge - 20.0, 400.0 + 1200 * k, 160.0, 90.0, 0.0, 1) for k in range(3)]
    layout = random_layout(size, size, [(64, 64, 4032, 4032)], 80, (30.0, 60.0), seed=7, gap=16, fixed=fixed)
    path = write_layout_slide(tmp_path / "s.tif", layout, mpp)
    mask = np.zeros((size // 8, size // 8), np.uint8)
    mask[:, : edge // 8] = 255
    write_png(tmp_path / "s_mask.png", mask)
    e = layout.to_processing(proc / mpp)
    recs, tiles = {}, {}
    caplog.set_level(logging.INFO, logger="hovercrypt")
    for name, follow in (("margin", 0.0), ("follow", 32.0)):
        orc = CountingOracle(OraclePredictor(e, 160, 128))
        opts = oracle_wsi_opts(proc, 0, margin_um=400.0, follow_um=follow)
        res = process_slide(path, tmp_path / name, orc, opts, mask_path=tmp_path / "s_mask.png")
        recs[name] = instance_records(tmp_path / name / "s")
        tiles[name] = len(set(orc.origins))
        assert len(orc.origins) == tiles[name] == res.tiles
        manifest = json.loads((tmp_path / name / "s" / "manifest.json").read_text())
        assert manifest["follow_um"] == follow  # a resume never mixes the two tile rules
    followed = [int(m) for m in re.findall(r"(\d+) tiles run where crypts reach", caplog.text)]
    assert followed and followed[-1] > 0
    # the straddling crypts are found whole (bounding boxes reach past the mask edge), as with the margin rule
    boxes = [json.loads(x)["bbox"] for x in recs["follow"]]
    assert sum(b[2] > edge + 100 for b in boxes) >= len(fixed)
    assert recs["follow"] == recs["margin"]
    planned = [int(m) for m in re.findall(r"(\d+) tissue tiles", caplog.text)]
    assert tiles["follow"] == planned[-1] + followed[-1] < tiles["margin"] == planned[0]
