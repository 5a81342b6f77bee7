"""Throughput features keep the maps: large inference windows, slide-level tile cache.

A box-filter predictor (integer sums over its input window, so exact in any
window) stands for a network with valid convolutions: its maps depend on the
context, so a tile computed from mirrored instead of real pixels, or a window
misplaced by one pixel, shows. Tiny real networks check the padded case.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from hovercrypt.infer.predictor import NetworkPredictor
from hovercrypt.infer.regions import plan_regions
from hovercrypt.infer.tile import predict_image
from hovercrypt.infer.tile_cache import CachedSource, TilePlan, processing_order, reflect_index
from hovercrypt.infer.tissue import TissueIndex


class BoxPredictor:
    """np = mean of the red channel over the (2 m + 1)^2 input neighbourhood, hv = same for green/blue."""

    arch = "hovernet"
    nr_types = 0

    def __init__(self, output_size: int, m: int = 10) -> None:
        self.input_size, self.output_size, self.m = output_size + 2 * m, output_size, m
        self.origins: list[tuple[int, int]] = []

    def predict(self, tiles: np.ndarray, origins: np.ndarray | None = None) -> dict[str, np.ndarray]:
        if origins is not None:
            self.origins += [tuple(int(v) for v in o) for o in origins]
        k, o = 2 * self.m + 1, self.output_size
        c = np.pad(tiles.astype(np.int64), ((0, 0), (1, 0), (1, 0), (0, 0))).cumsum(1).cumsum(2)
        s = c[:, k : k + o, k : k + o] - c[:, :o, k : k + o] - c[:, k : k + o, :o] + c[:, :o, :o]
        s = (s / (255.0 * k * k)).astype(np.float32)
        return {"np": s[..., :1], "hv": s[..., 1:]}


class ArrayReader:
    """The ``SlideReader.read`` interface over an in-memory image at the processing resolution."""

    def __init__(self, img: np.ndarray) -> None:
        self.img = img

    def read(self, x: int, y: int, w: int, h: int, mpp: float) -> np.ndarray:
        H, W = self.img.shape[:2]
        if x < 0 or y < 0 or x + w > W or y + h > H:
            raise ValueError("outside")
        return self.img[y : y + h, x : x + w]


def _image(h: int, w: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (h, w, 3), dtype=np.uint8)


def test_reflect_index_matches_numpy_pad() -> None:
    for n in (1, 2, 5, 17):
        a = np.arange(n)
        for pad in (0, 1, n - 1, n, 3 * n + 2):
            ref = np.pad(a, pad, mode="reflect") if n > 1 else np.pad(a, pad, mode="edge")
            assert (reflect_index(np.arange(-pad, n + pad), n) == ref).all()


@pytest.mark.parametrize("out", [48, 200])
def test_large_windows_exact_for_a_valid_predictor(out: int) -> None:
    """Windows of any size give the same maps when the predictor only uses its valid context."""
    img = _image(230, 301)
    ref = predict_image(BoxPredictor(32), img, batch_size=4)
    got = predict_image(BoxPredictor(out), img, batch_size=4, origin=(0, 0))
    for k in ref:
        assert np.array_equal(ref[k], got[k])


def _slide_case(shape=(700, 530), tile_shape=160, margin=40, out=48):
    img = _image(*shape, seed=1)
    H, W = shape
    mask = np.ones((H // 8 + 1, W // 8 + 1), bool)
    mask[:, : W // 16] = False  # a strip without tissue on the left
    tissue = TissueIndex(mask, 1 / 8, grow=margin)
    regions = plan_regions(W, H, tile_shape, margin, keep=lambda b: tissue.touches(*b))
    return img, tissue, processing_order(regions, W, H), BoxPredictor(out)


def test_tile_cache_region_maps_equal_whole_image_maps_and_each_tile_once() -> None:
    img, tissue, order, pred = _slide_case()
    H, W = img.shape[:2]
    whole = predict_image(BoxPredictor(pred.output_size), img, batch_size=8)
    plan = TilePlan.build(order, pred.output_size, pred.m, tissue)
    src = CachedSource(pred, plan, ArrayReader(img), (W, H), 1.0, batch_size=5)
    peak = 0
    for r in order:
        maps = src.maps(r, src.load(r))
        x0, y0, x1, y1 = r.ext
        for k, v in maps.items():
            want = whole[k][y0:y1, x0:x1]
            on = np.abs(v).sum(-1) > 0  # tiles off tissue are zeros, like TissuePredictor's
            assert on.any()
            assert np.array_equal(v[on], want[on]), f"region {r.index} map {k}"
        peak = max(peak, src.cache.nbytes())
    assert len(pred.origins) == len(set(pred.origins)) == plan.n_tiles == src.tiles_run
    assert not src.cache.store  # everything released after the last region
    # the cache holds about a strip, far less than the slide's maps
    assert 0 < src.cache.peak_bytes < 0.6 * (H * W * 3 * 4)


def test_set_window_geometry() -> None:
    from hovercrypt.config import ModelConfig
    from hovercrypt.models import build_model

    torch.manual_seed(0)
    model = build_model(ModelConfig(encoder="test_resnet", mode="fast", decoder_width=0.25, nr_types=0))
    pred = NetworkPredictor(model, window=512, window_border=8)
    assert pred.input_size == 512 and pred.output_size % pred.stride == 0
    assert (pred.input_size - pred.output_size) // 2 == pred.context + pred.window_border
    assert pred.window_border >= 8
    pred.set_window(0)
    assert (pred.input_size, pred.output_size) == (model.input_size, model.output_size)
    for bad in ((200, 0), (511, 0), (256, 200)):
        with pytest.raises(ValueError):
            pred.set_window(*bad)


class ValidNet(nn.Module):
    """Valid convolutions only (context 4 px): translation-equivariant in any window."""

    arch = "hovernet"
    nr_types = 0
    input_size, output_size = 40, 32

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.body = nn.Sequential(
            nn.Conv2d(3, 8, 3), nn.ReLU(), nn.Conv2d(8, 8, 5), nn.ReLU(), nn.Conv2d(8, 8, 3), nn.ReLU()
        )
        self.np_head, self.hv_head = nn.Conv2d(8, 2, 1), nn.Conv2d(8, 2, 1)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        f = self.body(x)
        return {"np": self.np_head(f), "hv": self.hv_head(f)}

    def to_maps(self, out: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        from hovercrypt.models.heads import hovernet_maps

        return hovernet_maps(out)


def test_network_large_window_matches_training_window_with_valid_convs() -> None:
    img = _image(150, 171, seed=2)
    small = predict_image(NetworkPredictor(ValidNet()), img, batch_size=8)
    big_pred = NetworkPredictor(ValidNet(), window=120)
    assert big_pred.output_size == 120 - 8
    big = predict_image(big_pred, img, batch_size=2)
    for k in small:
        np.testing.assert_allclose(big[k], small[k], atol=2e-6, rtol=0)


class CountingOracle:
    """An oracle predictor that records every tile origin it is asked for."""

    def __init__(self, inner) -> None:
        self.inner = inner
        self.input_size, self.output_size = inner.input_size, inner.output_size
        self.arch, self.nr_types = inner.arch, inner.nr_types
        self.origins: list[tuple[int, int]] = []

    def predict(self, tiles, origins=None):
        self.origins += [tuple(int(v) for v in o) for o in origins]
        return self.inner.predict(tiles, origins)


def oracle_wsi_opts(proc: float, nr_types: int, **infer):
    """Whole-slide options for the oracle tests: small regions, ``infer`` overrides."""
    from hovercrypt.config import InferConfig, PostprocConfig
    from hovercrypt.infer.wsi import WsiOptions
    from hovercrypt.io.type_info import TypeInfo

    return WsiOptions(
        proc_mpp=proc,
        postproc=PostprocConfig(min_object_area_um2=100.0).pixels(proc),
        type_info=TypeInfo.default(nr_types),
        infer=InferConfig(tile_shape=256, **infer),
        progress=False,
    )


def instance_records(slide_dir) -> list[str]:
    """A slide's ``instances.jsonl`` records without their ids (which follow region order), sorted."""
    import json

    lines = (slide_dir / "instances.jsonl").read_text().splitlines()
    records = ({k: v for k, v in json.loads(x).items() if k != "id"} for x in lines)
    return sorted(json.dumps(r, sort_keys=True) for r in records)


