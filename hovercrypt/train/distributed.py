"""Device selection and multi-GPU (DDP) set-up.

Several GPUs train with one process per GPU (DistributedDataParallel). The
user does not have to know about ``torchrun``: ``run_train.py --gpu=0,1``
re-launches itself through ``torch.distributed.run`` with
``CUDA_VISIBLE_DEVICES`` set, and every worker then sees its own GPU as
``cuda:<LOCAL_RANK>``. Launching with ``torchrun`` directly works too.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass

import torch
import torch.distributed as dist

from hovercrypt.config import ConfigError


@dataclass
class DistInfo:
    """Where this process runs and which share of the work it does."""

    device: torch.device
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    notice: str | None = None  # one line for the user (e.g. "no GPU: training on the CPU")

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def launched_by_torchrun() -> bool:
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def relaunch_with_torchrun(gpus: list[int], script: str, argv: list[str]) -> int:
    """Start one worker per GPU through ``torch.distributed.run``; returns the exit code."""
    from torch.distributed import run as torchrun

    env_visible = ",".join(str(g) for g in gpus)
    os.environ["CUDA_VISIBLE_DEVICES"] = env_visible
    args = ["--standalone", f"--nproc_per_node={len(gpus)}", script, *argv]
    print(f"launching {len(gpus)} DDP workers on GPUs {env_visible}: torchrun {' '.join(args)}", flush=True)
    try:
        torchrun.main(args)
    except SystemExit as e:  # torchrun exits through SystemExit on worker failure
        return int(e.code or 0)
    return 0


def setup(gpus: list[int]) -> DistInfo:
    """Pick the device for this process; joins the process group when launched by torchrun.

    Without a usable GPU the run falls back to the CPU and ``notice`` says so
    (one line): requesting a GPU on a machine without one is not an error.
    """
    if launched_by_torchrun():
        rank = int(os.environ["RANK"])
        world = int(os.environ["WORLD_SIZE"])
        local = int(os.environ.get("LOCAL_RANK", "0"))
        if torch.cuda.is_available():
            torch.cuda.set_device(local)
            device, backend = torch.device("cuda", local), "nccl"
        else:
            device, backend = torch.device("cpu"), "gloo"
        if not dist.is_initialized():
            dist.init_process_group(backend=backend)
        notice = None if device.type == "cuda" else f"no GPU available: DDP with {world} CPU processes (gloo)"
        return DistInfo(device, rank, world, local, notice)
    if not gpus:
        return DistInfo(torch.device("cpu"), notice="--gpu is empty: training on the CPU")
    if not torch.cuda.is_available():
        return DistInfo(torch.device("cpu"), notice=f"no GPU available (--gpu={','.join(map(str, gpus))}): "
                        "training on the CPU")
    n = torch.cuda.device_count()
    if gpus[0] >= n:
        raise ConfigError(f"--gpu={gpus[0]} but only {n} GPU(s) are visible")
    torch.cuda.set_device(gpus[0])
    return DistInfo(torch.device("cuda", gpus[0]))


def needs_relaunch(gpus: list[int]) -> bool:
    """Several GPUs requested, CUDA present, and not yet inside a torchrun worker."""
    return len(gpus) > 1 and not launched_by_torchrun() and torch.cuda.is_available()


def barrier(info: DistInfo) -> None:
    if info.distributed and dist.is_initialized():
        dist.barrier()


def cleanup(info: DistInfo) -> None:
    if info.distributed and dist.is_initialized():
        dist.destroy_process_group()


def script_argv() -> list[str]:
    return list(sys.argv[1:])
