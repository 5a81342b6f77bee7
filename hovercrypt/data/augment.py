"""Augmentations with ``torchvision.transforms.v2`` on ``tv_tensors.Image`` / ``tv_tensors.Mask``.

Geometric transforms (flips, 90° rotations, affine, elastic) move the image
and the label maps together; masks are resampled with nearest interpolation,
so no new instance or type ids appear. Photometric transforms (hue,
saturation, brightness, contrast, Gaussian/median blur) touch the image only.

All random parameters are drawn from a ``numpy.random.Generator`` passed in
by the caller rather than from torch's global RNG: the dataset seeds it from
(seed, epoch, index), which makes every batch reproducible, also in worker
processes and after resuming a run.
"""

from __future__ import annotations

import cv2
import numpy as np
import torch
from torchvision import tv_tensors
from torchvision.transforms.v2 import InterpolationMode
from torchvision.transforms.v2 import functional as F

from hovercrypt.config import AugmentConfig


def _elastic_displacement(
    rng: np.random.Generator, h: int, w: int, alpha: float, sigma: float
) -> torch.Tensor:
    """Smooth random displacement field (1, H, W, 2) in normalised grid units, as torchvision expects."""
    k = int(2 * round(3 * sigma) + 1)
    d = rng.uniform(-1.0, 1.0, size=(2, h, w)).astype(np.float32)
    for c in range(2):
        d[c] = cv2.GaussianBlur(d[c], (k, k), sigma)
    d[0] *= alpha / w
    d[1] *= alpha / h
    return torch.from_numpy(np.ascontiguousarray(d.transpose(1, 2, 0)))[None]


def hed_jitter(
    image: np.ndarray, scale: tuple[float, float], shift: tuple[float, float] = (0.0, 0.0)
) -> np.ndarray:
    """Scale and shift the haematoxylin and eosin densities of a uint8 RGB image.

    Stains differ between labs mostly in how much of each dye a section holds;
    colour deconvolution (``skimage.color.rgb2hed``) separates the two dyes, so
    changing their optical densities imitates another lab's staining far more
    faithfully than a hue shift. The DAB channel is left as it is.

    Optical densities use ``OD = -log((I + 1) / 256)`` with scikit-image's H&E-DAB stain
    matrices (``skimage.color.hed_from_rgb`` / ``rgb_from_hed``), which is exactly invertible:
    factors of 1 and shifts of 0 return the image unchanged (``rgb2hed``/``hed2rgb`` clip
    and do not round-trip saturated pixels).
    """
    from skimage.color import hed_from_rgb, rgb_from_hed

    od = -np.log((image.astype(np.float32) + 1.0) / 256.0)
    conc = od.reshape(-1, 3) @ hed_from_rgb.astype(np.float32)
    conc[:, 0] = conc[:, 0] * scale[0] + shift[0]
    conc[:, 1] = conc[:, 1] * scale[1] + shift[1]
    rgb = 256.0 * np.exp(-(conc @ rgb_from_hed.astype(np.float32))) - 1.0
    return np.clip(np.rint(rgb), 0, 255).astype(np.uint8).reshape(image.shape)


class Augmenter:
    """Random geometric + photometric augmentation with explicit randomness."""

    def __init__(self, cfg: AugmentConfig) -> None:
        cfg.validate()
        self.cfg = cfg

    def geometric(
        self, image: np.ndarray, labels: np.ndarray, rng: np.random.Generator
    ) -> tuple[np.ndarray, np.ndarray]:
        """Transform uint8 (H, W, 3) image and int (H, W, C) labels identically; returns new arrays."""
        c = self.cfg
        img = tv_tensors.Image(torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1))
        lab = tv_tensors.Mask(torch.from_numpy(np.ascontiguousarray(labels, dtype=np.int32)).permute(2, 0, 1))
        h, w = image.shape[:2]
        if c.flip:
            if rng.random() < 0.5:
                img, lab = F.horizontal_flip(img), F.horizontal_flip(lab)
            if rng.random() < 0.5:
                img, lab = F.vertical_flip(img), F.vertical_flip(lab)
        if c.rot90 and h == w:
            k = int(rng.integers(4))
            if k:  # exact, no resampling
                img = tv_tensors.wrap(torch.rot90(img, k, dims=(1, 2)), like=img)
                lab = tv_tensors.wrap(torch.rot90(lab, k, dims=(1, 2)), like=lab)
        if c.affine_prob > 0 and rng.random() < c.affine_prob:
            angle = float(rng.uniform(-c.affine_degrees, c.affine_degrees))
            scale = float(rng.uniform(*c.affine_scale))
            shear = [float(rng.uniform(-c.affine_shear, c.affine_shear)) for _ in range(2)]
            translate = [float(rng.uniform(-1, 1) * c.affine_translate * s) for s in (w, h)]
            args = dict(angle=angle, translate=translate, scale=scale, shear=shear)
            img = F.affine(img, **args, interpolation=InterpolationMode.BILINEAR, fill=[float(c.fill)] * 3)
            lab = F.affine(lab, **args, interpolation=InterpolationMode.NEAREST)  # fills 0
        if c.elastic_prob > 0 and rng.random() < c.elastic_prob:
            disp = _elastic_displacement(rng, h, w, c.elastic_alpha, c.elastic_sigma)
            img = F.elastic(img, disp, interpolation=InterpolationMode.BILINEAR, fill=[float(c.fill)] * 3)
            lab = F.elastic(lab, disp, interpolation=InterpolationMode.NEAREST)  # fills 0
        return img.permute(1, 2, 0).numpy().copy(), lab.permute(1, 2, 0).numpy().copy()

    def photometric(self, image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """Colour and blur changes on a uint8 (H, W, 3) image; labels are unaffected by design."""
        c = self.cfg
        if c.hed_prob > 0 and rng.random() < c.hed_prob:
            scale = rng.uniform(*c.hed_scale, size=2)
            shift = rng.uniform(-c.hed_shift, c.hed_shift, size=2)
            image = hed_jitter(image, (float(scale[0]), float(scale[1])), (float(shift[0]), float(shift[1])))
        img = tv_tensors.Image(torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1))
        ops = []
        if c.brightness > 0:
            ops.append((F.adjust_brightness, 1.0 + rng.uniform(-c.brightness, c.brightness)))
        if c.contrast > 0:
            ops.append((F.adjust_contrast, 1.0 + rng.uniform(-c.contrast, c.contrast)))
        if c.saturation > 0:
            ops.append((F.adjust_saturation, 1.0 + rng.uniform(-c.saturation, c.saturation)))
        if c.hue > 0:
            ops.append((F.adjust_hue, rng.uniform(-c.hue, c.hue)))
        for i in rng.permutation(len(ops)):  # random order, like ColorJitter
            fn, factor = ops[i]
            img = fn(img, float(factor))
        out = img.permute(1, 2, 0).numpy()
        if c.blur_prob > 0 and rng.random() < c.blur_prob:
            if rng.random() < 0.5:
                sigma = float(rng.uniform(0.1, c.blur_max_sigma))
                k = int(2 * np.ceil(2 * sigma) + 1)
                out = F.gaussian_blur(img, [k, k], [sigma, sigma]).permute(1, 2, 0).numpy()
            else:
                out = cv2.medianBlur(np.ascontiguousarray(out), c.median_ksize)
        return np.ascontiguousarray(out)
