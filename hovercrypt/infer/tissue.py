"""Tissue masks on a low-resolution thumbnail, and fast "does this box touch tissue" queries.

Most of a slide is glass. Detecting tissue on a ~16 µm/px thumbnail (Otsu on
colour saturation, then morphology) and skipping tiles that see none of it is
the single largest saving of whole-slide inference. Saturation, not grey
level, separates tissue from glass: glass is bright *and* grey, pale tissue
is bright but pink.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
from skimage.morphology import remove_small_objects

from hovercrypt.io.images import read_rgb
from hovercrypt.postproc.morphology import fill_holes

#: Otsu threshold floor (saturation 0..255): on a blank slide Otsu would split sensor noise.
MIN_SATURATION = 20
#: Otsu threshold cap: above it Otsu is splitting tissue classes (dense nuclei vs pale stroma),
#: not tissue from glass; pale eosin stroma has a saturation of ~35 and more.
MAX_SATURATION = 30


def otsu_tissue_mask(thumb: np.ndarray, mpp: float, min_area_um2: float) -> np.ndarray:
    """bool (h, w) tissue mask of an RGB thumbnail at ``mpp`` µm/px."""
    sat = cv2.cvtColor(thumb, cv2.COLOR_RGB2HSV)[..., 1]
    sat = cv2.GaussianBlur(sat, (3, 3), 0)
    thr, _ = cv2.threshold(sat, 0, 255, cv2.THRESH_BINARY + cv2.THRESH_OTSU)
    mask = (sat > min(max(thr, MIN_SATURATION), MAX_SATURATION)).astype(np.uint8)
    k = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (5, 5))
    mask = cv2.morphologyEx(mask, cv2.MORPH_CLOSE, k)
    mask = cv2.morphologyEx(mask, cv2.MORPH_OPEN, cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (3, 3)))
    mask = fill_holes(mask) > 0  # crypt lumens are tissue
    min_px = max(1, int(math.ceil(min_area_um2 / (mpp * mpp))))
    return remove_small_objects(mask, max_size=min_px - 1, connectivity=2)


def load_mask(path: str | Path, shape: tuple[int, int]) -> np.ndarray:
    """A user-supplied mask (any size, grey or colour, non-zero = tissue) resized to ``shape`` (h, w)."""
    arr = read_rgb(path)  # raises InputError naming the file when unreadable
    m = (arr.max(axis=2) > 0).astype(np.uint8)
    return cv2.resize(m, (shape[1], shape[0]), interpolation=cv2.INTER_NEAREST) > 0


@dataclass(frozen=True)
class TissueCrop:
    """The tissue mask around one region (picklable, small) for per-instance point tests."""

    mask: np.ndarray  # bool, thumbnail pixels
    ax0: int  # thumbnail column of mask[:, 0]
    ay0: int
    scale: float  # thumbnail px per processing px

    def contains(self, x: float, y: float) -> bool:
        """Is processing point (x, y) on tissue?"""
        a, b = int(math.floor(x * self.scale)) - self.ax0, int(math.floor(y * self.scale)) - self.ay0
        h, w = self.mask.shape
        return 0 <= a < w and 0 <= b < h and bool(self.mask[b, a])


class TissueIndex:
    """O(1) "does this processing-pixel box touch tissue?" via a summed-area table of the mask.

    ``scale`` = thumbnail pixels per processing pixel. The mask is dilated by
    one thumbnail pixel so that crypts on the tissue edge are never cut off.
    ``grow`` (processing px) widens a query box: tiles within a crypt's size of
    the tissue are processed so that a crypt whose centroid lies on tissue is
    always predicted whole. With the tile cache following crypts (``infer.follow_um``),
    ``grow`` is 0: the crypts themselves pull in the tiles beyond the mask.
    """

    def __init__(self, mask: np.ndarray, scale: float, grow: int = 0) -> None:
        self.grown = cv2.dilate(mask.astype(np.uint8), np.ones((3, 3), np.uint8)) > 0
        dt = np.int32 if mask.size < 2**31 else np.int64  # the table is the engine's only slide-sized array
        self.sat = np.zeros((mask.shape[0] + 1, mask.shape[1] + 1), dt)
        self.sat[1:, 1:] = self.grown.cumsum(0, dtype=dt).cumsum(1, dtype=dt)
        self.scale = scale
        self.grow = grow
        self.shape = mask.shape

    def _clip(self, x0: float, y0: float, x1: float, y1: float) -> tuple[int, int, int, int]:
        h, w = self.shape
        a0 = min(w, max(0, int(math.floor(x0 * self.scale))))
        b0 = min(h, max(0, int(math.floor(y0 * self.scale))))
        a1 = min(w, max(0, int(math.ceil(x1 * self.scale))))
        b1 = min(h, max(0, int(math.ceil(y1 * self.scale))))
        return a0, b0, a1, b1

    def touches(self, x0: int, y0: int, x1: int, y1: int) -> bool:
        """Does the box touch tissue (no growing: region cores)?"""
        a0, b0, a1, b1 = self._clip(x0, y0, x1, y1)
        if a1 <= a0 or b1 <= b0:
            return False
        s = self.sat
        return bool(s[b1, a1] - s[b0, a1] - s[b1, a0] + s[b0, a0] > 0)

    def near(self, x0: int, y0: int, x1: int, y1: int) -> bool:
        """Does the box, grown by ``grow``, touch tissue (network tiles)?"""
        g = self.grow
        return self.touches(x0 - g, y0 - g, x1 + g, y1 + g)

    def crop(self, box: tuple[int, int, int, int]) -> TissueCrop:
        a0, b0, a1, b1 = self._clip(*box)
        a1, b1 = max(a1, a0 + 1), max(b1, b0 + 1)
        return TissueCrop(self.grown[b0:b1, a0:a1].copy(), a0, b0, self.scale)
