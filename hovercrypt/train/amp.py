"""Device and mixed-precision choices for training.

Nothing in the training loop names a device or a dtype: both are decided here
once, from the ``--gpu`` option and ``train.amp``, so the same code runs on a
laptop CPU, one GPU or several.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch

from hovercrypt.config import ConfigError
from hovercrypt.models.precision import cpu_bf16_pays_off


def resolve_amp(amp: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype for ``train.amp`` on ``device`` (None = full fp32).

    ``auto`` picks bf16 on GPUs that support it, else fp16 (with a GradScaler); on
    the CPU bf16 only with AMX, else fp32 (see :mod:`hovercrypt.models.precision`).
    """
    if amp == "none":
        return None
    if device.type == "cuda":
        if amp == "fp16":
            return torch.float16
        bf16_ok = torch.cuda.is_bf16_supported()
        if amp == "bf16":
            if not bf16_ok:
                raise ConfigError("train.amp='bf16' but this GPU has no bf16 support; use 'fp16' or 'auto'")
            return torch.bfloat16
        return torch.bfloat16 if bf16_ok else torch.float16
    if amp == "fp16":
        raise ConfigError("train.amp='fp16' needs a CUDA GPU; on the CPU use 'bf16', 'auto' or 'none'")
    if amp == "bf16":
        return torch.bfloat16
    if amp == "auto":
        return torch.bfloat16 if cpu_bf16_pays_off() else None
    raise ConfigError(f"train.amp must be auto/bf16/fp16/none, got {amp!r}")


@dataclass
class Precision:
    """Autocast + (for fp16) loss scaling for one device."""

    device: torch.device
    dtype: torch.dtype | None

    def __post_init__(self) -> None:
        enabled = self.dtype == torch.float16 and self.device.type == "cuda"
        self.scaler = torch.amp.GradScaler("cuda", enabled=enabled)

    @property
    def name(self) -> str:
        return {None: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}[self.dtype]

    def autocast(self) -> contextlib.AbstractContextManager:
        if self.dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=self.dtype)

    def backward_step(
        self, loss: torch.Tensor, optimizer: torch.optim.Optimizer, accum: int = 1, step: bool = True
    ) -> None:
        """Backward pass and, when ``step``, the optimiser step (fp16: scaled so gradients do not underflow).

        With gradient accumulation the loss is divided by ``accum`` and gradients add up over
        ``accum`` calls; only the last one (``step=True``) updates the weights and clears them.
        """
        self.scaler.scale(loss / accum if accum > 1 else loss).backward()
        if step:
            self.scaler.step(optimizer)
            self.scaler.update()
            optimizer.zero_grad(set_to_none=True)


def parse_gpus(spec: str | None) -> list[int]:
    """``"0"`` -> [0], ``"0,1"`` -> [0, 1], ``""``/None -> [] (CPU)."""
    if spec is None or not str(spec).strip():
        return []
    try:
        ids = [int(s) for s in str(spec).split(",") if s.strip()]
    except ValueError as e:
        raise ConfigError(f"--gpu must be a comma-separated list of GPU ids, got {spec!r}") from e
    if any(i < 0 for i in ids) or len(set(ids)) != len(ids):
        raise ConfigError(f"--gpu ids must be distinct and >= 0, got {spec!r}")
    return ids
