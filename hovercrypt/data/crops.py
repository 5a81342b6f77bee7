"""Random training windows cut from whole resampled images (``data.sampling = "crops"``).

GlaS images are about 390 x 260 px at 0.93 um/px, smaller than the 540 px
augmentation window, so a tiled patch file is mostly mirrored border and
neighbouring patches repeat the same pixels. Drawing windows at random from
the whole images instead spends every step on a fresh view: the image is
chosen in proportion to its valid tissue area (times its source's
``sample_weight``), and the window centre is a crypt pixel
(``crop_crypt_fraction``), a crypt-free tissue pixel
(``crop_background_fraction``, so muscle, submucosa and fat are learned as
background) or any valid pixel. Windows that leave the image are completed by
mirroring, with mirrored crypts given their own ids as in patch extraction.

Like :class:`~hovercrypt.data.dataset.PatchDataset`, item ``i`` of epoch ``e``
depends only on ``(seed, e, i)``.
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np

from hovercrypt.config import Config
from hovercrypt.data.dataset import PatchDataset
from hovercrypt.data.patches import mirror_pad, reflect_index
from hovercrypt.errors import InputError


def load_image_array(path: Path) -> np.ndarray:
    """A whole-image file from ``extract_patches.py`` (H, W, 6): RGB, instance, type, valid."""
    try:
        arr = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as e:
        raise InputError(f"{path}: cannot be read as an image .npy ({e})") from e
    if arr.ndim != 3 or arr.shape[2] != 6 or not np.issubdtype(arr.dtype, np.integer):
        raise InputError(f"{path}: image file must be integer (H, W, 6), got {arr.dtype} {arr.shape}")
    return arr


def _axis_range(start: int, size: int, n: int) -> tuple[int, int, int, int]:
    """Part of the image ``[lo, hi)`` a window ``[start, start + size)`` needs, and its pads (before, after).

    A window that leaves the image on both sides takes the whole axis (as patch
    extraction mirrors the whole image); one that leaves it on one side is
    mirrored about that border from the part inside the window.
    """
    end = start + size
    lo, hi = max(start, 0), min(end, n)
    if start < 0 and end > n:
        lo, hi = 0, n
    return lo, hi, lo - start, end - hi


def mirror_crop(arr: np.ndarray, x0: int, y0: int, size: int) -> np.ndarray:
    """The ``size`` x ``size`` window at (x0, y0) of an (H, W, 6) image file, mirrored where it leaves it."""
    h, w = arr.shape[:2]
    ylo, yhi, top, bottom = _axis_range(y0, size, h)
    xlo, xhi, left, right = _axis_range(x0, size, w)
    sub = arr[ylo:yhi, xlo:xhi]
    out = np.empty((size, size, 6), np.int32)
    if top == bottom == left == right == 0:
        out[...] = sub
        return out
    pads = (top, bottom, left, right)
    img, inst, tmap = mirror_pad(sub[..., :3], sub[..., 3].astype(np.int32), sub[..., 4], pads)
    iy = reflect_index(sub.shape[0], top, bottom)[0]
    ix = reflect_index(sub.shape[1], left, right)[0]
    out[..., :3] = img
    out[..., 3] = inst
    out[..., 4] = tmap
    out[..., 5] = sub[..., 5][iy][:, ix]
    return out


class CropDataset(PatchDataset):
    """``crops_per_epoch`` random windows per epoch from ``<patch_dir>/images/train``."""

    def __init__(self, folder: str | Path, cfg: Config, train: bool = True, targets: str = "hovernet",
                 seed: int = 0) -> None:
        folder = Path(folder)
        manifest = folder / "manifest.csv"
        if not manifest.is_file():
            raise InputError(
                f"{manifest}: whole-image manifest not found; re-run extract_patches.py "
                "(data.sampling='crops' needs <patch_dir>/images/)"
            )
        with manifest.open(newline="") as f:
            rows = list(csv.DictReader(f))
        if not rows:
            raise InputError(f"{manifest}: no images listed")
        super().__init__([folder / r["file"] for r in rows], cfg, train, targets=targets, seed=seed)
        d = cfg.data
        self.size = d.patch_size
        self.n_items = d.crops_per_epoch
        self.p_crypt, self.p_bg = d.crop_crypt_fraction, d.crop_background_fraction
        self.arrays = [load_image_array(p) for p in self.files]
        self.crypt_idx, self.bg_idx, self.valid_idx = [], [], []
        weights = []
        for arr, row in zip(self.arrays, rows):
            valid = arr[..., 5] > 0
            rgb = arr[..., :3]
            blank = np.all(rgb >= d.white_level, axis=2) | np.all(rgb <= d.black_level, axis=2)
            tissue = valid & ~blank
            crypt = arr[..., 3] > 0
            self.crypt_idx.append(np.flatnonzero(crypt & valid))
            self.bg_idx.append(np.flatnonzero(tissue & ~crypt))
            self.valid_idx.append(np.flatnonzero(valid))
            weights.append(float(np.count_nonzero(tissue)) * float(row.get("weight") or 1.0))
        w = np.asarray(weights)
        if w.sum() <= 0:
            raise InputError(f"{folder}: no valid tissue pixels in any image")
        self.weights = w / w.sum()

    def __len__(self) -> int:
        return self.n_items

    def _centre(self, k: int, rng: np.random.Generator) -> tuple[int, int]:
        u = rng.random()
        if u < self.p_crypt and len(self.crypt_idx[k]):
            pool = self.crypt_idx[k]
        elif u < self.p_crypt + self.p_bg and len(self.bg_idx[k]):
            pool = self.bg_idx[k]
        else:
            pool = self.valid_idx[k]
        flat = int(pool[rng.integers(len(pool))])
        w = self.arrays[k].shape[1]
        return flat % w, flat // w

    def __getitem__(self, index: int):
        rng = self.rng(index)
        k = int(rng.choice(len(self.arrays), p=self.weights))
        cx, cy = self._centre(k, rng)
        half = self.size // 2
        patch = mirror_crop(self.arrays[k], cx - half, cy - half, self.size)
        return self.make_item(patch, rng, f"{self.files[k]} crop at ({cx}, {cy})")
