"""Predictors: the one interface between a network and the tiling engines.

Tile inference (:mod:`hovercrypt.infer.tile`) and the whole-slide engine only
ever call ``predictor.predict(tiles, origins)``. Keeping the network behind this
small interface lets tests swap in *oracle* predictors that render exact maps
(from a known instance map, using ``origins`` to know where each tile lies), so
tiling, stitching and export can be checked exactly without training a model.
"""

from __future__ import annotations

import contextlib
import warnings
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np

from hovercrypt.errors import ConfigError

#: map channels whose sign flips with the image: (map name, channel, axis flipped).
#: HV channel 0 is the x offset (negated by a horizontal flip), channel 1 the y offset.
_SIGNED_CHANNELS = {"hv": {"h": 0, "v": 1}}

#: the four flips of test-time augmentation as (flip horizontally, flip vertically).
TTA_FLIPS: tuple[tuple[bool, bool], ...] = ((False, False), (True, False), (False, True), (True, True))


@runtime_checkable
class Predictor(Protocol):
    """Turns RGB tiles into dense output maps.

    ``input_size``/``output_size``: square network windows; the output is the
    centre ``output_size`` crop of the input window. ``predict`` gets uint8 tiles
    ``(N, in, in, 3)`` and, optionally, ``origins`` ``(N, 2)`` = (x, y) of each
    tile's top-left in processing-resolution pixels of the whole image/slide
    (negative inside the mirror padding). Networks ignore ``origins``; oracle
    predictors use it. Returns float32 maps ``(N, out, out, C)`` per map name.
    """

    input_size: int
    output_size: int
    arch: str
    nr_types: int

    def predict(self, tiles: np.ndarray, origins: np.ndarray | None = None) -> dict[str, np.ndarray]: ...


def check_predictor(predictor: Any) -> None:
    """Fail early with a clear message when a predictor's windows cannot be centre-aligned."""
    inp, out = int(predictor.input_size), int(predictor.output_size)
    if out <= 0 or inp < out or (inp - out) % 2:
        raise ValueError(
            f"predictor windows input={inp} output={out}: need 0 < output <= input and an even difference"
        )


def unflip(maps: dict[str, np.ndarray], flip_h: bool, flip_v: bool) -> dict[str, np.ndarray]:
    """Undo a flip of the input on channel-last ``(N, h, w, C)`` maps.

    Flipping the image mirrors the maps back into place *and* reverses the
    direction of the signed offset channels (HV): a pixel left of a crypt centre
    becomes right of it, so the x offset must be negated after an h-flip, the
    y offset after a v-flip.
    """
    res = {}
    for name, m in maps.items():
        if flip_h:
            m = m[:, :, ::-1]
        if flip_v:
            m = m[:, ::-1]
        signed = _SIGNED_CHANNELS.get(name)
        if signed and (flip_h or flip_v):
            m = m.copy()
            if flip_h:
                m[..., signed["h"]] *= -1
            if flip_v:
                m[..., signed["v"]] *= -1
        res[name] = np.ascontiguousarray(m, dtype=np.float32)
    return res


def predict_tta(
    predict_fn: Any, tiles: np.ndarray, origins: np.ndarray | None = None
) -> dict[str, np.ndarray]:
    """Average ``predict_fn`` over the four flips (identity, h, v, hv), each un-flipped.

    ``predict_fn(tiles, origins)`` returns channel-last maps. ``origins`` are passed
    unchanged: a flipped tile still covers the same region of the slide.
    """
    total: dict[str, np.ndarray] = {}
    for flip_h, flip_v in TTA_FLIPS:
        t = tiles
        if flip_h:
            t = t[:, :, ::-1]
        if flip_v:
            t = t[:, ::-1]
        maps = unflip(predict_fn(np.ascontiguousarray(t), origins), flip_h, flip_v)
        for k, v in maps.items():
            total[k] = total[k] + v if k in total else v.astype(np.float32, copy=True)
    return {k: v / np.float32(len(TTA_FLIPS)) for k, v in total.items()}


