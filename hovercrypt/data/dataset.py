"""``PatchDataset``: patches from ``extract_patches.py`` -> network inputs and targets.

Per item: load the (P, P, 5 or 6) patch, augment it geometrically as a whole
(training only), compute the HV map on the whole augmented patch (so offsets
stay exact and instances cut by the output window still point to their true
centre), crop to the network input / output windows, and apply photometric
augmentation to the input crop only.

Randomness for item ``i`` in epoch ``e`` comes from
``numpy.random.default_rng([seed, e, i])``: the same batches come back in
any worker process and after resuming a run (call ``set_epoch`` each epoch).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from hovercrypt.config import Config
from hovercrypt.data.augment import Augmenter
from hovercrypt.data.targets import center_crop
from hovercrypt.errors import InputError


def load_patch(path: str | Path) -> np.ndarray:
    """Read one patch file as int32 (P, P, 5) with a clear error for anything else."""
    path = Path(path)
    try:
        arr = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as e:
        raise InputError(f"{path}: cannot be read as a patch .npy ({e})") from e
    if arr.ndim != 3 or arr.shape[2] not in (5, 6) or arr.shape[0] != arr.shape[1]:
        raise InputError(
            f"{path}: patch must have shape (P, P, 5) = RGB, instance, type (+ valid: 6); got {arr.shape}"
        )
    if not np.issubdtype(arr.dtype, np.integer):
        raise InputError(f"{path}: patch must be integer (uint8/int32), got {arr.dtype}")
    return arr.astype(np.int32, copy=False)


class PatchDataset(Dataset):
    """Training / validation patches with the targets of the model family ``targets``.

    ``targets`` names a registered family (``"hovernet"``: ``np``, ``hv``, ``tp``; ``"unet"``:
    ``seg``, ...); the family's registry hook computes its own keys.
    """

    def __init__(
        self,
        files: list[str | Path],
        cfg: Config,
        train: bool,
        targets: str = "hovernet",
        seed: int = 0,
    ) -> None:
        from hovercrypt.models.registry import get_family

        #: the model family whose own targets (HoVer-Net ``hv``, UNet ``seg``, ...) are built
        self.family = get_family(targets, "targets")
        self.files = [Path(f) for f in files]
        self.cfg = cfg
        self.train = train
        self.targets = targets
        self.seed = int(seed)
        self.epoch = 0
        win = cfg.windows
        self.in_size, self.out_size = win.input, win.output
        self.nr_types = cfg.model.nr_types
        self.augmenter = Augmenter(cfg.train.augment) if train else None

    @classmethod
    def from_dir(cls, directory: str | Path, cfg: Config, train: bool, **kwargs) -> PatchDataset:
        """All patches listed in ``<directory>/manifest.csv`` (or every ``*.npy`` when there is none)."""
        d = Path(directory)
        if not d.is_dir():
            raise InputError(f"{d}: patch folder not found (run extract_patches.py)")
        manifest = d / "manifest.csv"
        if manifest.is_file():
            from hovercrypt.data.patches import read_manifest

            files = [d / row["file"] for row in read_manifest(d)]
            missing = [f.name for f in files if not f.is_file()]
            if missing:
                raise InputError(f"{manifest}: {len(missing)} listed patch file(s) missing: {missing[:3]}")
        else:
            files = sorted(d.glob("*.npy"))
        if not files:
            raise InputError(f"{d}: no patches found")
        return cls(files, cfg, train, **kwargs)

    def set_epoch(self, epoch: int) -> None:
        """Select the augmentation stream of ``epoch`` (call before iterating each epoch)."""
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return len(self.files)

    def rng(self, index: int) -> np.random.Generator:
        return np.random.default_rng([self.seed, self.epoch, int(index)])

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        path = self.files[index]
        patch = load_patch(path)
        if patch.shape[0] < self.in_size:
            raise InputError(f"{path}: patch size {patch.shape[0]} < network input {self.in_size}")
        return self.make_item(patch, self.rng(index), str(path))

    def make_item(self, patch: np.ndarray, rng: np.random.Generator, where: str) -> dict[str, torch.Tensor]:
        """Augment one (P, P, 5|6) patch and build the network input and targets.

        Channel 5 (when present) is the valid-pixel mask: it is moved with the labels by the
        geometric augmentation (pixels rotated in from outside become invalid too), it removes
        instances from the HV target computation, and it comes back as ``valid`` (N, out, out)
        so the losses ignore those pixels.
        """
        image = patch[..., :3].astype(np.uint8)  # written as 0..255 by extract_patches
        labels = np.empty(patch.shape[:2] + (3,), np.int32)
        labels[..., :2] = patch[..., 3:5]
        labels[..., 2] = patch[..., 5] if patch.shape[2] == 6 else 1
        if self.augmenter is not None:
            image, labels = self.augmenter.geometric(image, labels, rng)
        valid = labels[..., 2] > 0
        inst = np.where(valid, labels[..., 0], 0)
        out: dict[str, torch.Tensor] = {}
        img_in = center_crop(image, self.in_size)
        if self.augmenter is not None:
            img_in = self.augmenter.photometric(img_in, rng)
        valid_out = np.ascontiguousarray(center_crop(valid, self.out_size))
        out["valid"] = torch.from_numpy(valid_out.astype(np.float32))
        chw = np.ascontiguousarray(img_in).transpose(2, 0, 1).astype(np.float32)
        out["image"] = torch.from_numpy(chw / 255.0)
        inst_out = np.ascontiguousarray(center_crop(inst, self.out_size))
        out["np"] = torch.from_numpy((inst_out > 0).astype(np.int64))
        for key, target in self.family.make_targets(inst, self.out_size, self.cfg).items():
            out[key] = torch.from_numpy(target)
        if self.nr_types > 0:
            tp = np.where(inst_out > 0, center_crop(labels[..., 1], self.out_size), 0)
            hi = int(tp.max()) if tp.size else 0
            if hi >= self.nr_types:
                raise InputError(f"{where}: type id {hi} but model.nr_types={self.nr_types}")
            out["tp"] = torch.from_numpy(tp.astype(np.int64))
        out["inst"] = torch.from_numpy(inst_out.astype(np.int32))
        return out
