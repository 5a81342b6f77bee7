"""Patch extraction: tiling, mirrored ids, filters, split; GlaS round trip through the DataLoader."""

from __future__ import annotations

import csv
import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from scipy import ndimage
from torch.utils.data import DataLoader

from hovercrypt.config import DataConfig
from hovercrypt.data.dataset import PatchDataset
from hovercrypt.data.patches import PatchFilter, mirror_pad, read_manifest, window_starts
from hovercrypt.data.resample import resize_image, resize_labels, scale_shape
from hovercrypt.data.split import patient_split
from hovercrypt.errors import InputError
from hovercrypt.io.images import read_label, read_rgb
from hovercrypt.presets import glas_config

_script = Path(__file__).parents[1] / "extract_patches.py"
_spec = importlib.util.spec_from_file_location("extract_patches", _script)
extract_patches = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(extract_patches)

GLAS_FEW = ["train_1", "train_12", "train_20"]  # three patients, benign and malignant


@pytest.fixture(scope="module")
def glas_few(glas_dir, tmp_path_factory):
    """A folder with links to a few GlaS images (the data is never copied)."""
    d = tmp_path_factory.mktemp("glas_few")
    for stem in GLAS_FEW:
        for suffix in ("", "_anno"):
            (d / f"{stem}{suffix}.png").symlink_to(glas_dir / f"{stem}{suffix}.png")
    (d / "grade.csv").symlink_to(glas_dir / "grade.csv")
    return d


def test_window_starts_cover_the_image():
    starts, before, after = window_starts(261, 540, 164, "mirror")
    assert before == 188 and starts == [-188, -24]
    # the central step x step parts of the windows tile rows 0..ny*step: every image row is covered
    assert starts[0] + before == 0 and starts[-1] + before + 164 >= 261 and starts[-1] + 540 <= 261 + after
    assert window_starts(775, 540, 164, "valid") == ([0, 164, 235], 0, 0)
    assert window_starts(300, 540, 164, "valid") == ([], 0, 0)


def test_mirror_pad_gives_mirrored_glands_new_ids():
    inst = np.zeros((20, 30), np.int32)
    inst[2:8, 0:6] = 1  # touches the left border: its left reflection is the same visible blob
    inst[10:15, 10:20] = 2
    inst[0:4, 24:30] = 3  # touches the top-right corner: four copies form one blob
    img = np.zeros((20, 30, 3), np.uint8)
    pimg, plab, _ = mirror_pad(img, inst, None, (25, 25, 25, 25))
    assert plab.shape == (70, 80) and pimg.shape == (70, 80, 3)
    assert np.array_equal(pimg, np.pad(img, ((25, 25), (25, 25), (0, 0)), mode="reflect"))
    assert np.array_equal(plab[25:45, 25:55], inst)  # the original keeps its ids
    assert np.all(plab[27:33, 20:25] == 1)  # merged with its left reflection
    assert np.all(plab[22:29, 49:60] == 3)  # corner blob: original + reflections share id 3
    # reference: each connected blob of one source gland in the padded map is exactly one instance
    src = np.pad(inst, 25, mode="reflect")
    blobs = 0
    for k in (1, 2, 3):
        comp, n = ndimage.label(src == k)
        blobs += n
        for c in range(1, n + 1):
            assert len(np.unique(plab[comp == c])) == 1
    assert len(np.unique(plab)) - 1 == blobs
    outer = plab.copy()
    outer[25:45, 25:55] = 0
    assert 2 not in set(np.unique(outer))  # copies of an interior gland are all new ids


def test_patch_filter_reasons():
    f = PatchFilter(DataConfig(max_blank_fraction=0.5, min_annotated_fraction=0.1))
    rgb = np.full((10, 10, 3), 128, np.uint8)
    inst = np.zeros((10, 10), np.int32)
    assert f.reason(rgb, inst) == "unannotated"
    inst[:2, :2] = 1
    assert f.reason(rgb, inst) == "little_annotation"
    inst[:5] = 1
    assert f.reason(rgb, inst) is None
    rgb[:6] = 250  # white glass
    assert f.reason(rgb, inst) == "blank"
    rgb[:6] = 5  # black stripe
    assert f.reason(rgb, inst) == "blank"


