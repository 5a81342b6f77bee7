"""Dataset readers: images + instance label maps + crypt types, with clear errors.

A dataset is a folder of images, each with an instance label map
``<stem><anno_suffix>.<ext>`` (PNG/TIFF) or a HoVer-Net ``.mat`` file
(``inst_map``, optional ``type_map``). Types come from one of:

- ``csv``: a per-image CSV (GlaS ``grade.csv``); every instance in an image
  gets the image's type (``type_csv_map`` maps CSV values to ids);
- ``type_map``: a per-pixel type map ``<stem><type_map_suffix>.<ext>``; an
  instance takes the majority type of its pixels;
- ``color``: a colour-coded class mask ``<stem><class_mask_suffix>.<ext>``
  using the colours of ``type_info.json``; instances are its connected
  components per class unless an instance map is present too.

Everything is checked once here so training never meets a malformed sample.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy import ndimage

from hovercrypt.config import Config, SourceConfig
from hovercrypt.data.resample import resample_pair
from hovercrypt.data.targets import compact_ids
from hovercrypt.errors import InputError
from hovercrypt.io.images import IMAGE_EXTS, read_label, read_rgb
from hovercrypt.io.labels import LABEL_IMAGE_EXTS, csv_type, mat_label, read_image_csv, read_mat, type_lookup
from hovercrypt.io.type_info import TypeInfo, load_type_info


@dataclass
class Sample:
    """One annotated image, in memory. ``type_map`` is None when types are not used."""

    name: str
    image: np.ndarray  # uint8 (H, W, 3)
    inst: np.ndarray  # int32 (H, W), 0 = background
    type_map: np.ndarray | None  # int32 (H, W), 0 = background
    patient: str | None
    source: Path
    valid: np.ndarray | None = None  # bool (H, W): pixels that hold image data; None = all


@dataclass
class ImageRecord:
    """Paths and per-image metadata of one dataset entry (nothing read yet)."""

    name: str
    image: Path
    label: Path | None  # instance map (image or .mat); None only for type_source="color"
    type_path: Path | None
    image_type: int | None  # from the CSV
    patient: str | None
    valid_path: Path | None = None  # valid-pixel mask (source.valid_suffix)


def _find_with_suffix(folder: Path, stem: str, suffix: str, exts: tuple[str, ...]) -> Path | None:
    for ext in exts:
        for e in (ext, ext.upper()):
            p = folder / f"{stem}{suffix}{e}"
            if p.is_file():
                return p
    return None


def list_records(cfg: SourceConfig) -> list[ImageRecord]:
    """Find every image of the dataset with its label/type files; raise on anything missing."""
    folder = Path(cfg.image_dir)
    if not folder.is_dir():
        raise InputError(f"{folder}: dataset folder not found (data.image_dir)")
    label_dir = Path(cfg.label_dir) if cfg.label_dir else folder
    if not label_dir.is_dir():
        raise InputError(f"{label_dir}: label folder not found (data.label_dir)")
    images = _list_images(folder, cfg)
    rows = None
    if cfg.type_csv:
        needed = (cfg.type_csv_type_column,) if cfg.type_source == "csv" else ()
        rows = read_image_csv(cfg.type_csv, cfg.type_csv_name_column, needed, "type CSV (data.type_csv)")
    records = []
    for img in images:
        label = _find_label(img, label_dir, cfg)
        type_path = _find_type_path(img, label_dir, cfg)
        if label is None and cfg.type_source != "color":  # a class mask can stand in for the labels
            ext = ".mat" if cfg.label_format == "mat" else ".png or .tif"
            want = f"{label_dir / img.stem}{cfg.anno_suffix}{ext}"
            raise InputError(f"{img}: missing annotation (expected {want})")
        image_type, patient = _csv_fields(img, rows, cfg)
        if cfg.type_source == "fixed":
            image_type = int(cfg.fixed_type)
        valid_path = _find_valid(img, label_dir, cfg)
        records.append(ImageRecord(img.stem, img, label, type_path, image_type, patient, valid_path))
    return records


def _list_images(folder: Path, cfg: SourceConfig) -> list[Path]:
    """The images of a dataset folder: files with an image extension that are not label files."""
    own = (cfg.anno_suffix, cfg.type_map_suffix, cfg.class_mask_suffix, cfg.valid_suffix)
    suffixes = [s for s in own if s]
    images = sorted(
        p
        for p in folder.iterdir()
        if p.is_file()
        and p.suffix.lower() in IMAGE_EXTS
        and not p.name.startswith(".")
        and not any(p.stem.endswith(s) for s in suffixes)
    )
    if not images:
        raise InputError(f"{folder}: no images found (extensions {IMAGE_EXTS})")
    return images


def _find_label(img: Path, label_dir: Path, cfg: SourceConfig) -> Path | None:
    """The instance map of ``img`` (``<stem><anno_suffix>``; a ``.mat`` file may also be ``<stem>.mat``)."""
    stem = img.stem
    if cfg.label_format == "mat":
        label = _find_with_suffix(label_dir, stem, cfg.anno_suffix, (".mat",))
        return label or _find_with_suffix(label_dir, stem, "", (".mat",))
    return _find_with_suffix(label_dir, stem, cfg.anno_suffix, LABEL_IMAGE_EXTS)


def _find_type_path(img: Path, label_dir: Path, cfg: SourceConfig) -> Path | None:
    """The per-pixel type map (``type_map``) or the colour-coded class mask (``color``) of ``img``."""
    stem = img.stem
    if cfg.type_source == "type_map" and cfg.label_format != "mat":  # a .mat file holds its type_map
        type_path = _find_with_suffix(label_dir, stem, cfg.type_map_suffix, LABEL_IMAGE_EXTS)
        if type_path is None:
            want = label_dir / f"{stem}{cfg.type_map_suffix}.png"
            raise InputError(f"{img}: missing type map (expected {want} or .tif)")
        return type_path
    if cfg.type_source == "color":
        type_path = _find_with_suffix(label_dir, stem, cfg.class_mask_suffix, LABEL_IMAGE_EXTS)
        if type_path is None:
            want = label_dir / (stem + cfg.class_mask_suffix)
            raise InputError(f"{img}: missing class mask {want}.png/.tif")
        return type_path
    return None


def _csv_fields(
    img: Path, rows: dict[str, dict[str, str]] | None, cfg: SourceConfig
) -> tuple[int | None, str | None]:
    """(image type, patient) of ``img`` from the per-image CSV; an image without a row is an error."""
    if rows is None:
        return None, None
    row = rows.get(img.stem)
    if row is None:
        column = cfg.type_csv_name_column
        raise InputError(f"{cfg.type_csv}: no row for image {img.name!r} (column {column!r})")
    image_type = None
    if cfg.type_source == "csv":
        value = (row.get(cfg.type_csv_type_column) or "").strip()
        image_type = csv_type(value, type_lookup(cfg.type_csv_map))
        if image_type is None:
            raise InputError(
                f"{cfg.type_csv}: image {img.stem!r} has {cfg.type_csv_type_column}={value!r}, "
                f"not in data.type_csv_map {sorted(cfg.type_csv_map)}"
            )
    patient = None
    if cfg.patient_column and cfg.patient_column in row:
        patient = (row[cfg.patient_column] or "").strip() or None
    return image_type, patient


def _find_valid(img: Path, label_dir: Path, cfg: SourceConfig) -> Path | None:
    """The valid-pixel mask of ``img`` (beside the labels or the image) when the source asks for one."""
    if not cfg.valid_suffix:
        return None
    stem = img.stem
    valid_path = _find_with_suffix(label_dir, stem, cfg.valid_suffix, LABEL_IMAGE_EXTS)
    valid_path = valid_path or _find_with_suffix(img.parent, stem, cfg.valid_suffix, LABEL_IMAGE_EXTS)
    if valid_path is None:
        raise InputError(
            f"{img}: missing valid-pixel mask {img.parent / (stem + cfg.valid_suffix)}.png "
            f"(data valid_suffix={cfg.valid_suffix!r})"
        )
    return valid_path


def majority_types(inst: np.ndarray, tmap: np.ndarray) -> np.ndarray:
    """Per-pixel type map in which every instance carries the majority type of its pixels.

    Background-typed (0) pixels inside an instance do not vote unless the
    instance has no typed pixel at all (then it stays 0 = untyped).
    """
    ids, n = compact_ids(inst)
    t = np.asarray(tmap, np.int64)
    n_t = int(t.max()) + 1 if t.size else 1
    counts = np.bincount((ids.astype(np.int64) * n_t + t).ravel(), minlength=n * n_t).reshape(n, n_t)
    counts[:, 0] = 0
    best = counts.argmax(axis=1)
    best[counts.max(axis=1) == 0] = 0
    best[0] = 0
    return best[ids].astype(np.int32)


def decode_class_mask(rgb: np.ndarray, info: TypeInfo, source: str) -> np.ndarray:
    """Colour-coded class mask -> type id map; unknown colours are an error listing them."""
    code = (rgb[..., 0].astype(np.int64) << 16) | (rgb[..., 1].astype(np.int64) << 8) | rgb[..., 2]
    lut = {(r << 16) | (g << 8) | b: i for i, (r, g, b) in enumerate(info.colors)}
    uniq, inv = np.unique(code, return_inverse=True)
    unknown = [int(u) for u in uniq if int(u) not in lut]
    if unknown:
        shown = ", ".join(f"({u >> 16}, {(u >> 8) & 255}, {u & 255})" for u in unknown[:5])
        raise InputError(
            f"{source}: {len(unknown)} colour(s) not in type_info ({shown}"
            f"{', ...' if len(unknown) > 5 else ''}); known: {list(info.colors)}"
        )
    return np.array([lut[int(u)] for u in uniq], np.int32)[inv.reshape(code.shape)]


def components_per_class(tmap: np.ndarray) -> np.ndarray:
    """Instances from a class map: 8-connected components of each class, numbered 1..k."""
    inst = np.zeros(tmap.shape, np.int32)
    nxt = 0
    for t in np.unique(tmap):
        if t == 0:
            continue
        lab, n = ndimage.label(tmap == t, structure=np.ones((3, 3), bool))
        inst[lab > 0] = lab[lab > 0] + nxt
        nxt += n
    return inst


def _check_shape(what: str, path: Path, arr: np.ndarray, image: np.ndarray, image_path: Path) -> None:
    if arr.shape[:2] != image.shape[:2]:
        raise InputError(
            f"{path}: {what} size {arr.shape[1]}x{arr.shape[0]} (WxH) does not match image "
            f"{image_path.name} size {image.shape[1]}x{image.shape[0]}"
        )


def read_record(rec: ImageRecord, cfg: SourceConfig, type_info: TypeInfo | None = None) -> Sample:
    """Read one dataset entry at its native resolution."""
    image = read_rgb(rec.image)
    tmap: np.ndarray | None = None
    inst: np.ndarray | None = None
    if rec.label is not None:
        if cfg.label_format == "mat":
            inst, mat = read_mat(rec.label)
            mat_types = mat_label(rec.label, mat, "type_map") if "type_map" in mat else None
            if cfg.type_source == "type_map":
                if mat_types is None:
                    raise InputError(f"{rec.label}: data.type_source='type_map' but the file has no type_map")
                tmap = mat_types
        else:
            inst = read_label(rec.label)
        _check_shape("label map", rec.label, inst, image, rec.image)
    if cfg.type_source == "type_map" and tmap is None:
        tmap = read_label(rec.type_path)  # type: ignore[arg-type]
    elif cfg.type_source == "color":
        if type_info is None:
            raise InputError(f"{rec.type_path}: type_source='color' needs type_info colours")
        tmap = decode_class_mask(read_rgb(rec.type_path), type_info, str(rec.type_path))  # type: ignore[arg-type]
    if tmap is not None:
        _check_shape("type map", rec.type_path or rec.label, tmap, image, rec.image)  # type: ignore[arg-type]
    if inst is None:
        inst = components_per_class(tmap)  # type: ignore[arg-type]
    if cfg.type_source in ("csv", "fixed"):
        tmap = np.where(inst > 0, rec.image_type, 0).astype(np.int32)
    elif tmap is not None:
        tmap = majority_types(inst, tmap)
    valid = None
    if rec.valid_path is not None:
        v = read_label(rec.valid_path)
        _check_shape("valid-pixel mask", rec.valid_path, v, image, rec.image)
        valid = v > 0
        if not valid.any():
            raise InputError(f"{rec.valid_path}: valid-pixel mask is empty (no pixel > 0)")
    return Sample(rec.name, image, inst, tmap, rec.patient, rec.image, valid)


def _type_info_for(cfg: Config, source: SourceConfig) -> TypeInfo | None:
    if source.type_source != "color":
        return None
    return load_type_info(cfg.type_info)


def check_types(sample: Sample, nr_types: int) -> None:
    """Type ids must fit the model's type head (``nr_types`` counts background)."""
    if sample.type_map is None or nr_types == 0:
        return
    hi = int(sample.type_map.max()) if sample.type_map.size else 0
    if hi >= nr_types:
        raise InputError(
            f"{sample.source}: type id {hi} found but model.nr_types={nr_types} (ids 0..{nr_types - 1})"
        )


def iter_samples(
    cfg: Config,
    records: list[ImageRecord] | None = None,
    proc_mpp: float | None = None,
    source: SourceConfig | None = None,
) -> Iterator[Sample]:
    """Read one dataset (default: the first source), resampled from its ``image_mpp`` to ``proc_mpp``."""
    src = cfg.data if source is None else source
    records = list_records(src) if records is None else records
    info = _type_info_for(cfg, src)
    dst = cfg.proc_mpp if proc_mpp is None else proc_mpp
    use_types = src.type_source != "none" and cfg.model.nr_types > 0
    for rec in records:
        s = read_record(rec, src, info)
        if not use_types:
            s.type_map = None
        check_types(s, cfg.model.nr_types)
        valid = None if s.valid is None else s.valid.astype(np.int32)
        s.image, (s.inst, s.type_map, valid) = resample_pair(
            s.image, [s.inst, s.type_map, valid], src.image_mpp, dst
        )
        s.valid = None if valid is None else valid > 0
        yield s
