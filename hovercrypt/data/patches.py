"""Patch extraction: tile resampled images into training patches.

Each patch is one ``.npy`` array ``(P, P, 5)`` int32: R, G, B (0..255),
instance id, type id, plus a valid-pixel channel (``(P, P, 6)``) for sources
with an ignore mask. Every resampled image is also saved whole, for the
random-crop sampler and image-level validation. ``mirror`` tiling pads the image by reflection so that
the central ``step x step`` part of the windows tiles the whole image (small
images such as GlaS at 0.93 µm/px still give patches); ``valid`` tiling uses
only windows inside the image.

Mirrored labels: a gland reflected into the padding is a real-looking gland
in the padded image, so it stays annotated (zeroing it would teach the
network that visible glands are background). Each reflected copy gets its own
new instance id, except that a copy touching its own original across the
image border forms one visible blob with it and keeps the original id: the
target then never splits a gland along a line the image does not show.
"""

from __future__ import annotations

import csv
import io
import json
import shutil
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from tqdm import tqdm

from hovercrypt.config import Config, DataConfig, SourceConfig
from hovercrypt.data.readers import Sample, iter_samples, list_records
from hovercrypt.data.split import patient_split
from hovercrypt.errors import InputError
from hovercrypt.io.atomic import atomic_save_npy, atomic_write_text

MANIFEST_COLUMNS = ("file", "source", "x", "y", "patient", "size", "mpp")
IMAGE_MANIFEST_COLUMNS = (
    "file", "source", "name", "patient", "height", "width", "mpp", "crypt_px", "valid_px", "weight"
)


