"""Overlay images: instance contours drawn on the RGB image, coloured by type.

A quick visual check of what was found. Shared by tile inference (full-size
overlay) and slide inference (thumbnail: pass ``scale`` = thumbnail / contour
resolution and the contours are shrunk onto it).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import cv2
import numpy as np

from hovercrypt.io.type_info import TypeInfo

#: colour of untyped instances (type 0: a model without a type head); background black would hide them.
UNTYPED_COLOUR = (255, 255, 0)


def draw_overlay(
    image: np.ndarray,
    info: Mapping[int, Mapping[str, Any]],
    type_info: TypeInfo,
    thickness: int = 2,
    scale: float = 1.0,
    offset: Sequence[float] = (0.0, 0.0),
) -> np.ndarray:
    """A copy of uint8 RGB ``image`` with every instance contour drawn in its type's colour.

    Contour points are mapped by ``p * scale + offset`` before drawing. Untyped
    instances (type 0) are drawn in :data:`UNTYPED_COLOUR`.
    """
    if image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"overlay needs an RGB image (H, W, 3), got {image.shape}")
    out = np.ascontiguousarray(image, dtype=np.uint8).copy()
    by_colour: dict[tuple[int, int, int], list[np.ndarray]] = {}
    for inst in info.values():
        pts = np.asarray(inst["contour"], np.float64).reshape(-1, 2) * scale + np.asarray(offset, np.float64)
        t = int(inst.get("type", 0) or 0)
        colour = tuple(int(c) for c in type_info.color(t)) if t > 0 else UNTYPED_COLOUR
        by_colour.setdefault(colour, []).append(np.round(pts).astype(np.int32).reshape(-1, 1, 2))
    for colour, polys in by_colour.items():
        cv2.polylines(out, polys, isClosed=True, color=colour, thickness=max(1, int(thickness)))
    return out