def test_patient_split_is_disjoint_and_deterministic():
    images = [(f"im{i}", f"p{i % 7}") for i in range(40)] + [("lone", None)]
    tr, va = patient_split(images, 0.25, seed=1)
    assert tr | va == {n for n, _ in images} and not tr & va
    pat = dict(images)
    assert not {pat[n] for n in tr} & {pat[n] for n in va}
    assert 0.15 <= len(va) / len(images) <= 0.35
    assert patient_split(list(reversed(images)), 0.25, seed=1) == (tr, va)
    with pytest.raises(InputError, match="one patient"):
        patient_split([("a", "p"), ("b", "p")], 0.2)


def test_glas_valid_tiling_round_trip(glas_few, tmp_path):
    """Native resolution, valid tiling: each patch equals its source crop exactly, gland for gland."""
    out = tmp_path / "valid_tiles"
    rc = extract_patches.main(
        ["--config=glas", f"--input_dir={glas_few}", f"--output_dir={out}", "--win=300", "--step=236",
         "--tiling=valid", "--proc_mpp=0.465", "--quiet"]
    )
    assert rc == 0
    rows = read_manifest(out / "train")
    assert len(rows) == len(list((out / "train").glob("*.npy"))) > 0
    grades = {r["name"]: r for r in csv.DictReader((glas_few / "grade.csv").open())}
    compared = 0
    for row in rows:
        patch = np.load(out / "train" / row["file"])
        assert patch.dtype == np.int32 and patch.shape == (300, 300, 5)
        stem = row["source"][:-4]
        x, y = int(row["x"]), int(row["y"])
        assert row["patient"] == grades[stem]["patient_id"]
        crop = read_label(glas_few / f"{stem}_anno.png")[y : y + 300, x : x + 300]
        assert np.array_equal(patch[..., :3], read_rgb(glas_few / row["source"])[y : y + 300, x : x + 300])
        assert np.array_equal(patch[..., 3], crop)
        assert len(np.unique(patch[..., 3])) == len(np.unique(crop))  # glands preserved
        want_type = {"benign": 1, "malignant": 2}[grades[stem]["grade_glas"]]
        assert np.array_equal(patch[..., 4], np.where(crop > 0, want_type, 0))
        compared += 1
    report = json.loads((out / "extract_report.json").read_text())
    assert sum(report["kept"].values()) == compared
    windows = 0
    for stem in GLAS_FEW:
        h, w = read_label(glas_few / f"{stem}_anno.png").shape
        windows += len(window_starts(h, 300, 236, "valid")[0]) * len(window_starts(w, 300, 236, "valid")[0])
    assert sum(report["kept"].values()) + sum(report["dropped"].values()) == windows


def test_glas_mirror_split_and_dataloader(glas_few, tmp_path):
    """0.93 um/px, mirror tiling, patient split; load a batch; the inner part equals the resampled source."""
    out = tmp_path / "mirror"
    rc = extract_patches.main(
        ["--config=glas", f"--input_dir={glas_few}", f"--output_dir={out}", "--split", "--quiet"]
    )
    assert rc == 0
    report = json.loads((out / "extract_report.json").read_text())
    assert set(report["kept"]) == {"train", "valid"}
    assert not set(report["patients"]["train"]) & set(report["patients"]["valid"])
    cfg = glas_config(glas_few)
    for split in ("train", "valid"):
        for row in read_manifest(out / split):
            patch = np.load(out / split / row["file"])
            stem = row["source"][:-4]
            src = read_label(glas_few / f"{stem}_anno.png")
            hw = scale_shape(src.shape, 0.465, 0.93)
            lab = resize_labels(src, hw)
            img = resize_image(read_rgb(glas_few / row["source"]), hw)
            x, y = int(row["x"]), int(row["y"])
            # the part of the patch inside the image
            y0, x0 = max(0, -y), max(0, -x)
            y1, x1 = min(540, hw[0] - y), min(540, hw[1] - x)
            inner = patch[y0:y1, x0:x1]
            crop = lab[y + y0 : y + y1, x + x0 : x + x1]
            assert np.array_equal(inner[..., 3], crop)
            assert np.array_equal(inner[..., :3], img[y + y0 : y + y1, x + x0 : x + x1])
            assert len(np.unique(inner[..., 3])) == len(np.unique(crop))  # glands preserved
            # mirrored glands outside the image carry new ids, unless they continue a gland
            # that touches the image border (then it is the same visible blob)
            outside = np.ones((540, 540), bool)
            outside[y0:y1, x0:x1] = False
            out_ids = set(np.unique(patch[..., 3][outside])) - {0}
            on_border = set(np.unique(np.concatenate([lab[0], lab[-1], lab[:, 0], lab[:, -1]])))
            assert out_ids & set(np.unique(lab)) <= on_border
    ds = PatchDataset.from_dir(out / "train", cfg, train=True)
    batch = next(iter(DataLoader(ds, batch_size=2, shuffle=False)))
    inp, outp = cfg.windows.input, cfg.windows.output
    assert batch["image"].shape == (2, 3, inp, inp) and batch["image"].dtype == torch.float32
    assert batch["hv"].shape == (2, 2, outp, outp) and batch["np"].dtype == torch.int64
    assert batch["tp"].shape == (2, outp, outp) and int(batch["tp"].max()) <= 2
    assert batch["inst"].dtype == torch.int32


