"""Overlap-tile inference: tiling, global origins, predictors and flip TTA."""

from __future__ import annotations

import numpy as np
import pytest

from hovercrypt.infer.predictor import TTA_FLIPS, NetworkPredictor, predict_tta, unflip
from hovercrypt.infer.tile import predict_image, tile_grid


class CropPredictor:
    """Returns the centre crop of each input tile: a perfect overlap-tile run reproduces the image."""

    arch = "fake"
    nr_types = 0

    def __init__(self, inp: int = 20, out: int = 8) -> None:
        self.input_size, self.output_size = inp, out
        self.calls: list[np.ndarray] = []

    def predict(self, tiles, origins=None):
        self.calls.append(np.asarray(origins))
        m = (self.input_size - self.output_size) // 2
        return {"img": tiles[:, m : m + self.output_size, m : m + self.output_size].astype(np.float32)}


class CoordPredictor(CropPredictor):
    """Renders the global (x, y) of every output pixel from ``origins`` (as an oracle predictor would)."""

    def predict(self, tiles, origins=None):
        self.calls.append(np.asarray(origins))
        m = (self.input_size - self.output_size) // 2
        o = self.output_size
        yy, xx = np.mgrid[0:o, 0:o]
        res = np.empty((len(tiles), o, o, 2), np.float32)
        for k, (x0, y0) in enumerate(origins):
            res[k, ..., 0] = x0 + m + xx
            res[k, ..., 1] = y0 + m + yy
        return {"xy": res}


class ContextPredictor(CropPredictor):
    """Output depends on the whole input window (mean of the tile + the centre pixel)."""

    def predict(self, tiles, origins=None):
        m = (self.input_size - self.output_size) // 2
        c = tiles[:, m : m + self.output_size, m : m + self.output_size, :1].astype(np.float32)
        return {"v": c + tiles.reshape(len(tiles), -1).mean(1)[:, None, None, None].astype(np.float32)}


@pytest.mark.parametrize("shape", [(1, 1), (1, 9), (7, 3), (31, 17), (257, 301)])
@pytest.mark.parametrize("origin", [(0, 0), (5, -3), (-13, 22)])
def test_predict_image_reproduces_image_exactly(shape, origin):
    rng = np.random.default_rng(sum(shape))
    img = rng.integers(0, 256, (*shape, 3), dtype=np.uint8)
    out = predict_image(CropPredictor(21 + 1, 8), img, batch_size=3, origin=origin)["img"]
    assert out.shape == (*shape, 3) and out.dtype == np.float32
    np.testing.assert_array_equal(out, img)


def test_predict_image_passes_global_origins_on_anchored_grid():
    pred = CoordPredictor(20, 8)
    ox, oy = 13, -5
    out = predict_image(pred, np.zeros((29, 37, 3), np.uint8), batch_size=4, origin=(ox, oy))["xy"]
    yy, xx = np.mgrid[0:29, 0:37]
    np.testing.assert_array_equal(out[..., 0], ox + xx)
    np.testing.assert_array_equal(out[..., 1], oy + yy)
    origins = np.concatenate(pred.calls)
    # input windows start at k*out - m in global pixels: the grid is anchored at the global origin
    assert np.all((origins + 6) % 8 == 0)
    assert len(origins) == tile_grid(ox, 37, 8)[1] * tile_grid(oy, 29, 8)[1]


def test_overlapping_regions_give_identical_interior_outputs():
    """Two regions of one image, read at different offsets, agree wherever both have full context."""
    rng = np.random.default_rng(1)
    big = rng.integers(0, 256, (90, 110, 3), dtype=np.uint8)
    pred = ContextPredictor(20, 8)
    a = predict_image(pred, big[0:70, 0:80], origin=(0, 0))["v"]
    b = predict_image(pred, big[17:90, 23:110], origin=(23, 17))["v"]
    # interior of the overlap: pixels at least (m + out) from both regions' padded edges
    m = 6 + 8
    ys, xs = slice(17 + m, 70 - m), slice(23 + m, 80 - m)
    np.testing.assert_array_equal(a[ys, xs], b[ys.start - 17 : ys.stop - 17, xs.start - 23 : xs.stop - 23])
    # and the context predictor really depends on context: the padded border differs
    assert not np.array_equal(a[17:20, 23:30], b[0:3, 0:7])


