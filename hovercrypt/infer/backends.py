"""Execution backends for the network at inference: eager PyTorch, OpenVINO or ONNX Runtime.

On a CPU the network is nearly all of the whole-slide time, and the same fp32 graph runs
markedly faster in OpenVINO (and ONNX Runtime) than in eager PyTorch, with maps equal to
float rounding (``benchmarks/backends.py``). On a CPU with native bf16 (AVX512_BF16 or AMX)
OpenVINO's bf16 arithmetic halves the time again, with maps within about 0.02 of f32
(``infer.precision``; ``benchmarks/window_cost.py``). A backend here is a callable from a float32
NCHW batch in [0, 1] to the model's ``to_maps`` output (NHWC float32 arrays), so the
predictor's tiling, window and test-time-augmentation logic stay one implementation.

The network and its map conversion are exported and compiled once per window size (ONNX,
dynamic batch), on first use: the engines use one window, so this happens once per run.
"""

from __future__ import annotations

import functools
import importlib.util
import io
import warnings
from collections.abc import Callable
from typing import Any

import numpy as np

from hovercrypt.config import BACKENDS, PRECISIONS, ConfigError

Runner = Callable[[np.ndarray], dict[str, np.ndarray]]


def resolve_backend(name: str, device_type: str) -> str:
    """``auto``: OpenVINO on the CPU when it is installed (measured fastest there), else torch."""
    if name not in BACKENDS:
        raise ConfigError(f"infer.backend must be one of {list(BACKENDS)}, got {name!r}")
    if name == "auto":
        return "openvino" if device_type == "cpu" and importlib.util.find_spec("openvino") else "torch"
    if name != "torch" and device_type != "cpu":
        raise ConfigError(
            f"infer.backend={name!r} runs on the CPU only; use 'torch' (or 'auto') on {device_type}"
        )
    if name != "torch" and importlib.util.find_spec(name) is None:
        raise ConfigError(f"infer.backend={name!r} needs the {name!r} package: pip install {name}")
    return name


@functools.cache
def native_bf16() -> bool:
    """Whether OpenVINO computes bf16 natively on this CPU (AVX512_BF16 or AMX).

    Elsewhere OpenVINO would emulate it, slower than f32, so ``auto`` keeps f32 there. Asked
    once per process: every ``configure`` resolves the precision, and the CPU does not change.
    """
    if importlib.util.find_spec("openvino") is None:
        return False
    import openvino as ov

    return "BF16" in ov.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES")


def resolve_precision(name: str, backend: str) -> str:
    """``auto``: bf16 for OpenVINO on a CPU with native bf16 (measured 2.1x faster), else f32.

    ``bf16`` asked of another backend is an error rather than a silent f32: torch's CPU bf16
    autocast was measured slower than f32 here, and ONNX Runtime has no CPU bf16 path.
    """
    if name not in PRECISIONS:
        raise ConfigError(f"infer.precision must be one of {list(PRECISIONS)}, got {name!r}")
    if name == "auto":
        return "bf16" if backend == "openvino" and native_bf16() else "f32"
    if name == "bf16" and backend != "openvino":
        raise ConfigError(
            f"infer.precision='bf16' needs infer.backend='openvino' (or 'auto' on a CPU), "
            f"got backend {backend!r}"
        )
    return name


class _MapsGraph:
    """Wraps ``model`` so that one traced graph returns the maps as a tuple in a fixed order."""

    def __init__(self, model: Any) -> None:
        import torch

        class Graph(torch.nn.Module):
            def __init__(self, net: Any, keys: list[str]) -> None:
                super().__init__()
                self.net, self.keys = net, keys

            def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
                maps = self.net.to_maps(self.net(x))
                return tuple(maps[k] for k in self.keys)

        size = int(model.input_size)
        with torch.inference_mode():
            self.keys = sorted(model.to_maps(model(torch.zeros(1, 3, size, size))))
        self.module = Graph(model, self.keys).eval()

    def onnx_bytes(self, size: int) -> bytes:
        """The graph as ONNX for ``size`` px windows, any batch (TorchScript exporter: no extra deps,
        and the dynamo exporter needs ``onnxscript``; its deprecation notice is silenced here only).

        The window is static: the models crop their output with Python arithmetic on the
        input size, which a trace records as constants.
        """
        import torch

        buf = io.BytesIO()
        axes = {"x": {0: "n"}, **{k: {0: "n"} for k in self.keys}}
        with torch.no_grad(), warnings.catch_warnings():
            # the trace warns that shape arithmetic becomes constant: intended, the window is static
            warnings.simplefilter("ignore", torch.jit.TracerWarning)
            warnings.filterwarnings("ignore", message="Constant folding", category=UserWarning)
            for msg in ("The feature will be removed", "You are using the legacy TorchScript-based"):
                warnings.filterwarnings("ignore", message=msg, category=DeprecationWarning)
            torch.onnx.export(
                self.module,
                (torch.zeros(1, 3, size, size),),
                buf,
                input_names=["x"],
                output_names=self.keys,
                dynamic_axes=axes,
                opset_version=17,
                dynamo=False,
            )
        return buf.getvalue()


def _openvino_runner(graph: _MapsGraph, threads: int, precision: str) -> Runner:
    import openvino as ov

    core = ov.Core()
    props: dict[str, Any] = {"PERFORMANCE_HINT": "LATENCY", "INFERENCE_PRECISION_HINT": precision}
    if threads:
        props["INFERENCE_NUM_THREADS"] = int(threads)
    compiled: dict[int, Any] = {}

    def run(x: np.ndarray) -> dict[str, np.ndarray]:
        size = int(x.shape[2])
        if size not in compiled:  # one compile per window; the batch stays dynamic
            compiled[size] = core.compile_model(core.read_model(graph.onnx_bytes(size)), "CPU", props)
        out = compiled[size](np.ascontiguousarray(x, dtype=np.float32))
        return {k: np.asarray(out[i], dtype=np.float32) for i, k in enumerate(graph.keys)}

    return run


def _onnxruntime_runner(graph: _MapsGraph, threads: int) -> Runner:
    import onnxruntime as ort

    so = ort.SessionOptions()
    if threads:
        so.intra_op_num_threads = int(threads)
    sessions: dict[int, Any] = {}

    def run(x: np.ndarray) -> dict[str, np.ndarray]:
        size = int(x.shape[2])
        if size not in sessions:
            sessions[size] = ort.InferenceSession(
                graph.onnx_bytes(size), so, providers=["CPUExecutionProvider"]
            )
        out = sessions[size].run(None, {"x": np.ascontiguousarray(x, dtype=np.float32)})
        return {k: np.asarray(v, dtype=np.float32) for k, v in zip(graph.keys, out)}

    return run


def make_runner(backend: str, model: Any, threads: int = 0, precision: str = "f32") -> Runner:
    """A compiled runner for ``backend`` ('openvino' or 'onnxruntime'; see :func:`resolve_backend`)
    computing in ``precision`` (resolved: 'f32' or 'bf16', the latter OpenVINO only)."""
    graph = _MapsGraph(model)
    if backend == "openvino":
        return _openvino_runner(graph, threads, precision)
    if backend == "onnxruntime":
        if precision != "f32":
            raise ConfigError(f"infer.precision={precision!r}: ONNX Runtime runs f32 only here")
        return _onnxruntime_runner(graph, threads)
    raise ConfigError(f"make_runner: no compiled runner for backend {backend!r}")
