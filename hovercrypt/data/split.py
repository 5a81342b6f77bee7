"""Deterministic patient-disjoint train/validation split.

Patches of one patient are strongly correlated; letting a patient's images
fall on both sides of the split inflates validation scores. Images without a
patient id are treated as their own patient.
"""

from __future__ import annotations

from collections import defaultdict

import numpy as np

from hovercrypt.errors import InputError


def patient_split(
    images: list[tuple[str, str | None]], valid_fraction: float, seed: int = 0
) -> tuple[set[str], set[str]]:
    """Split ``(image name, patient id or None)`` pairs into (train names, valid names).

    Patients are shuffled with ``seed`` (from a sorted order, so the result
    does not depend on listing order); whole patients go to validation while
    they fit under ``valid_fraction`` of the images, then the one patient
    that brings it closest to the target may be added. Both sides are
    non-empty when ``valid_fraction > 0``.
    """
    if not 0.0 <= valid_fraction < 1.0:
        raise ValueError(f"valid_fraction must be in [0, 1), got {valid_fraction}")
    groups: dict[str, list[str]] = defaultdict(list)
    for name, patient in images:
        groups[f"patient:{patient}" if patient is not None else f"image:{name}"].append(name)
    names = {n for n, _ in images}
    if valid_fraction == 0.0 or not images:
        return names, set()
    if len(groups) < 2:
        raise InputError(
            f"cannot make a patient-disjoint split: all {len(images)} images belong to one patient "
            "(use no --split, or give patient ids)"
        )
    keys = sorted(groups)
    order = [keys[i] for i in np.random.default_rng(seed).permutation(len(keys))]
    target = valid_fraction * len(names)
    valid: set[str] = set()
    rest = []
    for key in order:  # first fill up to the target with whole patients that fit
        if len(valid) + len(groups[key]) <= target:
            valid.update(groups[key])
        else:
            rest.append(key)
    if len(valid) < target and rest:
        # then the remaining patient that lands closest to the target (first in shuffled order on ties)
        best = min(rest, key=lambda k: abs(len(valid) + len(groups[k]) - target))
        if len(valid) == 0 or abs(len(valid) + len(groups[best]) - target) < target - len(valid):
            valid.update(groups[best])
    if valid == names:  # cannot happen unless rounding: keep training non-empty
        valid -= set(groups[order[-1]])
    return names - valid, valid