def reflect_index(n: int, before: int, after: int) -> tuple[np.ndarray, np.ndarray]:
    """Source index and reflected-copy number for coordinates ``-before .. n + after - 1``.

    Reflection without repeating the edge pixel (``d c b | a b c d | c b a``),
    the same as ``np.pad(mode="reflect")``; copy 0 is the original image.
    """
    c = np.arange(-before, n + after, dtype=np.int64)
    if n == 1:
        return np.zeros_like(c), c  # every position is its own copy of the single pixel
    period = 2 * (n - 1)
    m = np.mod(c, period)
    idx = np.where(m < n, m, period - m)
    copy = np.where(c >= 0, np.maximum(0, -(-c // (n - 1)) - 1), np.floor_divide(c, n - 1))
    return idx, copy


def mirror_pad(
    sample_image: np.ndarray, inst: np.ndarray, tmap: np.ndarray | None, pads: tuple[int, int, int, int]
) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """Reflect-pad image and labels by (top, bottom, left, right); reflected glands get new ids."""
    top, bottom, left, right = pads
    h, w = inst.shape
    iy, cy = reflect_index(h, top, bottom)
    ix, cx = reflect_index(w, left, right)
    img = sample_image[iy][:, ix]
    lab = inst[iy][:, ix].astype(np.int64)
    tp = None if tmap is None else tmap[iy][:, ix]
    copy_y, copy_x = np.meshgrid(cy, cx, indexing="ij")
    mirrored = ((copy_y != 0) | (copy_x != 0)) & (lab > 0)
    if mirrored.any():
        src = lab.copy()
        base = int(inst.max()) + 1
        code = ((copy_y - cy.min()) * (int(cx.max() - cx.min()) + 1) + (copy_x - cx.min())) * base + lab
        _, inv = np.unique(code[mirrored], return_inverse=True)
        lab[mirrored] = base + inv.ravel()
        lab = _merge_across_seams(lab, src, base)
    if lab.max(initial=0) > np.iinfo(np.int32).max:
        raise InputError("too many instances after mirror padding for int32 ids")
    return img, lab.astype(np.int32), tp


def _merge_across_seams(lab: np.ndarray, src: np.ndarray, base: int) -> np.ndarray:
    """Join 4-adjacent copies of the same source instance into one id (the original's when present).

    Labels below ``base`` are originals; the rest are reflected copies, renumbered
    ``base, base + 1, ...`` after merging.
    """
    pairs = []
    for a_lab, b_lab, a_src, b_src in (
        (lab[:, :-1], lab[:, 1:], src[:, :-1], src[:, 1:]),
        (lab[:-1], lab[1:], src[:-1], src[1:]),
    ):
        m = (a_src == b_src) & (a_src > 0) & (a_lab != b_lab)
        if m.any():
            pairs.append(np.stack([a_lab[m], b_lab[m]], 1))
    parent: dict[int, int] = {}

    def find(x: int) -> int:
        while parent.get(x, x) != x:
            x = parent[x]
        return x

    if pairs:
        for u, v in np.unique(np.concatenate(pairs), axis=0).tolist():
            ru, rv = find(u), find(v)
            if ru != rv:  # the smaller root wins, so an original (< base) is always the root
                parent[max(ru, rv)] = min(ru, rv)
    ids = np.unique(lab[lab >= base])
    roots = np.array([find(int(k)) for k in ids], np.int64)
    copies = np.unique(roots[roots >= base])
    new = np.where(roots < base, roots, base + np.searchsorted(copies, roots))
    out = lab.copy()
    sel = lab >= base
    out[sel] = new[np.searchsorted(ids, lab[sel])]
    return out


def window_starts(n: int, win: int, step: int, tiling: str) -> tuple[list[int], int, int]:
    """Window origins along one axis (in image coordinates) and the (before, after) padding."""
    if tiling == "mirror":
        before = max(0, (win - step) // 2)
        count = max(1, -(-n // step))
        after = max(0, (count - 1) * step + win - n - before)
        return [-before + i * step for i in range(count)], before, after
    if tiling == "valid":
        if n < win:
            return [], 0, 0
        starts = list(range(0, n - win + 1, step))
        if starts[-1] != n - win:
            starts.append(n - win)  # cover the far edge too
        return starts, 0, 0
    raise ValueError(f"tiling must be 'mirror' or 'valid', got {tiling!r}")


@dataclass(frozen=True)
class PatchFilter:
    """Which patches to keep: the thresholds of ``data`` (see DataConfig for each) and whether
    the source keeps patches without annotation. A view, so no default is repeated here."""

    data: DataConfig
    keep_unannotated: bool = False

    @classmethod
    def from_config(cls, cfg: Config, source: SourceConfig | None = None) -> PatchFilter:
        return cls(cfg.data, (source or cfg.data).keep_unannotated)

    def reason(self, rgb: np.ndarray, inst: np.ndarray, valid: np.ndarray | None = None) -> str | None:
        """Why the patch is dropped (``None`` = keep). Fractions count valid pixels only."""
        d = self.data
        n = inst.size if valid is None else int(np.count_nonzero(valid))
        if valid is not None and n < d.min_valid_fraction * inst.size:
            return "invalid_pixels"
        fg = float(np.count_nonzero(inst)) / max(n, 1)
        if fg == 0.0 and not self.keep_unannotated:
            return "unannotated"
        if fg < d.min_annotated_fraction and not (fg == 0.0 and self.keep_unannotated):
            return "little_annotation"
        blank = np.all(rgb >= d.white_level, axis=2) | np.all(rgb <= d.black_level, axis=2)
        if valid is not None:
            blank &= valid
        if float(np.count_nonzero(blank)) / max(n, 1) > d.max_blank_fraction:
            return "blank"
        return None


@dataclass
class ExtractReport:
    images: int = 0
    kept: Counter = field(default_factory=Counter)  # per split
    dropped: Counter = field(default_factory=Counter)  # per reason
    skipped_images: list[str] = field(default_factory=list)  # too small for valid tiling
    patients: dict[str, list[str]] = field(default_factory=dict)  # split -> patient ids

    def to_dict(self) -> dict:
        return {
            "images": self.images,
            "kept": dict(self.kept),
            "dropped": dict(self.dropped),
            "skipped_images": self.skipped_images,
            "patients": self.patients,
        }

    def summary(self) -> str:
        kept = ", ".join(f"{k}: {v}" for k, v in sorted(self.kept.items())) or "none"
        dropped = ", ".join(f"{k}: {v}" for k, v in sorted(self.dropped.items())) or "none"
        s = f"{self.images} images -> patches kept ({kept}); dropped ({dropped})"
        if self.skipped_images:
            s += f"; {len(self.skipped_images)} image(s) smaller than the window (valid tiling)"
        return s


def sample_patches(sample: Sample, win: int, step: int, tiling: str):
    """Yield ``(x, y, patch int32 (win, win, C))`` for one resampled sample; x, y may be negative.

    C is 5 (RGB, instance, type) or 6 with the valid-pixel mask when the sample has one.
    """
    h, w = sample.inst.shape
    ys, top, bottom = window_starts(h, win, step, tiling)
    xs, left, right = window_starts(w, win, step, tiling)
    valid = sample.valid
    if tiling == "mirror":
        pads = (top, bottom, left, right)
        img, inst, tmap = mirror_pad(sample.image, sample.inst, sample.type_map, pads)
        if valid is not None:
            valid = valid[reflect_index(h, top, bottom)[0]][:, reflect_index(w, left, right)[0]]
    else:
        img, inst, tmap = sample.image, sample.inst, sample.type_map
    nc = 5 if valid is None else 6
    for y in ys:
        for x in xs:
            sl = (slice(y + top, y + top + win), slice(x + left, x + left + win))
            patch = np.empty((win, win, nc), np.int32)
            patch[..., :3] = img[sl]
            patch[..., 3] = inst[sl]
            patch[..., 4] = 0 if tmap is None else tmap[sl]
            if valid is not None:
                patch[..., 5] = valid[sl]
            yield x, y, patch


def whole_image_array(sample: Sample) -> np.ndarray:
    """(H, W, 6) uint16: RGB, instance, type, valid; what the crop sampler draws windows from."""
    if int(sample.inst.max(initial=0)) > np.iinfo(np.uint16).max:
        raise InputError(f"{sample.source}: more than 65535 instances in one image")
    arr = np.empty(sample.inst.shape + (6,), np.uint16)
    arr[..., :3] = sample.image
    arr[..., 3] = sample.inst
    arr[..., 4] = 0 if sample.type_map is None else sample.type_map
    arr[..., 5] = 1 if sample.valid is None else sample.valid
    return arr


def _prepare_dir(d: Path, overwrite: bool) -> None:
    old = list(d.glob("*.npy")) if d.is_dir() else []
    if old and not overwrite:
        raise InputError(f"{d}: already holds {len(old)} patch file(s); use --overwrite to replace them")
    if old:
        shutil.rmtree(d)
    d.mkdir(parents=True, exist_ok=True)


def _clear_stale_split(d: Path, overwrite: bool) -> None:
    """Remove the patches and manifest of a split the new run does not write.

    Otherwise an old ``valid/`` (from a run with ``--split``) would survive a
    re-extraction without it and validate on images that are now training images.
    """
    old = list(d.glob("*.npy")) if d.is_dir() else []
    manifest = d / "manifest.csv"
    if not old and not manifest.is_file():
        return
    if not overwrite:
        raise InputError(
            f"{d}: holds {len(old)} patch file(s) from an earlier run that this run would not replace; "
            "use --overwrite to remove them"
        )
    for f in old:
        f.unlink()
    manifest.unlink(missing_ok=True)
    if not any(d.iterdir()):
        d.rmdir()


def split_records(source: SourceConfig, records: list, split: bool, seed: int) -> tuple[set[str], set[str]]:
    """(train, valid) image names of one source: fixed ``valid_names`` (a region split) or by patient."""
    names = {r.name for r in records}
    if not split:
        return names, set()
    if source.valid_names:
        missing = sorted(set(source.valid_names) - names)
        if missing:
            raise InputError(f"{source.image_dir}: valid_names {missing} are not images of this dataset")
        return names - set(source.valid_names), set(source.valid_names)
    return patient_split([(r.name, r.patient) for r in records], source.valid_fraction, seed)


def dataset_splits(cfg: Config) -> list[tuple[SourceConfig, list, list]]:
    """``(source, train records, valid records)`` per source, exactly as ``extract_patches --split`` splits.

    Benchmarks and the post-processing tuner use it so that they never score on a
    training image or tune on a validation one.
    """
    out = []
    for src in cfg.data.sources():
        records = list_records(src)
        tr, va = split_records(src, records, True, cfg.data.split_seed)
        out.append((src, [r for r in records if r.name in tr], [r for r in records if r.name in va]))
    return out


def extract_patches(
    cfg: Config, output_dir: str | Path, split: bool = False, overwrite: bool = False, progress: bool = True
) -> ExtractReport:
    """Extract patches of every dataset in ``cfg.data.sources()`` to ``output_dir/{train,valid}``.

    Window, step, tiling and filters come from ``cfg.data``; resolution from ``cfg.proc_mpp``.
    Each resampled image is also written whole to ``output_dir/images/{train,valid}`` for the
    crop sampler (``data.sampling="crops"``) and image-level validation. Patches of the
    second and later sources are named ``<source>__<image>_<y>_<x>.npy``.
    """
    d = cfg.data
    out = Path(output_dir)
    plan = []  # (source, records, train names, valid names)
    for i, src in enumerate(d.sources()):
        records = list_records(src)
        tr, va = split_records(src, records, split, d.split_seed)
        plan.append((i, src, records, tr, va))
    any_valid = any(va for *_, va in plan)
    splits = ["train"] + (["valid"] if any_valid else [])
    for s in ("train", "valid"):
        if s not in splits:
            _clear_stale_split(out / s, overwrite)
            _clear_stale_split(out / "images" / s, overwrite)
    for s in splits:
        _prepare_dir(out / s, overwrite)
        _prepare_dir(out / "images" / s, overwrite)
    report = ExtractReport()
    rows: dict[str, list[dict]] = {s: [] for s in splits}
    image_rows: dict[str, list[dict]] = {s: [] for s in splits}
    win, step = d.patch_size, d.patch_step
    total = sum(len(r) for _, _, r, _, _ in plan)
    bar = tqdm(total=total, desc="extract", unit="img", disable=not progress)
    for i, src, records, train_names, valid_names in plan:
        members = {"train": train_names, "valid": valid_names}
        for s in splits:
            pats = {str(r.patient or r.name) for r in records if r.name in members[s]}
            if i > 0:
                pats = {f"{src.source_name()}:{p}" for p in pats}
            report.patients[s] = sorted(set(report.patients.get(s, [])) | pats)
        filt = PatchFilter.from_config(cfg, src)
        prefix = f"{src.source_name()}__" if i > 0 else ""
        for sample in iter_samples(cfg, records, source=src):
            bar.update(1)
            report.images += 1
            part = "valid" if sample.name in valid_names else "train"
            patient = sample.patient or ""
            img_file = f"{prefix}{sample.name}.npy"
            whole = whole_image_array(sample)
            atomic_save_npy(out / "images" / part / img_file, whole)
            image_rows[part].append({
                "file": img_file, "source": src.source_name(), "name": sample.name, "patient": patient,
                "height": whole.shape[0], "width": whole.shape[1], "mpp": cfg.proc_mpp,
                "crypt_px": int(np.count_nonzero(whole[..., 3])),
                "valid_px": int(np.count_nonzero(whole[..., 5])), "weight": src.sample_weight,
            })
            any_window = False
            for x, y, patch in sample_patches(sample, win, step, d.tiling):
                any_window = True
                valid = patch[..., 5] > 0 if patch.shape[2] == 6 else None
                why = filt.reason(patch[..., :3], patch[..., 3], valid)
                if why is not None:
                    report.dropped[why] += 1
                    continue
                fname = f"{prefix}{sample.name}_{y}_{x}.npy"
                atomic_save_npy(out / part / fname, patch)
                row = {"file": fname, "source": sample.source.name, "x": x, "y": y}
                rows[part].append({**row, "patient": patient, "size": win, "mpp": cfg.proc_mpp})
                report.kept[part] += 1
            if not any_window:
                report.skipped_images.append(sample.name)
    bar.close()
    for s in splits:
        _write_csv(out / s / "manifest.csv", rows[s], MANIFEST_COLUMNS)
        _write_csv(out / "images" / s / "manifest.csv", image_rows[s], IMAGE_MANIFEST_COLUMNS)
    settings = dict(image_dir=d.image_dir, proc_mpp=cfg.proc_mpp, image_mpp=d.image_mpp, win=win, step=step)
    settings.update(tiling=d.tiling, split=split, valid_fraction=d.valid_fraction if split else 0.0)
    settings.update(split_seed=d.split_seed, nr_types=cfg.model.nr_types)
    settings["sources"] = [
        {"name": src.source_name(), "image_dir": src.image_dir, "image_mpp": src.image_mpp,
         "valid": sorted(va)} for _, src, _, _, va in plan
    ]
    atomic_write_text(out / "extract_report.json", json.dumps({**settings, **report.to_dict()}, indent=2))
    return report


def _write_csv(path: Path, rows: list[dict], columns: tuple[str, ...]) -> None:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=columns)
    writer.writeheader()
    writer.writerows(rows)
    atomic_write_text(path, buf.getvalue())


def read_manifest(split_dir: str | Path) -> list[dict[str, str]]:
    """Rows of ``<split_dir>/manifest.csv`` (file, source, x, y, patient, size, mpp)."""
    path = Path(split_dir) / "manifest.csv"
    if not path.is_file():
        raise InputError(f"{path}: manifest not found (run extract_patches.py)")
    with path.open(newline="") as f:
        return list(csv.DictReader(f))
