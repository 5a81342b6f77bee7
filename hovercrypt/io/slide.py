"""Whole-slide reading at a requested resolution.

Slides are opened with OpenSlide (any format it knows; plain PNG/JPEG/TIFF
fall back to its PIL-backed ``ImageSlide``). Regions are requested in pixels
of a *target* resolution (µm/px): the reader picks the coarsest pyramid level
that is still at least as fine as the target and area-resamples from there.

The resampling is a box (area) filter whose weights depend only on *global*
pixel positions (OpenCV's area resize of aligned blocks for integer factors,
a separable sparse box filter otherwise), so a processing pixel gets bit-identical values
whichever region it was read in. Whole-slide stitching relies on that: two
overlapping regions then see the same image, hence the same network maps.
Large regions are resampled in row bands so the source level is never held
in memory at once.
"""

from __future__ import annotations

import math
from pathlib import Path

import cv2
import numpy as np
from scipy import sparse

from hovercrypt.errors import InputError

#: extensions treated as slides or plain images when scanning an input folder.
SLIDE_EXTS = (
    ".svs",
    ".tif",
    ".tiff",
    ".ndpi",
    ".vms",
    ".vmu",
    ".scn",
    ".mrxs",
    ".svslide",
    ".bif",
    ".dcm",
    ".czi",
    ".png",
    ".jpg",
    ".jpeg",
    ".bmp",
)
#: resolutions coarser than this (µm/px) are DPI defaults of ordinary images, not microscopy.
_MAX_PLAUSIBLE_MPP = 50.0
#: source pixels (per channel) resampled per band; bounds the reader's working memory.
_BAND_SOURCE_PIXELS = 8_000_000


def _mpp_from_resolution(res: str | None, unit: str | None) -> float | None:
    """µm/px from TIFF XResolution + ResolutionUnit properties (None when absent or implausible)."""
    if not res:
        return None
    try:
        r = float(res)
    except ValueError:
        return None
    if r <= 0:
        return None
    unit = (unit or "").lower()
    per_um = {"centimeter": 1e4, "cm": 1e4, "3": 1e4, "inch": 25400.0, "2": 25400.0}.get(unit)
    if per_um is None:
        return None
    mpp = per_um / r
    return mpp if mpp <= _MAX_PLAUSIBLE_MPP else None


def _area_matrix(start: int, n_out: int, scale: float, src_start: int, n_src: int) -> sparse.csr_matrix:
    """Box-filter weights (n_out, n_src): output pixel ``start+i`` averages source ``[i*s, (i+1)*s)``.

    Source indices outside ``[src_start, src_start + n_src)`` are clamped to the
    edge (replicate), which only happens on the last row/column of a slide.
    """
    left = (start + np.arange(n_out, dtype=np.float64)) * scale
    right = left + scale
    span = int(math.ceil(scale)) + 1
    ks = np.floor(left).astype(np.int64)[:, None] + np.arange(span)[None, :]
    overlap = np.minimum(right[:, None], ks + 1) - np.maximum(left[:, None], ks)
    w = np.clip(overlap, 0.0, None) / scale
    cols = np.clip(ks, src_start, src_start + n_src - 1) - src_start
    rows = np.repeat(np.arange(n_out), span)
    m = sparse.coo_matrix((w.ravel(), (rows, cols.ravel())), shape=(n_out, n_src)).tocsr()
    m.sum_duplicates()
    m.eliminate_zeros()
    return m.astype(np.float32)


