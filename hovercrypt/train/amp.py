"""Device and mixed-precision choices for training.

Nothing in the training loop names a device or a dtype: both are decided here
once, from the ``--gpu`` option and ``train.amp``, so the same code runs on a
laptop CPU, one GPU or several.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch

# one implementation each, shared with inference; imported here for the training loop and CLI
from hovercrypt.devices import parse_gpus
from hovercrypt.models.precision import cpu_bf16_pays_off, resolve_amp

__all__ = ["Precision", "cpu_bf16_pays_off", "parse_gpus", "resolve_amp"]


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
