"""When bf16 autocast is worth it on a CPU (shared by training and inference).

Measured on the 2-core development Xeon, which has AVX512-BF16 but no AMX (idle machine,
``benchmarks/train_speed.py`` and a forward-only run): bf16 autocast ran at 0.80-0.91x the
speed of fp32 for a ResNet50 HoVer-Net training step and 0.78x for inference, because the
casts around every layer cost more than the dot-product instructions save. Only the AMX
matrix units (Sapphire Rapids and later) make bf16 clearly faster, so ``amp="auto"`` turns
bf16 on for CPUs with AMX only; ``bf16`` still forces it anywhere.
"""

from __future__ import annotations

import torch


def cpu_bf16_pays_off() -> bool:
    """True when this CPU has AMX tiles with bf16 (the only case where CPU autocast measured faster)."""
    cpu = getattr(torch, "cpu", None)
    try:
        amx = bool(getattr(cpu, "_is_amx_tile_supported", lambda: False)())
        return amx and bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False
