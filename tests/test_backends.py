"""Compiled CPU backends (OpenVINO, ONNX Runtime): the same maps as eager PyTorch, and clear errors."""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest
import torch

from hovercrypt.config import Config, ConfigError, InferConfig, ModelConfig
from hovercrypt.infer.backends import native_bf16, resolve_backend, resolve_precision
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
    fast = NetworkPredictor(
        model, batch_size=2, backend=backend, window=384, window_border=8, precision="f32"
    )
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
    fast = NetworkPredictor(model, tta=True, backend="openvino", precision="f32")
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
    from hovercrypt.config import BACKENDS, PRECISIONS
    from hovercrypt.errors import InputError
    from hovercrypt.infer.options import choice_opt

    with pytest.raises(ConfigError, match="infer.backend"):
        Config(infer=InferConfig(backend="fastest"))
    with pytest.raises(ConfigError, match="infer.precision"):
        Config(infer=InferConfig(precision="fp8"))
    assert choice_opt({"--backend": None}, "--backend", BACKENDS, "auto") == "auto"
    assert choice_opt({"--backend": "torch"}, "--backend", BACKENDS, "auto") == "torch"
    with pytest.raises(InputError, match="--backend must be one of"):
        choice_opt({"--backend": "gpu"}, "--backend", BACKENDS, "auto")
    with pytest.raises(InputError, match="--precision must be one of"):
        choice_opt({"--precision": "int4"}, "--precision", PRECISIONS, "auto")


def test_resolve_precision_rules() -> None:
    """auto is bf16 only where OpenVINO computes it natively; bf16 elsewhere is an error."""
    want = "bf16" if native_bf16() else "f32"
    assert resolve_precision("auto", "openvino") == want
    assert resolve_precision("auto", "torch") == "f32"
    assert resolve_precision("auto", "onnxruntime") == "f32"
    assert resolve_precision("f32", "openvino") == "f32"
    assert resolve_precision("bf16", "openvino") == "bf16"
    for backend in ("torch", "onnxruntime"):
        with pytest.raises(ConfigError, match="needs infer.backend='openvino'"):
            resolve_precision("bf16", backend)
    with pytest.raises(ConfigError, match="infer.precision must be one of"):
        resolve_precision("int8", "openvino")


def test_openvino_bf16_maps_close_to_f32() -> None:
    """bf16 changes the maps by rounding only: close to f32, not equal (that it is bf16 at all)."""
    if importlib.util.find_spec("openvino") is None:
        pytest.skip("openvino is not installed")
    if not native_bf16():
        pytest.skip("this CPU has no native bf16 (AVX512_BF16 / AMX): OpenVINO would emulate it")
    model = _tiny()
    f32 = NetworkPredictor(model, batch_size=2, backend="openvino", precision="f32")
    bf16 = NetworkPredictor(model, batch_size=2, backend="openvino", precision="auto")
    assert bf16.precision == "bf16"
    tiles = _tiles(3, f32.input_size)
    want, got = f32.predict(tiles), bf16.predict(tiles)
    diffs = {k: float(np.abs(got[k] - want[k]).max()) for k in want}
    assert all(d < 0.1 for d in diffs.values()), diffs
    assert max(diffs.values()) > 1e-5, f"bf16 maps equal f32 to float rounding: {diffs}"
    bf16.configure(precision="f32")  # switching precision recompiles: f32 maps again
    assert all(np.abs(bf16.predict(tiles)[k] - want[k]).max() < TOL for k in want)


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


def test_compiled_checkpoint_releases_and_reloads_torch_weights(tmp_path) -> None:
    """After a compile the torch weights are dropped (the graph holds its own copy); a new window
    or the torch backend reads them back from the checkpoint, with the same maps."""
    if importlib.util.find_spec("openvino") is None:
        pytest.skip("openvino is not installed")
    from hovercrypt.models.checkpoint import save_checkpoint

    model = _tiny()
    mcfg = ModelConfig(encoder="test_resnet", mode="fast", decoder_width=0.25, dense_units=(1, 1), nr_types=3)
    ckpt = tmp_path / "m.pt"
    save_checkpoint(ckpt, model, Config(model=mcfg))
    ref = NetworkPredictor(model, batch_size=2, backend="torch")
    pred = NetworkPredictor.from_checkpoint(ckpt, batch_size=2, backend="openvino", precision="f32")
    tiles = _tiles(2, ref.input_size)
    want = ref.predict(tiles)

    def close(got: dict, want: dict) -> bool:
        return all(np.abs(got[k] - want[k]).max() < TOL for k in want)

    assert close(pred.predict(tiles), want)
    assert all(p.is_meta for p in pred.model.parameters())  # released after the compile
    assert close(pred.predict(tiles), want)  # the compiled graph still runs
    pred.set_window(384, 8)  # a new size: reloaded, exported, compiled, released again
    ref.set_window(384, 8)
    big = _tiles(1, ref.input_size)
    assert close(pred.predict(big), ref.predict(big))
    assert all(p.is_meta for p in pred.model.parameters())
    pred.configure(384, 8, backend="torch")  # torch needs the weights back
    assert close(pred.predict(big), ref.predict(big))
    assert not any(p.is_meta for p in pred.model.parameters())
    # a predictor built from a model object (no checkpoint to reload from) keeps its weights
    own = NetworkPredictor(model, batch_size=2, backend="openvino", precision="f32")
    own.predict(tiles)
    assert not any(p.is_meta for p in own.model.parameters())
