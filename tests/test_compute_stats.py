"""compute_stats.py end to end on tiny folders: GlaS layout, .mat/.npy/PNG inputs, CSV + JSON outputs."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import scipy.io
from PIL import Image

from hovercrypt.metrics import evaluate_pair

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
import compute_stats  # noqa: E402


def _blocks(shape, *rects):
    out = np.zeros(shape, np.int32)
    for k, (y0, y1, x0, x1) in enumerate(rects):
        out[y0:y1, x0:x1] = k + 1
    return out


@pytest.fixture
def folders(tmp_path):
    """GlaS-style truth (images beside <name>_anno.png, grade.csv) and predictions as .mat / .npy / .png."""
    true_dir, pred_dir = tmp_path / "true", tmp_path / "pred"
    true_dir.mkdir()
    pred_dir.mkdir()
    truths = {
        "testA_1": _blocks((20, 30), (0, 8, 0, 8), (10, 18, 10, 20)),
        "testB_2": _blocks((20, 30), (2, 10, 2, 12)),
        "train_3": _blocks((20, 30), (5, 15, 5, 15), (0, 4, 25, 30)),
    }
    for name, t in truths.items():
        Image.fromarray(t.astype(np.uint8)).save(true_dir / f"{name}_anno.png")
        Image.fromarray(np.full((20, 30, 3), 200, np.uint8)).save(true_dir / f"{name}.png")  # ignored
    (true_dir / "grade.csv").write_text(
        "name,grade_glas\ntestA_1,benign\ntestB_2,malignant\ntrain_3,benign\n"
    )
    # testA_1: perfect, ids renumbered; types right (benign = 1)
    pa = truths["testA_1"] * 5
    scipy.io.savemat(
        pred_dir / "testA_1.mat",
        {
            "inst_map": pa.astype(np.int32),
            "inst_type": np.array([[1], [1]]),
            "inst_centroid": np.array([[3.5, 3.5], [14.5, 13.5]]),
        },
    )
    # testB_2: object shifted by 2 px; type wrong (1 instead of malignant = 2); stored as (H, W, 2) npy
    pb = np.roll(truths["testB_2"], 2, axis=1)
    np.save(pred_dir / "testB_2.npy", np.stack([pb, np.where(pb > 0, 1, 0)], axis=-1))
    # train_3: second object missed; PNG instance map + <stem>_type.png type map
    pc = truths["train_3"].copy()
    pc[pc == 2] = 0
    Image.fromarray(pc.astype(np.uint8)).save(pred_dir / "train_3.png")
    Image.fromarray((pc > 0).astype(np.uint8)).save(pred_dir / "train_3_type.png")
    preds = {"testA_1": pa, "testB_2": pb, "train_3": pc}
    return true_dir, pred_dir, truths, preds


def _read_csv(path):
    with open(path, newline="") as f:
        return {r["name"]: r for r in csv.DictReader(f)}


def test_instance_mode_writes_csv_and_json(folders, tmp_path, capsys):
    true_dir, pred_dir, truths, preds = folders
    out = tmp_path / "stats"
    rc = compute_stats.main(
        [f"--pred_dir={pred_dir}", f"--true_dir={true_dir}", f"--out={out}", "--mpp=0.5", "--quiet"]
    )
    assert rc == 0
    printed = capsys.readouterr().out
    assert "pooled" in printed and "per_image.csv" in printed
    rows = _read_csv(out / "per_image.csv")
    assert sorted(rows) == ["testA_1", "testB_2", "train_3"]
    for name in rows:
        want = evaluate_pair(truths[name], preds[name], mpp=0.5)
        for k in ("dice", "aji", "aji_plus", "pq", "obj_f1", "obj_dice", "obj_hausdorff"):
            assert float(rows[name][k]) == pytest.approx(want[k], rel=1e-5), (name, k)
    assert rows["testA_1"]["subset"] == "testA" and rows["train_3"]["subset"] == ""
    assert float(rows["testA_1"]["pq"]) == 1.0
    assert float(rows["testB_2"]["obj_hausdorff"]) == pytest.approx(2.0)  # shift of 2 px
    summary = json.loads((out / "summary.json").read_text())
    assert summary["all"]["n_images"] == 3
    assert set(summary["subsets"]) == {"testA", "testB"}
    assert summary["subsets"]["testA"]["n_images"] == 1
    assert summary["subsets"]["testA"]["pooled"]["pq"] == 1.0
    # train_3 misses 1 of 2 objects; the others find theirs (testB's 2 px shift keeps IoU 64/96 > 0.5)
    assert summary["all"]["counts"] == {
        "n_true": 5,
        "n_pred": 4,
        "pq_tp": 4,
        "pq_fp": 0,
        "pq_fn": 1,
        "obj_tp": 4,
        "obj_fp": 0,
        "obj_fn": 1,
    }
    mean_pq = np.mean([evaluate_pair(truths[n], preds[n])["pq"] for n in truths])
    assert summary["all"]["mean"]["pq"] == pytest.approx(mean_pq)


def test_type_mode_with_grade_csv(folders, tmp_path):
    true_dir, pred_dir, _, _ = folders
    out = tmp_path / "stats_type"
    rc = compute_stats.main(
        [
            f"--pred_dir={pred_dir}",
            f"--true_dir={true_dir}",
            f"--out={out}",
            "--mode=type",
            f"--true_types_csv={true_dir / 'grade.csv'}",
            "--radius_um=2",
            "--mpp=0.5",
            "--quiet",
        ]
    )
    assert rc == 0
    rows = _read_csv(out / "per_image.csv")
    # testA_1: both benign (1) objects found with the right type
    assert float(rows["testA_1"]["type_accuracy"]) == 1.0
    # testB_2: found (centroid shift 2 px <= 4 px radius) but typed 1 instead of malignant (2)
    assert float(rows["testB_2"]["f1_detection"]) == 1.0 and float(rows["testB_2"]["type_accuracy"]) == 0.0
    summary = json.loads((out / "summary.json").read_text())
    pooled = summary["all"]["pooled"]
    # pooled pairs: 2 + 1 + 1 = 4 of 5 true, no false detections -> F1_d = 8/9; 3 of 4 pairs typed right
    assert pooled["f1_detection"] == pytest.approx(8 / 9)
    assert pooled["type_accuracy"] == pytest.approx(3 / 4)
    # type 2 (malignant): one true object, never predicted as 2 -> F1 0
    assert pooled["f1_type2"] == 0.0


def test_mismatched_files_are_listed(folders, tmp_path, capsys):
    true_dir, pred_dir, _, _ = folders
    np.save(pred_dir / "extra_9.npy", np.zeros((20, 30), np.int32))
    (true_dir / "testB_2_anno.png").unlink()
    rc = compute_stats.main([f"--pred_dir={pred_dir}", f"--true_dir={true_dir}", f"--out={tmp_path / 'x'}"])
    assert rc == 2
    err = capsys.readouterr().err
    assert "extra_9.npy" in err and "testB_2.npy" in err and "only in pred_dir" in err
    assert not (tmp_path / "x").exists()


def test_type_mode_without_types_is_a_clear_error(folders, tmp_path, capsys):
    true_dir, pred_dir, _, _ = folders
    rc = compute_stats.main(
        [f"--pred_dir={pred_dir}", f"--true_dir={true_dir}", f"--out={tmp_path / 'y'}", "--mode=type"]
    )
    assert rc == 2
    assert "needs ground-truth types" in capsys.readouterr().err


def test_cli_subprocess_reads_run_infer_layout(folders, tmp_path):
    # run_infer.py writes <out>/mat/<stem>.mat; passing <out> must find them
    true_dir, _, truths, _ = folders
    infer_out = tmp_path / "infer_out"
    (infer_out / "mat").mkdir(parents=True)
    for name, t in truths.items():
        scipy.io.savemat(
            infer_out / "mat" / f"{name}.mat", {"inst_map": t, "inst_type": np.ones((t.max(), 1))}
        )
    out = tmp_path / "stats_sub"
    res = subprocess.run(
        [
            sys.executable,
            str(REPO / "compute_stats.py"),
            f"--pred_dir={infer_out}",
            f"--true_dir={true_dir}",
            f"--out={out}",
            "--quiet",
        ],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
    )
    assert res.returncode == 0, res.stderr
    summary = json.loads((out / "summary.json").read_text())
    assert summary["all"]["pooled"]["pq"] == 1.0 and summary["all"]["pooled"]["obj_hausdorff"] == 0.0
    assert len(_read_csv(out / "per_image.csv")) == 3


def test_reads_mat_written_by_the_exporter(tmp_path):
    # interface check with hovercrypt.io.export.write_mat (run_infer.py's .mat): ids 3 and 9, types 2 and 1
    export = pytest.importorskip("hovercrypt.io.export")
    from hovercrypt.metrics.labels_io import read_label_file

    inst = _blocks((10, 12), (0, 4, 0, 4), (5, 9, 6, 12))
    inst = np.where(inst == 1, 3, np.where(inst == 2, 9, 0)).astype(np.int32)
    info = {3: {"centroid": [1.5, 1.5], "type": 2}, 9: {"centroid": [8.5, 6.5], "type": 1}}
    export.write_mat(tmp_path / "a.mat", inst, info)
    lf = read_label_file(tmp_path / "a.mat")
    np.testing.assert_array_equal(lf.inst, inst)
    assert lf.types == {3: 2, 9: 1}


def test_bmp_glas_layout_shape_mismatch_and_unwritable_out(tmp_path, capsys):
    """The original GlaS release stores .bmp; a size mismatch names both files; an output path
    that cannot be a folder is a one-line error, not a traceback."""
    true_dir, pred_dir = tmp_path / "true", tmp_path / "pred"
    true_dir.mkdir()
    pred_dir.mkdir()
    t = _blocks((20, 30), (0, 8, 0, 8), (10, 18, 10, 20))
    Image.fromarray(t.astype(np.uint8)).save(true_dir / "testA_1_anno.bmp")
    Image.fromarray(np.full((20, 30, 3), 200, np.uint8)).save(true_dir / "testA_1.bmp")  # the image: ignored
    np.save(pred_dir / "testA_1.npy", t * 3)
    out = tmp_path / "out"
    assert compute_stats.main([f"--pred_dir={pred_dir}", f"--true_dir={true_dir}", f"--out={out}"]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["all"]["pooled"]["obj_f1"] == 1.0 and summary["all"]["pooled"]["pq"] == 1.0
    (tmp_path / "afile").write_text("x")
    bad = tmp_path / "afile" / "o"
    rc = compute_stats.main([f"--pred_dir={pred_dir}", f"--true_dir={true_dir}", f"--out={bad}"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and err[-1].startswith(f"error: {bad}: cannot write the outputs there")
    np.save(pred_dir / "testA_1.npy", np.zeros((21, 30), np.int32))
    rc = compute_stats.main([f"--pred_dir={pred_dir}", f"--true_dir={true_dir}", f"--out={tmp_path / 'o2'}"])
    err = capsys.readouterr().err
    assert rc == 2 and str(pred_dir / "testA_1.npy") in err and str(true_dir / "testA_1_anno.bmp") in err


def test_bad_inputs_give_clear_errors(tmp_path, capsys):
    from hovercrypt.errors import InputError
    from hovercrypt.metrics.labels_io import read_label_file, read_types_csv

    scipy.io.savemat(tmp_path / "b.mat", {"label": np.zeros((3, 3))})
    with pytest.raises(InputError, match=r"b\.mat: no 'inst_map'.*label"):
        read_label_file(tmp_path / "b.mat")
    scipy.io.savemat(tmp_path / "c.mat", {"inst_map": _blocks((4, 4), (0, 2, 0, 2)), "inst_type": [1, 2]})
    with pytest.raises(InputError, match="inst_type has 2 entries but inst_map has 1"):
        read_label_file(tmp_path / "c.mat")
    (tmp_path / "g.csv").write_text("name,grade_glas\na,benign\nb,adenoma\n")
    # explicit mapping; an unmapped value is named
    with pytest.raises(InputError, match="adenoma"):
        read_types_csv(tmp_path / "g.csv", values={"benign": 1})
    assert read_types_csv(tmp_path / "g.csv", values={"Benign": 1, "adenoma": 2}) == {"a": 1, "b": 2}
    rc = compute_stats.main([f"--pred_dir={tmp_path}", f"--true_dir={tmp_path}", "--type_values=benign=1"])
    assert rc == 2 and "--type_values" in capsys.readouterr().err


def _one_image_folders(tmp_path, grade_rows, pred_type):
    """One true and one predicted crypt (same shape); the truth's type comes from a CSV."""
    true_dir, pred_dir = tmp_path / "t", tmp_path / "p"
    true_dir.mkdir(parents=True)
    pred_dir.mkdir()
    inst = _blocks((16, 16), (2, 10, 2, 10))
    Image.fromarray(inst.astype(np.uint8)).save(true_dir / "img_anno.png")
    scipy.io.savemat(pred_dir / "img.mat", {"inst_map": inst, "inst_type": np.array([[pred_type]])})
    csv_path = tmp_path / "grade.csv"
    csv_path.write_text("name,grade_glas\n" + "".join(f"{n},{v}\n" for n, v in grade_rows))
    return true_dir, pred_dir, csv_path