def test_cli_errors(tmp_path):
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(tmp_path / "a.png")
    out = tmp_path / "o"
    rc = extract_patches.main(["--config=default", f"--input_dir={tmp_path}", f"--output_dir={out}"])
    assert rc == 2  # missing annotation -> clear error, not a traceback
    rc = extract_patches.main(["--config=default", "--tiling=diagonal", f"--input_dir={tmp_path}"])
    assert rc == 2


def _tiny_dataset(root: Path, n: int = 4) -> Path:
    """``n`` 280x280 images, each with one annotated square, so every valid-tiling window is kept."""
    root.mkdir()
    rng = np.random.default_rng(0)
    for i in range(n):
        Image.fromarray(rng.integers(60, 200, (280, 280, 3), dtype=np.uint8)).save(root / f"im{i}.png")
        anno = np.zeros((280, 280), np.uint8)
        anno[100:180, 100:180] = 1
        Image.fromarray(anno).save(root / f"im{i}_anno.png")
    return root


def test_overwrite_without_split_removes_old_valid(tmp_path):
    """Re-extracting without --split must not leave the old valid/ (its images are now training images)."""
    src = _tiny_dataset(tmp_path / "src")
    out = tmp_path / "out"
    opts = ["--config=default", f"--input_dir={src}", f"--output_dir={out}", "--win=270", "--step=270",
            "--tiling=valid", "--proc_mpp=0.5", "--image_mpp=0.5", "--quiet"]
    assert extract_patches.main([*opts, "--split", "--valid_fraction=0.5"]) == 0
    assert read_manifest(out / "valid") and list((out / "valid").glob("*.npy"))
    # without --overwrite the old patches are refused, not silently mixed
    assert extract_patches.main(opts) == 2
    assert extract_patches.main([*opts, "--overwrite"]) == 0
    assert not list((out / "valid").glob("*.npy")) and not (out / "valid" / "manifest.csv").exists()
    sources = {r["source"] for r in read_manifest(out / "train")}
    assert sources == {f"im{i}.png" for i in range(4)}
    per_image = len(window_starts(280, 270, 270, "valid")[0]) ** 2
    assert len(list((out / "train").glob("*.npy"))) == 4 * per_image


def test_default_config_is_next_to_the_script(tmp_path, monkeypatch):
    """Without --config, config.py beside extract_patches.py is used, whatever the current folder."""
    (tmp_path / "config.py").write_text("raise RuntimeError('the config in the current folder was used')\n")
    monkeypatch.chdir(tmp_path)
    args = {opt: None for opt in extract_patches.OVERRIDES} | {"--config": None, "--keep_unannotated": False}
    cfg = extract_patches.build_config(args)
    assert extract_patches.DEFAULT_CONFIG == _script.with_name("config.py")
    assert cfg == extract_patches.load_config(_script.with_name("config.py"))
