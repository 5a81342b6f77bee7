"""Which autocast dtype to use, and when bf16 is worth it on a CPU (training and inference alike).

Measured on the 2-core development Xeon, which has AVX512-BF16 but no AMX (idle machine,
``benchmarks/train_speed.py`` and a forward-only run): bf16 autocast ran at 0.80-0.91x the
speed of fp32 for a ResNet50 HoVer-Net training step and 0.78x for inference, because the
casts around every layer cost more than the dot-product instructions save. Only the AMX
matrix units (Sapphire Rapids and later) make bf16 clearly faster, so ``amp="auto"`` turns
bf16 on for CPUs with AMX only; ``bf16`` still forces it anywhere.
"""

from __future__ import annotations

import torch

from hovercrypt.errors import ConfigError


def cpu_bf16_pays_off() -> bool:
    """True when this CPU has AMX tiles with bf16 (the only case where CPU autocast measured faster)."""
    cpu = getattr(torch, "cpu", None)
    try:
        amx = bool(getattr(cpu, "_is_amx_tile_supported", lambda: False)())
        return amx and bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def resolve_amp(amp: str, device: torch.device | str) -> torch.dtype | None:
    """The autocast dtype for ``amp`` ("auto" | "bf16" | "fp16" | "none") on ``device`` (None = fp32).

    ``auto`` picks bf16 on GPUs that support it, else fp16; on the CPU bf16 only with AMX,
    else fp32. fp16 needs CUDA (CPU fp16 autocast is slow and unscaled) and bf16 on CUDA
    needs GPU support: both are errors rather than a silent fallback.
    """
    device = torch.device(device)
    if amp == "none":
        return None
    if device.type == "cuda":
        if amp == "fp16":
            return torch.float16
        bf16_ok = torch.cuda.is_bf16_supported()
        if amp == "bf16":
            if not bf16_ok:
                raise ConfigError("amp='bf16' but this GPU has no bf16 support; use 'fp16' or 'auto'")
            return torch.bfloat16
        if amp == "auto":
            return torch.bfloat16 if bf16_ok else torch.float16
    elif amp == "fp16":
        raise ConfigError("amp='fp16' needs a CUDA GPU; on the CPU use 'bf16', 'auto' or 'none'")
    elif amp == "bf16":
        return torch.bfloat16
    elif amp == "auto":
        return torch.bfloat16 if device.type == "cpu" and cpu_bf16_pays_off() else None
    raise ConfigError(f"amp must be auto/bf16/fp16/none, got {amp!r}")
