"""`run_infer.py tile` end to end: an oracle through the pipeline, exports, CLI errors, a real checkpoint."""

from __future__ import annotations

import numpy as np
import pytest

# ---------------------------------------------------------------- pipeline with an oracle predictor


class OraclePredictor:
    """Renders exact HoVer-Net maps of a known global instance map (at processing resolution).

    It reads nothing from the tiles: ``origins`` tell it where each tile lies, so
    the whole pipeline (tiling, post-processing, resampling back, export) can be
    checked against known instances.
    """

    arch = "hovernet"
    nr_types = 3
    tta = False
    model_path = "oracle"

    def __init__(self, inst: np.ndarray, proc_mpp: float = 0.93, inp: int = 64, out: int = 32):
        from hovercrypt.config import Config
        from hovercrypt.data.targets import hv_maps

        self.inst = inst
        self.input_size, self.output_size = inp, out
        self.config = Config(proc_mpp=proc_mpp)
        self.types = {int(i): 1 + int(i) % 2 for i in np.unique(inst)[1:]}
        tp_id = np.zeros(inst.shape, np.int64)
        for i, t in self.types.items():
            tp_id[inst == i] = t
        fg = (inst > 0).astype(np.float32)[..., None]
        self.maps = {"np": fg, "hv": hv_maps(inst), "tp": np.eye(3, dtype=np.float32)[tp_id]}

    def predict(self, tiles, origins=None):
        m = (self.input_size - self.output_size) // 2
        o = self.output_size
        h, w = self.inst.shape
        res = {k: np.zeros((len(tiles), o, o, v.shape[2]), np.float32) for k, v in self.maps.items()}
        for n, (x0, y0) in enumerate(origins):
            gx, gy = x0 + m, y0 + m
            sx, sy = slice(max(gx, 0), min(gx + o, w)), slice(max(gy, 0), min(gy + o, h))
            if sx.stop <= sx.start or sy.stop <= sy.start:
                continue
            for k, v in self.maps.items():
                res[k][n, sy.start - gy : sy.stop - gy, sx.start - gx : sx.stop - gx] = v[sy, sx]
        return res


def _oracle_layout(shape=(151, 173), seed=0):
    from hovercrypt.testing.synthetic import random_ellipses

    return random_ellipses(shape, 10, radius_range=(16, 30), seed=seed)


def _match(pred: np.ndarray, true: np.ndarray) -> dict[int, int]:
    """true id -> pred id by majority overlap (for instances that got found)."""
    out = {}
    for t in np.unique(true)[1:]:
        vals, cnt = np.unique(pred[true == t], return_counts=True)
        keep = vals > 0
        if keep.any():
            out[int(t)] = int(vals[keep][np.argmax(cnt[keep])])
    return out


@pytest.mark.parametrize("factor", [1, 2])
def test_segment_image_recovers_oracle_instances_in_input_pixels(factor):
    from hovercrypt.infer.tile import segment_image

    inst = _oracle_layout()
    pred = OraclePredictor(inst)
    h, w = inst.shape
    image = np.zeros((h * factor, w * factor, 3), np.uint8)  # content is ignored by the oracle
    params = pred.config.postproc.pixels(0.93)
    got, info = segment_image(pred, image, 0.93, params, input_mpp=0.93 / factor, batch_size=5)
    assert got.shape == image.shape[:2] and got.dtype == np.int32
    true = np.repeat(np.repeat(inst, factor, 0), factor, 1)
    big = [int(i) for i in np.unique(inst)[1:] if (inst == i).sum() >= params["min_object_area"]]
    assert len(big) >= 5
    match = _match(got, true)
    assert set(big) <= set(match) and len(set(match.values())) == len(match)  # all found, none merged
    assert set(info) == set(np.unique(got)[1:].tolist())
    for t, p in match.items():
        inter = np.logical_and(got == p, true == t).sum()
        assert inter / np.logical_or(got == p, true == t).sum() > 0.9
        assert info[p]["type"] == pred.types[t]
        ys, xs = np.nonzero(got == p)
        assert info[p]["centroid"] == pytest.approx([xs.mean(), ys.mean()], abs=1e-6)
        assert info[p]["area"] == len(xs)


# ---------------------------------------------------------------- run_infer.py tile