def test_predict_image_rejects_bad_input():
    with pytest.raises(ValueError, match="uint8"):
        predict_image(CropPredictor(), np.zeros((5, 5, 3), np.float32))
    with pytest.raises(ValueError, match="even difference"):
        predict_image(CropPredictor(21, 8), np.zeros((5, 5, 3), np.uint8))


# ---------------------------------------------------------------- TTA


def _gradient_maps(tiles, origins=None):
    """An equivariant fake network: NP = intensity, HV = (d/dx, d/dy) of intensity (central differences)."""
    g = tiles[..., 0].astype(np.float32)
    hx = np.zeros_like(g)
    hy = np.zeros_like(g)
    hx[:, :, 1:-1] = g[:, :, 2:] - g[:, :, :-2]
    hy[:, 1:-1] = g[:, 2:] - g[:, :-2]
    return {"np": g[..., None], "hv": np.stack([hx, hy], -1), "tp": np.stack([g, 2 * g], -1)}


def test_tta_unflip_restores_equivariant_maps():
    rng = np.random.default_rng(0)
    tiles = rng.integers(0, 256, (2, 9, 11, 3), dtype=np.uint8)
    ref = _gradient_maps(tiles)
    avg = predict_tta(_gradient_maps, tiles)
    for k in ref:
        np.testing.assert_allclose(avg[k], ref[k], atol=1e-4)
    # each single flip, un-flipped, must already equal the reference (the HV signs included)
    for fh, fv in TTA_FLIPS:
        t = tiles[:, :, ::-1] if fh else tiles
        t = t[:, ::-1] if fv else t
        one = unflip(_gradient_maps(np.ascontiguousarray(t)), fh, fv)
        np.testing.assert_allclose(one["hv"], ref["hv"], atol=1e-4)


def test_unflip_negates_only_the_flipped_axis_channel():
    hv = np.zeros((1, 2, 3, 2), np.float32)
    hv[..., 0], hv[..., 1] = 1.0, 2.0
    assert np.all(unflip({"hv": hv}, True, False)["hv"][..., 0] == -1)
    assert np.all(unflip({"hv": hv}, True, False)["hv"][..., 1] == 2)
    assert np.all(unflip({"hv": hv}, False, True)["hv"][..., 1] == -2)
    assert np.all(unflip({"hv": hv}, False, True)["hv"][..., 0] == 1)
    assert np.all(unflip({"np": hv}, True, True)["np"] == hv)  # unsigned maps keep their sign


class _GradNet:
    """A torch stand-in for a model: HV = image gradients (conv), NP = sigmoid(intensity)."""

    arch = "hovernet"
    nr_types = 0
    input_size, output_size = 12, 6

    def __init__(self):
        import torch

        self.torch = torch
        k = torch.zeros(2, 1, 3, 3)
        k[0, 0, 1] = torch.tensor([-1.0, 0.0, 1.0])
        k[1, 0, :, 1] = torch.tensor([-1.0, 0.0, 1.0])
        self.k = k
        self.seen_dtypes: list = []

    def to(self, device):
        return self

    def eval(self):
        return self

    def __call__(self, x):
        self.seen_dtypes.append(x.dtype)
        g = x[:, :1]
        hv = self.torch.nn.functional.conv2d(g, self.k.to(x.dtype), padding=1)[:, :, 3:9, 3:9]
        return {"np": g[:, :, 3:9, 3:9], "hv": hv}

    def to_maps(self, out):
        return {"np": out["np"].permute(0, 2, 3, 1), "hv": out["hv"].permute(0, 2, 3, 1)}


def test_network_predictor_tta_matches_plain_and_batches():
    net = _GradNet()
    rng = np.random.default_rng(2)
    tiles = rng.integers(0, 256, (5, 12, 12, 3), dtype=np.uint8)
    plain = NetworkPredictor(net, "cpu", batch_size=2, tta=False, amp="none").predict(tiles)
    tta = NetworkPredictor(net, "cpu", batch_size=2, tta=True, amp="none").predict(tiles)
    assert plain["hv"].shape == (5, 6, 6, 2) and plain["hv"].dtype == np.float32
    np.testing.assert_allclose(plain["np"][..., 0], tiles[:, 3:9, 3:9, 0] / 255.0, atol=1e-6)
    assert np.abs(plain["hv"]).max() > 0.1
    for k in plain:
        np.testing.assert_allclose(tta[k], plain[k], atol=1e-5)
    with pytest.raises(ValueError, match="tiles must be"):
        NetworkPredictor(net, "cpu", amp="none").predict(tiles[:, :10, :10])

