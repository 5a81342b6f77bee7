"""Dataset readers (all type sources, .mat), resampling, and one test per bad-input error."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import scipy.io
import tifffile
from PIL import Image

from hovercrypt.config import Config, DataConfig, ModelConfig
from hovercrypt.data.readers import iter_samples, list_records, majority_types
from hovercrypt.data.resample import resize_image, resize_labels, scale_shape
from hovercrypt.errors import InputError
from hovercrypt.io.type_info import TypeInfo
from hovercrypt.testing.synthetic import random_ellipses, render_he

INFO = TypeInfo(("background", "benign", "malignant"), ((0, 0, 0), (0, 200, 0), (230, 0, 0)))


def make_dataset(root: Path, n: int = 2, shape=(64, 80), csv_rows: bool = True) -> list[np.ndarray]:
    root.mkdir(parents=True, exist_ok=True)
    insts = []
    rows = [("name", "patient_id", "grade_glas")]
    for i in range(n):
        inst = random_ellipses(shape, 5, radius_range=(5, 14), seed=i, min_gap=2)
        inst = np.where(inst > 0, inst * 10 + 3, 0).astype(np.uint16)  # sparse, non-consecutive ids
        Image.fromarray(render_he(inst, seed=i)).save(root / f"img_{i}.png")
        Image.fromarray(inst).save(root / f"img_{i}_anno.png")
        rows.append((f"img_{i}", f"p{i % 2}", "malignant" if i % 2 else "benign"))
        insts.append(inst.astype(np.int32))
    if csv_rows:
        with (root / "grade.csv").open("w", newline="") as f:
            csv.writer(f).writerows(rows)
    return insts


def cfg_for(root: Path, proc_mpp: float = 0.5, **data) -> Config:
    base = dict(image_dir=str(root), image_mpp=0.5)
    if data.get("type_source") == "csv":
        base.update(type_csv=str(root / "grade.csv"), type_csv_map={"benign": 1, "malignant": 2})
    base.update(data)
    return Config(proc_mpp=proc_mpp, model=ModelConfig(nr_types=3), data=DataConfig(**base))


def test_csv_types_patients_and_sparse_ids(tmp_path):
    insts = make_dataset(tmp_path)
    samples = list(iter_samples(cfg_for(tmp_path, type_source="csv")))
    assert [s.name for s in samples] == ["img_0", "img_1"]
    for s, inst in zip(samples, insts):
        assert s.image.dtype == np.uint8 and s.image.shape == inst.shape + (3,)
        assert np.array_equal(s.inst, inst)
        want = 2 if s.name == "img_1" else 1
        assert np.array_equal(s.type_map, np.where(inst > 0, want, 0))
    assert [s.patient for s in samples] == ["p0", "p1"]


def test_resampling_keeps_ids_and_halves_shape(tmp_path):
    insts = make_dataset(tmp_path, n=1, shape=(64, 80))
    (s,) = iter_samples(cfg_for(tmp_path, proc_mpp=1.0))
    assert s.image.shape == (32, 40, 3) and s.inst.shape == (32, 40)
    assert set(np.unique(s.inst)) == set(np.unique(insts[0]))  # no new ids, none lost (large ellipses)


def test_type_map_majority(tmp_path):
    insts = make_dataset(tmp_path, n=1, csv_rows=False)
    inst = insts[0]
    tmap = np.where(inst > 0, 1, 0).astype(np.uint8)
    first = np.unique(inst)[1]
    ys, xs = np.nonzero(inst == first)
    tmap[ys[: len(ys) // 3], xs[: len(xs) // 3]] = 2  # a minority of type-2 pixels: instance stays 1
    second = np.unique(inst)[2]
    tmap[inst == second] = 2
    Image.fromarray(tmap).save(tmp_path / "img_0_type.png")
    (s,) = iter_samples(cfg_for(tmp_path, type_source="type_map"))
    assert np.all(s.type_map[inst == first] == 1) and np.all(s.type_map[inst == second] == 2)
    assert np.all(s.type_map[inst == 0] == 0)


def test_majority_types_ignores_untyped_pixels():
    inst = np.array([[1, 1, 1, 0], [1, 1, 2, 2]])
    tmap = np.array([[0, 0, 0, 0], [2, 0, 0, 0]])
    assert majority_types(inst, tmap).tolist() == [[2, 2, 2, 0], [2, 2, 0, 0]]


def test_colour_class_mask_components(tmp_path):
    make_dataset(tmp_path, n=1, csv_rows=False)
    (tmp_path / "img_0_anno.png").unlink()  # instances come from the class mask alone
    tmap = np.zeros((64, 80), np.int32)
    tmap[5:20, 5:20] = 1
    tmap[5:20, 30:40] = 1  # second benign component
    tmap[40:60, 10:30] = 2
    tmap[40:60, 30:50] = 1  # touches the malignant one but is another class -> another instance
    rgb = np.array(INFO.colors, np.uint8)[tmap]
    Image.fromarray(rgb).save(tmp_path / "img_0_class.png")
    info_path = tmp_path / "types.json"
    info_path.write_text(json.dumps(INFO.to_json_dict()))
    cfg = cfg_for(tmp_path, type_source="color")
    cfg.type_info = str(info_path)
    (s,) = iter_samples(cfg)
    assert len(np.unique(s.inst)) - 1 == 4
    assert np.array_equal(s.type_map, tmap)


def test_mat_labels(tmp_path):
    insts = make_dataset(tmp_path, n=1, csv_rows=False)
    (tmp_path / "img_0_anno.png").unlink()
    tmap = np.where(insts[0] > 0, 2, 0)
    scipy.io.savemat(tmp_path / "img_0.mat", {"inst_map": insts[0].astype(np.int32), "type_map": tmap})
    (s,) = iter_samples(cfg_for(tmp_path, label_format="mat", type_source="type_map"))
    assert np.array_equal(s.inst, insts[0]) and np.array_equal(s.type_map, tmap)


def test_tiff_labels_and_label_dir(tmp_path):
    insts = make_dataset(tmp_path / "img", n=1, csv_rows=False)
    (tmp_path / "img" / "img_0_anno.png").unlink()
    (tmp_path / "lab").mkdir()
    tifffile.imwrite(tmp_path / "lab" / "img_0_anno.tif", insts[0].astype(np.uint32))
    (s,) = iter_samples(cfg_for(tmp_path / "img", label_dir=str(tmp_path / "lab")))
    assert np.array_equal(s.inst, insts[0])


# ---- resampling -------------------------------------------------------------------------------------


def test_resample_functions():
    assert scale_shape((261, 388), 0.465, 0.93) == (130, 194)
    assert scale_shape((100, 50), 1.0, 0.5) == (200, 100)
    lbl = random_ellipses((101, 77), 10, radius_range=(3, 12), seed=4)
    for hw in ((50, 38), (203, 155), (101, 77)):
        out = resize_labels(lbl, hw)
        assert out.shape == hw and out.dtype == lbl.dtype
        assert set(np.unique(out)) <= set(np.unique(lbl))
    big = resize_labels(lbl, (202, 154))
    assert set(np.unique(big)) == set(np.unique(lbl)) and np.array_equal(big[::2, ::2], lbl)
    img = np.random.default_rng(0).integers(0, 256, (40, 60, 3), dtype=np.uint8)
    small = resize_image(img, (20, 30))
    assert small.dtype == np.uint8 and small.shape == (20, 30, 3)
    assert abs(int(small[0, 0, 0]) - img[:2, :2, 0].mean()) <= 1  # INTER_AREA = 2x2 mean
    maps = np.random.default_rng(0).random((40, 60, 6), dtype=np.float32)
    assert resize_image(maps, (80, 120)).shape == (80, 120, 6)


# ---- bad input: one test each --------------------------------------------------------------------------


def test_error_size_mismatch(tmp_path):
    make_dataset(tmp_path, n=1, csv_rows=False)
    Image.fromarray(np.zeros((10, 10), np.uint8)).save(tmp_path / "img_0_anno.png")
    with pytest.raises(InputError, match=r"img_0_anno\.png.*does not match"):
        list(iter_samples(cfg_for(tmp_path)))


def test_error_missing_annotation(tmp_path):
    make_dataset(tmp_path, n=2, csv_rows=False)
    (tmp_path / "img_1_anno.png").unlink()
    with pytest.raises(InputError, match=r"img_1\.png: missing annotation"):
        list_records(cfg_for(tmp_path).data)


def test_error_non_integer_label(tmp_path):
    make_dataset(tmp_path, n=1, csv_rows=False)
    (tmp_path / "img_0_anno.png").unlink()
    tifffile.imwrite(tmp_path / "img_0_anno.tif", np.full((64, 80), 0.5, np.float32))
    with pytest.raises(InputError, match=r"img_0_anno\.tif: label map is not integer"):
        list(iter_samples(cfg_for(tmp_path)))


def test_error_missing_csv_row(tmp_path):
    make_dataset(tmp_path, n=2)
    Image.fromarray(render_he(np.zeros((64, 80), np.int32))).save(tmp_path / "img_9.png")
    Image.fromarray(np.zeros((64, 80), np.uint8)).save(tmp_path / "img_9_anno.png")
    with pytest.raises(InputError, match=r"grade\.csv: no row for image 'img_9\.png'"):
        list_records(cfg_for(tmp_path, type_source="csv").data)


def test_error_unknown_csv_type(tmp_path):
    make_dataset(tmp_path, n=2)
    cfg = cfg_for(tmp_path, type_source="csv")
    cfg.data.type_csv_map = {"benign": 1}
    with pytest.raises(InputError, match=r"grade_glas='malignant', not in data.type_csv_map"):
        list_records(cfg.data)


def test_error_bad_colours(tmp_path):
    make_dataset(tmp_path, n=1, csv_rows=False)
    rgb = np.zeros((64, 80, 3), np.uint8)
    rgb[10:20, 10:20] = (1, 2, 3)
    Image.fromarray(rgb).save(tmp_path / "img_0_class.png")
    cfg = cfg_for(tmp_path, type_source="color")
    cfg.type_info = str(Path(__file__).resolve().parents[1] / "hovercrypt" / "type_info.json")
    with pytest.raises(InputError, match=r"img_0_class\.png: 1 colour\(s\) not in type_info \(\(1, 2, 3\)"):
        list(iter_samples(cfg))


def test_error_mat_without_inst_map(tmp_path):
    make_dataset(tmp_path, n=1, csv_rows=False)
    scipy.io.savemat(tmp_path / "img_0.mat", {"labels": np.zeros((64, 80), np.int32)})
    with pytest.raises(InputError, match=r"img_0\.mat: no 'inst_map'"):
        list(iter_samples(cfg_for(tmp_path, label_format="mat")))


def test_error_type_id_exceeds_nr_types(tmp_path):
    make_dataset(tmp_path, n=1, csv_rows=False)
    inst = np.array(Image.open(tmp_path / "img_0_anno.png"))
    Image.fromarray(np.where(inst > 0, 5, 0).astype(np.uint8)).save(tmp_path / "img_0_type.png")
    with pytest.raises(InputError, match=r"img_0\.png: type id 5 .*nr_types=3"):
        list(iter_samples(cfg_for(tmp_path, type_source="type_map")))


def test_error_missing_folder(tmp_path):
    with pytest.raises(InputError, match="dataset folder not found"):
        list_records(DataConfig(image_dir=str(tmp_path / "nope")))