def _run_infer(argv):
    import importlib.util
    from pathlib import Path

    spec = importlib.util.spec_from_file_location("run_infer", Path(__file__).parents[1] / "run_infer.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod.main(argv)


def _check_outputs(out, images, nr_types_cols):
    """Every output exists, matches the input size, and the exports agree with each other."""
    import csv
    import json

    import scipy.io

    rows = {r["image"]: r for r in csv.DictReader((out / "counts.csv").open()) if r["status"] == "ok"}
    assert set(rows) == set(images)
    total = 0
    for name, (h, w) in images.items():
        stem = name.rsplit(".", 1)[0]
        doc = json.loads((out / "json" / f"{stem}.json").read_text())
        mat = scipy.io.loadmat(out / "mat" / f"{stem}.mat")
        geo = json.loads((out / "geojson" / f"{stem}.geojson").read_text())
        from hovercrypt.io.images import read_rgb

        assert read_rgb(out / "overlay" / f"{stem}.png").shape == (h, w, 3)
        assert mat["inst_map"].shape == (h, w) and mat["inst_map"].dtype == np.int32
        assert (doc["width"], doc["height"]) == (w, h)
        ids = sorted(int(k) for k in doc["instances"])
        assert ids == sorted(set(np.unique(mat["inst_map"]).tolist()) - {0})
        assert mat["inst_uid"].ravel().tolist() == ids
        assert len(geo["features"]) == len(ids) == int(rows[name]["total"])
        for f in geo["features"]:
            ring = np.array(f["geometry"]["coordinates"][0], np.float64)
            assert len(ring) >= 4 and np.array_equal(ring[0], ring[-1])
            assert ring[:, 0].min() >= 0 and ring[:, 0].max() <= w
            assert ring[:, 1].min() >= 0 and ring[:, 1].max() <= h
        for col in nr_types_cols:
            n = sum(v["type_name"] == col for v in doc["instances"].values())
            assert int(rows[name][col]) == n
        for v in doc["instances"].values():
            x0, y0, x1, y1 = v["bbox"]
            assert 0 <= x0 < x1 <= w and 0 <= y0 < y1 <= h
        total += len(ids)
    return total


def test_cli_with_oracle_writes_consistent_outputs_and_survives_bad_image(tmp_path, monkeypatch, capsys):
    import json

    from hovercrypt.infer import tile_cli
    from hovercrypt.io.images import write_png

    inst = _oracle_layout((260, 240), seed=4)
    monkeypatch.setattr(tile_cli, "load_predictor", lambda args, *a, **k: OraclePredictor(inst))
    src = tmp_path / "in"
    src.mkdir()
    rng = np.random.default_rng(0)
    images = {"a.png": (201, 157), "b.png": (163, 231)}  # odd sizes, both cut some crypts at the border
    for name, hw in images.items():
        write_png(src / name, rng.integers(0, 256, (*hw, 3), dtype=np.uint8))
    (src / "broken.png").write_bytes(b"not a png")
    names = {"0": ["bg", [0, 0, 0]], "1": ["normal", [0, 255, 0]], "2": ["dysplastic", [255, 0, 0]]}
    (tmp_path / "ti.json").write_text(json.dumps(names))
    out = tmp_path / "out"
    ti = tmp_path / "ti.json"
    rc = _run_infer(["tile", f"--input_dir={src}", f"--output_dir={out}", f"--type_info_path={ti}"])
    err = capsys.readouterr().err
    assert rc == 1 and "broken.png" in err
    assert not (out / "json" / "broken.json").exists()
    assert _check_outputs(out, images, ["normal", "dysplastic", "untyped"]) >= 6
    # the failed image has a row, with empty counts (not a 0 that reads as "no crypts")
    import csv

    rows = {r["image"]: r for r in csv.DictReader((out / "counts.csv").open())}
    assert set(rows) == {*images, "broken.png"}
    assert rows["broken.png"]["status"].startswith("error:") and "broken.png" in rows["broken.png"]["status"]
    assert [rows["broken.png"][c] for c in ("normal", "dysplastic", "total")] == ["", "", ""]
    assert all(rows[n]["status"] == "ok" for n in images)
    # types survive to the exports: compare with the oracle's type of the instance under each centroid
    doc = json.loads((out / "json" / "a.json").read_text())
    assert doc["type_info"]["1"] == ["normal", [0, 255, 0]]
    for v in doc["instances"].values():
        cx, cy = (int(round(c)) for c in v["centroid"])
        t = inst[cy, cx]
        if t:
            assert v["type"] == 1 + t % 2


def test_cli_helpers_give_clear_errors(tmp_path, capsys):
    import json

    from hovercrypt.devices import resolve_device
    from hovercrypt.errors import InputError
    from hovercrypt.infer.tile_cli import resolve_type_info

    assert resolve_device("") == "cpu"
    assert "CPU" in capsys.readouterr().err
    with pytest.raises(InputError, match="GPU ids"):
        resolve_device("x")
    ti = tmp_path / "ti.json"
    ti.write_text(json.dumps({"0": ["bg", [0, 0, 0]], "1": ["crypt", [0, 255, 0]]}))
    with pytest.raises(InputError, match="ti.json.*model predicts 3"):
        resolve_type_info(ti, 3)
    assert resolve_type_info(ti, 2).names == ("bg", "crypt")
    # an explicit path that does not exist is an error; generic names only when no file exists at all
    with pytest.raises(InputError, match="missing.json: type info file"):
        resolve_type_info(tmp_path / "missing.json", 3)
    assert resolve_type_info(None, 2, configured=ti).names == ("bg", "crypt")  # the config's path
    with pytest.raises(InputError, match="absent.json: type info file"):
        resolve_type_info(None, 3, configured=tmp_path / "absent.json")
    assert resolve_type_info(None, 3, configured="type_info.json").names[1:] == ("benign", "malignant")
    rc = _run_infer(["tile", f"--input_dir={tmp_path / 'nope'}", f"--output_dir={tmp_path / 'o'}"])
    assert rc == 2 and "nope: input directory not found" in capsys.readouterr().err
    (tmp_path / "a.png").write_bytes(b"")
    (tmp_path / "a.jpg").write_bytes(b"")
    rc = _run_infer(["tile", f"--input_dir={tmp_path}", f"--output_dir={tmp_path / 'o'}"])
    assert rc == 2 and "share the name 'a'" in capsys.readouterr().err


def test_cli_end_to_end_with_random_weight_model(tmp_path, capsys):
    """The real path: checkpoint -> NetworkPredictor -> resampling -> post-processing -> exports."""
    import torch

    from hovercrypt.config import Config, DataConfig, ModelConfig
    from hovercrypt.io.images import write_png
    from hovercrypt.models.checkpoint import save_checkpoint
    from hovercrypt.models.hovernet import HoVerNet

    torch.manual_seed(0)
    mcfg = ModelConfig(encoder="resnet18", mode="fast", decoder_width=0.125, dense_units=(1, 1), nr_types=3)
    cfg = Config(model=mcfg, data=DataConfig(patch_size=256))
    ckpt = tmp_path / "model.pt"
    save_checkpoint(ckpt, HoVerNet(mcfg, check=False), cfg)  # load_model rebuilds it with the shape check
    src = tmp_path / "in"
    src.mkdir()
    rng = np.random.default_rng(1)
    images = {"x.png": (301, 257), "y.jpg": (263, 331)}
    for name, hw in images.items():
        from PIL import Image

        Image.fromarray(rng.integers(0, 256, (*hw, 3), dtype=np.uint8)).save(src / name)
    write_png(src / "z.tif", np.zeros((5, 5, 3), np.uint8))  # a PNG named .tif: unreadable as TIFF
    out = tmp_path / "out"
    argv = ["tile", f"--input_dir={src}", f"--output_dir={out}", f"--model_path={ckpt}", "--batch_size=2"]
    # input at a third of the processing um/px: images are shrunk 3x for the network (one tile each,
    # which keeps the test fast), results are mapped back to the input pixels
    rc = _run_infer([*argv, f"--input_mpp={cfg.proc_mpp / 3}"])  # type names: the repo's type_info.json
    err = capsys.readouterr().err
    assert rc == 1 and "z.tif" in err and "running on the CPU" in err
    _check_outputs(out, images, ["benign", "malignant", "untyped"])
    import json

    doc = json.loads((out / "json" / "x.json").read_text())
    assert doc["mpp"] == pytest.approx(cfg.proc_mpp / 3) and doc["proc_mpp"] == cfg.proc_mpp
    assert doc["model"] == str(ckpt) and doc["arch"] == "hovernet"


def _one_image_dir(tmp_path):
    from hovercrypt.io.images import write_png

    src = tmp_path / "in"
    src.mkdir()
    write_png(src / "a.png", np.zeros((90, 80, 3), np.uint8))
    return src


def test_cli_type_names_do_not_depend_on_cwd(tmp_path, monkeypatch, capsys, repo_root):
    """Without --type_info_path the repository's type_info.json is used from any directory; a
    mistyped explicit path is a one-line error with no outputs, not silently generic names."""
    import csv
    import json

    from hovercrypt.infer import tile_cli

    inst = _oracle_layout((90, 80))
    monkeypatch.setattr(tile_cli, "load_predictor", lambda args, *a, **k: OraclePredictor(inst))
    src = _one_image_dir(tmp_path)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)  # no type_info.json here
    rc = _run_infer(["tile", f"--input_dir={src}", f"--output_dir={tmp_path / 'o1'}"])
    assert rc == 0
    shipped = json.loads((repo_root / "hovercrypt" / "type_info.json").read_text())
    header = next(csv.reader((tmp_path / "o1" / "counts.csv").open()))
    assert header == ["image", shipped["1"][0], shipped["2"][0], "untyped", "total", "status"]
    capsys.readouterr()
    argv = ["tile", f"--input_dir={src}", f"--output_dir={tmp_path / 'o2'}", "--type_info_path=typo.json"]
    rc = _run_infer(argv)
    err = capsys.readouterr().err.strip()
    assert rc == 2 and err.splitlines()[-1] == "error: typo.json: type info file (--type_info_path) not found"
    assert not (tmp_path / "o2" / "counts.csv").exists()