def test_wsi_tile_cache_same_crypts_each_tile_once(tmp_path) -> None:

    from hovercrypt.infer.wsi import process_slide
    from hovercrypt.testing.oracle import OraclePredictor
    from hovercrypt.testing.slides import random_layout, write_layout_slide

    mpp, proc, size = 0.5, 2.0, 3072
    layout = random_layout(size, size, [(128, 128, 2944, 2944)], 90, (32.0, 64.0), seed=5, gap=16, n_types=2)
    path = write_layout_slide(tmp_path / "s.tif", layout, mpp)
    e = layout.to_processing(proc / mpp)
    recs = {}
    for name, cache, (inp, out) in (
        ("off", False, (160, 128)),
        ("on", True, (160, 128)),
        ("big", True, (288, 256)),
    ):
        orc = CountingOracle(OraclePredictor(e, inp, out, nr_types=3))
        opts = oracle_wsi_opts(proc, 3, margin_um=100.0, tile_cache=cache)
        res = process_slide(path, tmp_path / name, orc, opts)
        recs[name] = instance_records(tmp_path / name / "s")
        if cache:
            assert len(orc.origins) == len(set(orc.origins)) == res.tiles
        else:
            assert len(orc.origins) > len(set(orc.origins))  # overlaps recomputed
    assert len(recs["off"]) == len(layout.ellipses)
    assert recs["on"] == recs["off"] and recs["big"] == recs["off"]


def test_fast_mode_window_centre_exact_with_border() -> None:
    """Padded (fast) HoVer-Net: with a border >= the receptive-field radius the kept centre is
    the same in any window; the training window differs near its edges (measured, not asserted)."""
    from hovercrypt.config import ModelConfig
    from hovercrypt.models import build_model

    torch.manual_seed(0)
    cfg = ModelConfig(encoder="test_resnet", mode="fast", decoder_width=0.25, dense_units=(1, 1), nr_types=0)
    model = build_model(cfg).eval()
    img = _image(200, 230, seed=3)
    # receptive-field radius of this network: 115 px (input gradient of one output pixel)
    a = NetworkPredictor(model, window=416, window_border=70)
    maps_a = predict_image(a, img, batch_size=1)
    b = NetworkPredictor(model, window=544, window_border=70)
    maps_b = predict_image(b, img, batch_size=1)
    assert a.context + a.window_border >= 115 and a.output_size != b.output_size
    for k in maps_a:
        np.testing.assert_allclose(maps_a[k], maps_b[k], atol=1e-4, rtol=0)