class NetworkPredictor:
    """A :class:`Predictor` around a hovercrypt model (anything with ``forward`` and ``to_maps``).

    Tiles are sent through the network in chunks of ``batch_size`` under
    ``torch.inference_mode`` and autocast (see :func:`hovercrypt.models.precision.resolve_amp`); with
    ``tta`` each chunk runs four times (flips) and the un-flipped maps are averaged.
    """

    def __init__(
        self,
        model: Any,
        device: Any = "cpu",
        batch_size: int = 8,
        tta: bool = False,
        amp: str = "auto",
        config: Any = None,
        window: int = 0,
        window_border: int = 0,
        channels_last: bool = False,
        threads: int = 0,
        backend: str = "torch",
        precision: str = "auto",
    ) -> None:
        import torch

        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.device = torch.device(device)
        self.model = model.to(self.device).eval()
        self.batch_size = int(batch_size)
        self.tta = bool(tta)
        from hovercrypt.models.precision import resolve_amp

        self.amp_dtype = resolve_amp(amp, self.device)
        self.config = config if config is not None else getattr(model, "config", None)
        self.model_path: str | None = None  # set by from_checkpoint; recorded in exported metadata
        self.input_size = int(model.input_size)
        self.output_size = int(model.output_size)
        self.arch = str(model.arch)
        nr = getattr(model, "nr_types", None)
        if nr is None and self.config is not None:
            nr = self.config.model.nr_types
        self.nr_types = int(nr or 0)
        #: the training window's context (px between the input edge and the output) and the
        #: encoder's total stride; large windows keep the first and align to the second
        self.context = (self.input_size - self.output_size) // 2
        self.stride = int(max(getattr(model, "strides", None) or [getattr(model, "size_multiple", 1)]))
        self.window_border = 0
        self.threads = 0
        self.precision = "f32"
        self._runner: Any = None  # compiled network of a non-torch backend, built on first use
        self._compiled_sizes: set[int] = set()  # window sizes the runner has compiled
        self._weights_released = False  # torch weights dropped after a compile (see _release_weights)
        check_predictor(self)
        self.configure(window, window_border, channels_last, threads, backend, precision)

    def configure(
        self,
        window: int = 0,
        window_border: int = 0,
        channels_last: bool = False,
        threads: int = 0,
        backend: str = "torch",
        precision: str = "auto",
    ) -> None:
        """Inference window (:meth:`set_window`), memory format, threads and backend (``InferConfig``).

        The input is always NHWC (channels_last); ``channels_last`` stores the weights NHWC too,
        which changes the maps only by float rounding (off by default: not measured to pay off).
        ``threads`` > 0 sets torch's intra-op threads, which is
        process-wide (0 leaves torch's default, one per core). ``backend``: see
        :mod:`hovercrypt.infer.backends` (``auto`` = OpenVINO on the CPU when installed);
        ``precision`` its arithmetic (``auto`` = bf16 where the CPU computes it natively).
        """
        import torch

        from hovercrypt.infer.backends import resolve_backend, resolve_precision

        self.backend_requested = backend
        backend = resolve_backend(backend, self.device.type)
        precision = resolve_precision(precision, backend)
        before = (getattr(self, "backend", None), self.threads, self.precision)
        if (backend, int(threads), precision) != before:
            self._reset_runner()
        self.backend, self.threads, self.precision = backend, int(threads), precision
        if threads < 0:
            raise ValueError(f"threads must be >= 0 (0 = torch's default), got {threads}")
        if threads:
            torch.set_num_threads(int(threads))
        self.channels_last = bool(channels_last) and self.device.type != "mps"
        if self.channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        self.set_window(window, window_border)

    def apply_settings(self, infer: Any) -> None:
        """Batch size, TTA, window and CPU settings from an :class:`~hovercrypt.config.InferConfig`."""
        if infer.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {infer.batch_size}")
        self.batch_size, self.tta = int(infer.batch_size), bool(infer.tta)
        window, border = int(infer.window), int(infer.window_border)
        self.configure(
            window, border, bool(infer.channels_last), int(infer.threads), str(infer.backend),
            str(infer.precision),
        )

    def set_window(self, window: int, border: int = 0) -> None:
        """Run the network on ``window`` px inputs instead of its training window.

        The models are fully convolutional, so a larger window only removes the
        overlap that every small window recomputes (fast: 256 px in for 164 out;
        original: 270 for 80). ``border`` more px are dropped on each side of the
        output, where a padded network (zero padding in the encoder, and in the
        decoder in fast mode) sees the window edge; it is rounded up so that the
        kept output is a multiple of the encoder stride, which puts every window's
        stride grid on one global lattice (the kept centre then does not depend on
        the window position). ``window=0`` restores the training window.
        """
        if window == 0:
            self.input_size = self.context * 2 + self._native_output()
            self.output_size = self._native_output()
            self.window_border = 0
            return
        if border < 0:
            raise ValueError(f"window_border must be >= 0, got {border}")
        native_in = self.context * 2 + self._native_output()
        if window < native_in:
            raise ValueError(f"window={window} is smaller than the model's training window {native_in}")
        s = max(1, self.stride)
        out = window - 2 * (self.context + border)
        out -= out % s
        if (window - out) % 2:  # the output must sit in the centre of the input
            raise ValueError(f"window={window} must be even (encoder stride {s})")
        if out <= 0:
            raise ValueError(
                f"window={window} with window_border={border} leaves no output (context {self.context} px)"
            )
        self.input_size, self.output_size = int(window), int(out)
        self.window_border = (window - out) // 2 - self.context

    def _native_output(self) -> int:
        return int(self.model.output_size)

    @classmethod
    def from_checkpoint(
        cls,
        path: str | Path,
        device: Any = "cpu",
        batch_size: int = 8,
        tta: bool = False,
        amp: str = "auto",
        **kw: Any,
    ) -> NetworkPredictor:
        """Load a checkpoint (via ``hovercrypt.models.checkpoint.load_model``) with its stored Config.

        ``kw``: the window / CPU settings of :class:`NetworkPredictor`.
        """
        from hovercrypt.models.checkpoint import load_model

        model, cfg = load_model(path, device)
        pred = cls(model, device=device, batch_size=batch_size, tta=tta, amp=amp, config=cfg, **kw)
        pred.model_path = str(path)
        return pred

    def _autocast(self) -> Any:
        import torch

        if self.amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=self.amp_dtype)

    def _forward(self, tiles: np.ndarray, origins: np.ndarray | None = None) -> dict[str, np.ndarray]:
        if self.backend != "torch":
            return self._forward_compiled(tiles)
        import torch

        self._reload_weights()
        x = torch.from_numpy(np.ascontiguousarray(tiles))
        if self.device.type == "cuda":  # uint8 upload from pinned memory, overlapping the copy
            x = x.pin_memory().to(self.device, non_blocking=True)
        else:
            x = x.to(self.device)
        x = x.permute(0, 3, 1, 2).float().div_(255.0)
        if self.device.type != "mps":
            x = x.contiguous(memory_format=torch.channels_last)
        with torch.inference_mode(), self._autocast():
            maps = self.model.to_maps(self.model(x))
        maps = self._drop_border(maps)
        return {k: v.float().cpu().numpy().astype(np.float32, copy=False) for k, v in maps.items()}

    def _drop_border(self, maps: dict[str, Any]) -> dict[str, Any]:
        """Drop ``window_border`` px on each side, where a padded network sees the window edge."""
        c = self.window_border
        return {k: v[:, c:-c, c:-c] for k, v in maps.items()} if c else maps

    def _forward_compiled(self, tiles: np.ndarray) -> dict[str, np.ndarray]:
        """The maps from the OpenVINO / ONNX Runtime graph (f32: equal to float rounding; bf16: ~0.02)."""
        size = int(tiles.shape[1])
        if size not in self._compiled_sizes:
            self._reload_weights()  # the export reads the torch weights
        if self._runner is None:
            from hovercrypt.infer.backends import make_runner

            self._runner = make_runner(self.backend, self.model, self.threads, self.precision)
        x = np.ascontiguousarray(tiles.transpose(0, 3, 1, 2), dtype=np.float32) / np.float32(255.0)
        try:  # the first call per window size exports and compiles the graph
            maps = self._runner(x)
        except Exception as e:  # export/compile failures come as many exception types
            if self.backend_requested != "auto":
                raise ConfigError(
                    f"infer.backend={self.backend!r} cannot run this {self.arch} model "
                    f"({type(e).__name__}: {e}); use --backend=torch"
                ) from e
            warnings.warn(
                f"{self.backend} cannot compile this {self.arch} model ({type(e).__name__}); "
                "running it in PyTorch (set infer.backend='torch' to skip the attempt)",
                RuntimeWarning,
                stacklevel=2,
            )
            self.backend, self.precision = "torch", "f32"
            self._reset_runner()
            return self._forward(tiles)
        if size not in self._compiled_sizes:  # just compiled: the export's copies are garbage now
            from hovercrypt.infer.memory import trim_heap

            self._compiled_sizes.add(size)
            self._release_weights()
            trim_heap()  # -170 MB RSS after the shipped model's compile, -110 MB more with the release
        return {k: np.ascontiguousarray(v, dtype=np.float32) for k, v in self._drop_border(maps).items()}

    def _reset_runner(self) -> None:
        """Forget the compiled graphs (another backend, precision or thread count, or new weights)."""
        self._runner = None
        self._compiled_sizes.clear()

    def _release_weights(self) -> None:
        """Drop the torch weights once the compiled graph holds its own copy (-110 MB RSS for the
        shipped model); only for a checkpoint, which :meth:`_reload_weights` reads back when a
        new window size or the torch backend needs them."""
        if self.model_path is None or self._weights_released:
            return
        self.model = self.model.to("meta")
        self._weights_released = True

    def _reload_weights(self) -> None:
        if not self._weights_released:
            return
        import torch

        from hovercrypt.models.checkpoint import load_model

        model, _ = load_model(self.model_path, self.device)
        if self.channels_last:
            model = model.to(memory_format=torch.channels_last)
        self.model, self._weights_released = model, False
        self._reset_runner()  # its graph wraps the released module: a new one exports the weights

    def predict(self, tiles: np.ndarray, origins: np.ndarray | None = None) -> dict[str, np.ndarray]:
        if tiles.ndim != 4 or tiles.shape[1:] != (self.input_size, self.input_size, 3):
            raise ValueError(
                f"tiles must be (N, {self.input_size}, {self.input_size}, 3) uint8, got {tiles.shape}"
            )
        fn = self._forward
        parts = []
        for s in range(0, len(tiles), self.batch_size):
            chunk = tiles[s : s + self.batch_size]
            parts.append(predict_tta(fn, chunk) if self.tta else fn(chunk))
        if not parts:
            return {}
        return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
