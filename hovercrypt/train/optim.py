"""Optimiser and learning-rate schedule of a training phase."""

from __future__ import annotations

import math

import torch

from hovercrypt.config import PhaseConfig


def make_optimizer(phase: PhaseConfig, params: list, total_steps: int):
    """Optimiser and learning-rate schedule of one phase.

    ``step``: StepLR stepped once per epoch (the original recipe). ``cosine``: linear warm-up over
    ``warmup_steps`` optimiser steps, then a cosine decay to ``lr * min_lr_ratio`` at the end of
    the phase; ``onecycle``: torch's OneCycleLR over the phase. Both are stepped per optimiser
    step (marked ``per_step``), so the schedule does not depend on how long an epoch is.
    """
    if phase.optimizer == "adamw":
        opt = torch.optim.AdamW(params, lr=phase.lr, weight_decay=phase.weight_decay)
    else:
        opt = torch.optim.Adam(params, lr=phase.lr, weight_decay=phase.weight_decay)
    if phase.schedule == "step":
        return opt, torch.optim.lr_scheduler.StepLR(opt, phase.step_size, phase.gamma)
    total = max(1, total_steps)
    if phase.schedule == "onecycle":
        sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=phase.lr, total_steps=total + 1)
    else:
        warm, floor = min(phase.warmup_steps, total - 1), phase.min_lr_ratio

        def factor(step: int) -> float:
            if step < warm:
                return (step + 1) / (warm + 1)
            t = min(1.0, (step - warm) / max(1, total - warm))
            return floor + (1.0 - floor) * 0.5 * (1.0 + math.cos(math.pi * t))

        sched = torch.optim.lr_scheduler.LambdaLR(opt, factor)
    sched.per_step = True
    return opt, sched
