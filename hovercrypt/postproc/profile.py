"""Per-stage timings of the HoVer-Net post-processing, for ``benchmarks/postproc.py``.

Kept out of :func:`hovercrypt.postproc.hv.instances_from_maps` so the function users call
takes only its parameters; the stages and their order are the same code path.
"""

from __future__ import annotations

import inspect
import time
from collections.abc import Callable
from typing import Any

import numpy as np

from hovercrypt.postproc.hv import instances_from_maps, staged_instances


def timed_instances_from_maps(
    np_prob: np.ndarray,
    hv: np.ndarray,
    timings: dict[str, float],
    clock: Callable[[], float] = time.perf_counter,
    **params: Any,
) -> np.ndarray:
    """``instances_from_maps(np_prob, hv, **params)``, adding each stage's milliseconds to ``timings``.

    ``clock``: e.g. ``time.thread_time`` for CPU time on a busy machine. Unknown parameters are
    a TypeError, as for the plain function.
    """
    bound = inspect.signature(instances_from_maps).bind(np_prob, hv, **params)
    bound.apply_defaults()
    args = dict(bound.arguments)
    tick = clock()

    def lap(stage: str) -> None:
        nonlocal tick
        now = clock()
        timings[stage] = timings.get(stage, 0.0) + (now - tick) * 1e3
        tick = now

    return staged_instances(args.pop("np_prob"), args.pop("hv"), lap, **args)