class SlideReader:
    """An open slide with its level-0 resolution; reads regions at any µm/px.

    ``slide_mpp`` is used when the file stores no resolution (plain images,
    some TIFFs); without either, opening fails with an error naming the file.
    """

    def __init__(self, path: str | Path, slide_mpp: float | None = None) -> None:
        import openslide

        self.path = Path(path)
        if not self.path.is_file():
            raise InputError(f"{self.path}: slide not found")
        try:
            self._slide = openslide.open_slide(str(self.path))
        except Exception as e:  # OpenSlide and PIL raise several types for unreadable files
            raise InputError(f"{self.path}: cannot be opened as a slide ({type(e).__name__}: {e})") from e
        self.dimensions: tuple[int, int] = tuple(int(v) for v in self._slide.dimensions)  # type: ignore
        if min(self.dimensions) <= 0:
            raise InputError(f"{self.path}: slide has empty dimensions {self.dimensions}")
        self.level_dimensions = [tuple(int(v) for v in d) for d in self._slide.level_dimensions]
        self.level_downsamples = [float(d) for d in self._slide.level_downsamples]
        stored = self._stored_mpp()
        if stored is None and slide_mpp is None:
            raise InputError(f"{self.path}: the slide stores no resolution (µm/px); pass --slide_mpp")
        if slide_mpp is not None and slide_mpp <= 0:
            raise InputError(f"--slide_mpp must be > 0, got {slide_mpp}")
        self.mpp: float = float(stored if stored is not None else slide_mpp)  # type: ignore[arg-type]
        self.mpp_source = "slide" if stored is not None else "--slide_mpp"

    @property
    def name(self) -> str:
        return self.path.stem

    def _stored_mpp(self) -> float | None:
        props = self._slide.properties
        vals = []
        for key in ("openslide.mpp-x", "openslide.mpp-y"):
            try:
                v = float(props.get(key, ""))
            except ValueError:
                continue
            if 0 < v <= _MAX_PLAUSIBLE_MPP:
                vals.append(v)
        if vals:
            return float(np.mean(vals))
        mpp = _mpp_from_resolution(props.get("tiff.XResolution"), props.get("tiff.ResolutionUnit"))
        if mpp is None and self.path.suffix.lower() in (".tif", ".tiff"):
            mpp = self._tifffile_mpp()
        return mpp

    def _tifffile_mpp(self) -> float | None:
        """Resolution tags of a plain (non-pyramidal) TIFF that OpenSlide opened through PIL."""
        import tifffile

        try:
            with tifffile.TiffFile(self.path) as tf:
                page = tf.pages[0]
                xres = page.tags.get("XResolution")
                unit = page.tags.get("ResolutionUnit")
                if xres is None or unit is None:
                    return None
                num, den = xres.value
                return _mpp_from_resolution(str(num / den), str(int(unit.value)))
        except Exception:  # unreadable tags simply mean "no stored resolution"
            return None

    def size_at(self, mpp: float) -> tuple[int, int]:
        """(width, height) of the whole slide in pixels at ``mpp``."""
        f = mpp / self.mpp
        return max(1, int(self.dimensions[0] / f)), max(1, int(self.dimensions[1] / f))

    def _level_for(self, f: float) -> int:
        """Coarsest level whose downsample does not exceed ``f`` (level 0 when upsampling)."""
        best = 0
        for i, d in enumerate(self.level_downsamples):
            if d <= f * (1 + 1e-9):
                best = i
        return best

    def _read_level(self, level: int, x: int, y: int, w: int, h: int) -> np.ndarray:
        """RGB uint8 of level pixels ``[x, x+w) x [y, y+h)`` (inside the level)."""
        d = self.level_downsamples[level]
        try:
            im = self._slide.read_region((int(round(x * d)), int(round(y * d))), level, (w, h))
        except Exception as e:
            raise InputError(f"{self.path}: failed to read level {level} at ({x}, {y}) ({e})") from e
        arr = np.asarray(im)
        rgb = np.ascontiguousarray(arr[..., :3])
        if arr.shape[2] == 4 and arr[..., 3].min() < 255:
            rgb[arr[..., 3] == 0] = 255  # transparent = outside the scanned area = glass
        return rgb

    def read(self, x: int, y: int, w: int, h: int, mpp: float) -> np.ndarray:
        """uint8 RGB ``(h, w, 3)`` of pixels ``[x, x+w) x [y, y+h)`` at resolution ``mpp``.

        The region must lie inside :meth:`size_at`; pixels beyond the level's
        last row/column (rounding) replicate the edge.
        """
        W, H = self.size_at(mpp)
        if x < 0 or y < 0 or w <= 0 or h <= 0 or x + w > W or y + h > H:
            raise ValueError(f"region {(x, y, w, h)} outside the slide ({W} x {H} at {mpp} µm/px)")
        f = mpp / self.mpp
        level = self._level_for(f)
        lw, lh = self.level_dimensions[level]
        s = f / self.level_downsamples[level]
        if abs(s - 1.0) < 1e-9:  # the level is the target resolution: no resampling
            if x + w <= lw and y + h <= lh:
                return self._read_level(level, x, y, w, h)
            return self._pad_read(level, x, y, w, h, lw, lh)
        if abs(s - round(s)) < 1e-9 and round(s) > 1:
            return self._read_integer(level, x, y, w, h, int(round(s)), lw, lh)
        sx0 = int(math.floor(x * s))
        sx1 = min(lw, int(math.ceil((x + w) * s)))
        mx = _area_matrix(x, w, s, sx0, sx1 - sx0)
        out = np.empty((h, w, 3), np.uint8)
        rows_per_band = max(1, int(_BAND_SOURCE_PIXELS / max(1, (sx1 - sx0) * s)))
        for by in range(y, y + h, rows_per_band):
            bh = min(rows_per_band, y + h - by)
            sy0 = int(math.floor(by * s))
            sy1 = min(lh, int(math.ceil((by + bh) * s)))
            src = self._read_level(level, sx0, sy0, sx1 - sx0, sy1 - sy0).astype(np.float32)
            my = _area_matrix(by, bh, s, sy0, sy1 - sy0)
            tmp = (my @ src.reshape(sy1 - sy0, -1)).reshape(bh, sx1 - sx0, 3)
            tmp = (mx @ tmp.transpose(1, 0, 2).reshape(sx1 - sx0, -1)).reshape(w, bh, 3)
            out[by - y : by - y + bh] = np.clip(np.rint(tmp.transpose(1, 0, 2)), 0, 255).astype(np.uint8)
        return out

    def _read_integer(
        self, level: int, x: int, y: int, w: int, h: int, k: int, lw: int, lh: int
    ) -> np.ndarray:
        """Integer downsample: each output pixel is the mean of its aligned k x k block (OpenCV area)."""
        out = np.empty((h, w, 3), np.uint8)
        rows_per_band = max(1, _BAND_SOURCE_PIXELS // max(1, w * k * k))
        for by in range(y, y + h, rows_per_band):
            bh = min(rows_per_band, y + h - by)
            src = self._pad_read(level, x * k, by * k, w * k, bh * k, lw, lh)
            out[by - y : by - y + bh] = cv2.resize(src, (w, bh), interpolation=cv2.INTER_AREA)
        return out

    def _pad_read(self, level: int, x: int, y: int, w: int, h: int, lw: int, lh: int) -> np.ndarray:
        rw, rh = min(w, lw - x), min(h, lh - y)
        arr = self._read_level(level, x, y, rw, rh)
        if (rw, rh) == (w, h):
            return arr
        return np.pad(arr, ((0, h - rh), (0, w - rw), (0, 0)), mode="edge")

    def thumbnail(self, mpp: float) -> np.ndarray:
        """The whole slide at ``mpp`` (a low resolution: tissue detection, overlays)."""
        W, H = self.size_at(mpp)
        return self.read(0, 0, W, H, mpp)

    def overview_mpp(self, max_side: int) -> float:
        """µm/px for an overview image of at most ~``max_side`` px, snapped to a pyramid level when one
        is within 2x (reading a level directly skips decoding a finer one)."""
        g = max(1.0, max(self.dimensions) / max_side)
        for d in self.level_downsamples:
            if g <= d <= 2 * g:
                g = d
                break
        return self.mpp * g

    def close(self) -> None:
        self._slide.close()

    def __enter__(self) -> SlideReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