def _type_run(true_dir, pred_dir, csv_path, out, *extra):
    return compute_stats.main(
        [
            f"--pred_dir={pred_dir}",
            f"--true_dir={true_dir}",
            f"--out={out}",
            "--mode=type",
            f"--true_types_csv={csv_path}",
            "--quiet",
            *extra,
        ]
    )


def test_types_csv_ids_come_from_type_info_not_sort_order(tmp_path):
    from hovercrypt.io.type_info import load_type_info
    from hovercrypt.metrics.labels_io import read_types_csv, type_values_from_info

    # only malignant rows: sort order would give malignant id 1; the shipped type_info.json says 2
    true_dir, pred_dir, csv_path = _one_image_folders(tmp_path, [("img", "Malignant")], pred_type=2)
    values = type_values_from_info(load_type_info(REPO / "hovercrypt" / "type_info.json"))
    assert read_types_csv(csv_path, values=values) == {"img": 2}
    assert _type_run(true_dir, pred_dir, csv_path, tmp_path / "s1") == 0  # default --type_info_path
    assert float(_read_csv(tmp_path / "s1" / "per_image.csv")["img"]["type_accuracy"]) == 1.0
    # names that do not sort in model order: a custom type_info.json decides the ids
    info = tmp_path / "ti.json"
    info.write_text(
        json.dumps({"0": ["background", [0, 0, 0]], "1": ["tumour", [1, 2, 3]], "2": ["normal", [4, 5, 6]]})
    )
    true_dir, pred_dir, csv_path = _one_image_folders(tmp_path / "b", [("img", "normal")], pred_type=2)
    assert _type_run(true_dir, pred_dir, csv_path, tmp_path / "s2", f"--type_info_path={info}") == 0
    assert float(_read_csv(tmp_path / "s2" / "per_image.csv")["img"]["type_accuracy"]) == 1.0
    # --type_values replaces type_info: normal -> 1 now disagrees with the predicted 2
    assert _type_run(true_dir, pred_dir, csv_path, tmp_path / "s3", "--type_values=normal:1,tumour:2") == 0
    assert float(_read_csv(tmp_path / "s3" / "per_image.csv")["img"]["type_accuracy"]) == 0.0


def test_types_csv_unknown_value_is_a_one_line_error(tmp_path, capsys):
    true_dir, pred_dir, csv_path = _one_image_folders(
        tmp_path, [("img", "malignant"), ("other", "adenoma")], pred_type=2
    )
    assert _type_run(true_dir, pred_dir, csv_path, tmp_path / "s") == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert str(csv_path) in err and "adenoma" in err and "benign" in err and "malignant" in err
    assert not (tmp_path / "s").exists()
    # the same with an explicit mapping that lacks the value
    assert _type_run(true_dir, pred_dir, csv_path, tmp_path / "s", "--type_values=malignant:2") == 2
    err = capsys.readouterr().err
    assert "adenoma" in err and "malignant" in err
