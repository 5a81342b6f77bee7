"""Which device runs the network: ``--gpu`` parsing, shared by training and inference."""

from __future__ import annotations

import sys

from hovercrypt.errors import InputError


def parse_gpus(spec: str | None) -> list[int]:
    """``"0"`` -> [0], ``"0,1"`` -> [0, 1], ``""``/None -> [] (CPU). Shared by training and inference."""
    if spec is None or not str(spec).strip():
        return []
    try:
        ids = [int(s) for s in str(spec).split(",") if s.strip()]
    except ValueError as e:
        raise InputError(f"--gpu must be a comma-separated list of GPU ids, got {spec!r}") from e
    if any(i < 0 for i in ids) or len(set(ids)) != len(ids):
        raise InputError(f"--gpu ids must be distinct and >= 0, got {spec!r}")
    return ids


def _notice(msg: str) -> None:
    from tqdm import tqdm

    tqdm.write(msg, file=sys.stderr)


def resolve_device(gpu: str | None) -> str:
    """``--gpu`` value -> torch device string. Empty -> CPU (with a notice); "0" or "0,1" -> cuda:0."""
    ids = parse_gpus(gpu)
    if not ids:
        _notice("notice: no --gpu given, running on the CPU")
        return "cpu"
    import torch

    first = ids[0]
    if not torch.cuda.is_available() or first >= torch.cuda.device_count():
        raise InputError(f"--gpu {gpu}: CUDA device {first} is not available (use --gpu= for the CPU)")
    if len(ids) > 1:
        _notice(f"notice: inference uses one GPU; using cuda:{first}")
    return f"cuda:{first}"
