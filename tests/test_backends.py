"""Compiled CPU backends (OpenVINO, ONNX Runtime): the same maps as eager PyTorch, and clear errors."""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest
import torch

from hovercrypt.config import Config, ConfigError, InferConfig, ModelConfig
from hovercrypt.infer.backends import resolve_backend
from hovercrypt.infer.predictor import NetworkPredictor
from hovercrypt.models import build_model

TOL = 1e-4  # fp32 graphs: differences are float rounding (measured ~1e-7 on the shipped model)


def _tiny(arch: str = "hovernet") -> torch.nn.Module:
    torch.manual_seed(0)
    if arch == "hovernet":
        cfg = ModelConfig(
            encoder="test_resnet", mode="fast", decoder_width=0.25, dense_units=(1, 1), nr_types=3
        )
    else:
        cfg = ModelConfig(
            arch="unet", mode="fast", unet_base_width=4, unet_levels=3, nr_types=3, unet_classes=3
        )
    return build_model(cfg).eval()


def _tiles(n: int, size: int) -> np.ndarray:
    rng = np.random.default_rng(0)
    return rng.integers(0, 256, (n, size, size, 3), dtype=np.uint8)


@pytest.mark.parametrize(
    ("backend", "arch"), [("openvino", "hovernet"), ("openvino", "unet"), ("onnxruntime", "hovernet")]
)
def test_backend_maps_match_torch(backend: str, arch: str) -> None:
    if importlib.util.find_spec(backend) is None:
        pytest.skip(f"{backend} is not installed")
    model = _tiny(arch)
    ref = NetworkPredictor(model, batch_size=2, backend="torch", window=384, window_border=8)
    fast = NetworkPredictor(model, batch_size=2, backend=backend, window=384, window_border=8)
    tiles = _tiles(3, ref.input_size)  # 3 tiles at batch 2: a full and a partial batch
    want, got = ref.predict(tiles), fast.predict(tiles)
    assert sorted(want) == sorted(got)
    for k in want:
        assert got[k].shape == want[k].shape and got[k].dtype == np.float32
        assert np.abs(got[k] - want[k]).max() < TOL, k
    fast.set_window(0)  # back to the training window: a second graph, same maps
    tiles = _tiles(2, fast.input_size)
    ref.set_window(0)
    for k, v in ref.predict(tiles).items():
        assert np.abs(fast.predict(tiles)[k] - v).max() < TOL, k


def test_backend_with_tta_matches_torch() -> None:
    if importlib.util.find_spec("openvino") is None:
        pytest.skip("openvino is not installed")
    model = _tiny()
    ref = NetworkPredictor(model, tta=True, backend="torch")
    fast = NetworkPredictor(model, tta=True, backend="openvino")
    tiles = _tiles(2, ref.input_size)
    want, got = ref.predict(tiles), fast.predict(tiles)
    for k in want:
        assert np.abs(got[k] - want[k]).max() < TOL, k


def test_resolve_backend_rules() -> None:
    assert resolve_backend("torch", "cpu") == "torch"
    assert resolve_backend("auto", "cuda") == "torch"
    want = "openvino" if importlib.util.find_spec("openvino") else "torch"
    assert resolve_backend("auto", "cpu") == want
    with pytest.raises(ConfigError, match="infer.backend must be one of"):
        resolve_backend("tensorrt", "cpu")
    with pytest.raises(ConfigError, match="CPU only"):
        resolve_backend("openvino", "cuda")


def test_backend_config_and_cli_errors() -> None:
    from hovercrypt.errors import InputError
    from hovercrypt.infer.options import backend_opt

    with pytest.raises(ConfigError, match="infer.backend"):
        Config(infer=InferConfig(backend="fastest"))
    assert backend_opt({"--backend": None}, "auto") == "auto"
    assert backend_opt({"--backend": "torch"}, "auto") == "torch"
    with pytest.raises(InputError, match="--backend must be one of"):
        backend_opt({"--backend": "gpu"}, "auto")


def test_auto_falls_back_to_torch_when_export_fails(monkeypatch: pytest.MonkeyPatch) -> None:
    """Some graphs cannot be exported (e.g. UPerNet's adaptive pooling): auto warns and runs torch."""
    if importlib.util.find_spec("openvino") is None:
        pytest.skip("openvino is not installed")
    from hovercrypt.infer import backends

    def no_export(self: object, size: int) -> bytes:
        raise RuntimeError("unsupported operator")

    monkeypatch.setattr(backends._MapsGraph, "onnx_bytes", no_export)
    model = _tiny()
    tiles = _tiles(1, model.input_size)
    want = NetworkPredictor(model, backend="torch").predict(tiles)
    auto = NetworkPredictor(model, backend="auto")
    with pytest.warns(RuntimeWarning, match="running it in PyTorch"):
        got = auto.predict(tiles)
    assert auto.backend == "torch"
    for k in want:
        assert np.array_equal(got[k], want[k]), k
    with pytest.raises(ConfigError, match="use --backend=torch"):
        NetworkPredictor(model, backend="openvino").predict(tiles)
