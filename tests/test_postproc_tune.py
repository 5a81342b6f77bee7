"""Post-processing after training: range checks, tuning on maps, run_infer --postproc, stored defaults."""

from __future__ import annotations

import dataclasses
import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest

from hovercrypt.config import Config, ConfigError, DataConfig, ModelConfig, PostprocConfig, UNetPostproc
from hovercrypt.data.resample import resize_labels
from hovercrypt.errors import InputError
from hovercrypt.postproc.tune import Case, score_postproc, tune_postproc
from hovercrypt.testing.synthetic import noisy_maps, random_ellipses

MPP = 0.93


def _cases(n: int = 3, scale: int = 1) -> list[Case]:
    """Synthetic crypts with network-like noisy maps; the annotation ``scale`` x finer than the maps."""
    cases = []
    for seed in range(n):
        inst = random_ellipses((160, 180), 6, radius_range=(12, 24), seed=seed)
        np_prob, hv = noisy_maps(inst, seed=seed, noise=0.05)
        true = inst if scale == 1 else resize_labels(inst, (160 * scale, 180 * scale))
        cases.append(Case(f"s{seed}", {"np": np_prob[..., None], "hv": hv}, true))
    return cases


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("np_thresh", 1.0, "np_thresh must be in"),
        ("unet_fg_thresh", -0.1, "unet_fg_thresh must be in"),
        ("marker_thresh", 0.0, "marker_thresh must be in"),
        ("min_object_area_um2", -5.0, "min_object_area_um2 must be >= 0"),
        ("blur_ksize", 4, "blur_ksize must be an odd number"),
        ("watershed_levels", 70000, "watershed_levels must be in"),
        ("sobel_ksize_um", 0.0, "sobel_ksize_um must be > 0"),
    ],
)
def test_postproc_ranges_are_checked_by_field(field: str, value: float, message: str) -> None:
    arch, cls = ("unet", UNetPostproc) if field.startswith("unet_") else ("hovernet", PostprocConfig)
    bad = dataclasses.replace(cls(), **{field: value})
    with pytest.raises(ConfigError, match=message):
        bad.validate()
    with pytest.raises(ConfigError, match=message):  # and when a whole config is built
        Config(model=ModelConfig(arch=arch), postproc=bad)
    cls().validate()  # the defaults are valid


def test_oracle_maps_score_one_and_resolution_is_handled() -> None:
    """Exact maps (no noise) give object F1 / Dice / PQ of 1, also against a 2x finer annotation."""
    inst = random_ellipses((120, 140), 5, radius_range=(12, 22), seed=7)
    np_prob, hv = noisy_maps(inst, seed=0, noise=0.0)
    for scale in (1, 2):
        true = inst if scale == 1 else resize_labels(inst, (240, 280))
        s = score_postproc([Case("o", {"np": np_prob[..., None], "hv": hv}, true)], "hovernet",
                           PostprocConfig(), MPP, MPP / scale)
        assert s["obj_f1"] == pytest.approx(1.0) and s["pq"] > 0.95 and s["score"] > 0.95


def test_tuning_recovers_from_a_bad_start_and_keeps_a_good_one() -> None:
    """A start that drops every crypt (min area 1e6 um^2, score 0) is walked back to a working
    value; from the default start, with only worse candidates offered, nothing changes."""
    cases = _cases(3, scale=2)
    bad = PostprocConfig(min_object_area_um2=1e6)
    assert score_postproc(cases, "hovernet", bad, MPP, MPP / 2)["score"] == 0.0
    grid = {"min_object_area_um2": [100.0, 1e6], "marker_thresh": [0.6]}
    tuned, trail = tune_postproc(cases, "hovernet", bad, MPP, MPP / 2, rounds=2, grid=grid)
    assert tuned.min_object_area_um2 == 100.0
    assert trail[0]["score"] == 0.0 and trail[-1]["score"] > 0.9
    assert "min_object_area_um2 1000000.0 -> 100.0" in trail[-1]["step"]
    good = PostprocConfig()
    same, trail = tune_postproc(cases, "hovernet", good, MPP, MPP / 2, grid={"np_thresh": [0.99 - 1e-9]})
    assert same == good and len(trail) == 1
    with pytest.raises(ValueError, match="unknown post-processing fields"):
        tune_postproc(cases, "hovernet", good, MPP, MPP, grid={"np_treshold": [0.5]})
    with pytest.raises(ValueError, match="start must be HoVerNetPostproc"):
        tune_postproc(cases, "hovernet", UNetPostproc(), MPP, MPP)


def _tiny_checkpoint(tmp_path: Path) -> Path:
    import torch

    from hovercrypt.models.checkpoint import save_checkpoint
    from hovercrypt.models.hovernet import HoVerNet

    torch.manual_seed(0)
    mcfg = ModelConfig(encoder="resnet18", mode="fast", decoder_width=0.125, dense_units=(1, 1), nr_types=3)
    cfg = Config(model=mcfg, data=DataConfig(patch_size=256))
    ckpt = tmp_path / "model.pt"
    save_checkpoint(ckpt, HoVerNet(mcfg, check=False), cfg)
    return ckpt


def test_update_stored_config_changes_only_postproc(tmp_path: Path) -> None:
    import torch

    from hovercrypt.models.checkpoint import load_checkpoint, update_stored_config

    ckpt = _tiny_checkpoint(tmp_path)
    before = load_checkpoint(ckpt)
    tuned = PostprocConfig(np_thresh=0.4, blur_ksize=7)
    update_stored_config(ckpt, postproc=tuned)
    after = load_checkpoint(ckpt)
    assert after["config"]["postproc"] == dataclasses.asdict(tuned)
    assert {k: v for k, v in after["config"].items() if k != "postproc"} == {
        k: v for k, v in before["config"].items() if k != "postproc"
    }
    assert all(torch.equal(before["model"][k], after["model"][k]) for k in before["model"])
    assert not list(tmp_path.glob("*.tmp*"))  # atomic: no temporary left behind


def _run_infer(argv: list[str]) -> int:
    spec = importlib.util.spec_from_file_location("run_infer", Path(__file__).parents[1] / "run_infer.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod.main(argv)


def test_run_infer_postproc_file_overrides_the_checkpoint(tmp_path: Path, capsys) -> None:
    """--postproc replaces only the fields it names; a bad file is a one-line error naming it."""
    from hovercrypt.infer.tile_cli import load_predictor
    from hovercrypt.io.images import write_png

    ckpt = _tiny_checkpoint(tmp_path)
    override = tmp_path / "post.json"
    override.write_text(json.dumps({"np_thresh": 0.35, "min_object_area_um2": 250}))
    pred = load_predictor({"--model_path": str(ckpt), "--postproc": str(override), "--gpu": ""})
    assert pred.config.postproc == PostprocConfig(np_thresh=0.35, min_object_area_um2=250.0)
    assert isinstance(pred.config.postproc.min_object_area_um2, float)

    src = tmp_path / "in"
    src.mkdir()
    write_png(src / "a.png", np.full((60, 70, 3), 200, np.uint8))
    cases = {
        "typo.json": ('{"np_treshold": 0.4}', "typo.json: postproc: unknown key"),
        "unet.json": ('{"unet_fg_thresh": 0.4}', "unet.json: postproc: unknown key(s) ['unet_fg_thresh']"),
        "range.json": ('{"np_thresh": 1.5}', "range.json: postproc.np_thresh must be in"),
        "type.json": ('{"blur_ksize": "big"}', "type.json: postproc.blur_ksize"),
        "broken.json": ("{np_thresh: 0.4", "broken.json: not valid JSON"),
        "list.json": ("[0.4]", "list.json: expected a JSON object"),
    }
    for name, (text, message) in cases.items():
        (tmp_path / name).write_text(text)
        out = tmp_path / f"out_{name}"
        rc = _run_infer(["tile", f"--input_dir={src}", f"--output_dir={out}",
                         f"--model_path={ckpt}", f"--postproc={tmp_path / name}"])
        err = capsys.readouterr().err.strip().splitlines()[-1]
        assert rc == 2 and message in err, err
        assert not (out / "counts.csv").exists()
    with pytest.raises(InputError, match="nope.json: --postproc file not found"):
        load_predictor({"--model_path": str(ckpt), "--postproc": str(tmp_path / "nope.json")})
    # inline JSON works the same way, and its errors name the option
    inline = load_predictor({"--model_path": str(ckpt), "--postproc": '{"blur_ksize": 5}'})
    assert inline.config.postproc == PostprocConfig(blur_ksize=5)
    with pytest.raises(InputError, match=r"^--postproc: postproc.blur_ksize must be an odd number"):
        load_predictor({"--model_path": str(ckpt), "--postproc": '{"blur_ksize": 4}'})


def test_run_infer_model_flag_gets_a_hint(tmp_path: Path, capsys) -> None:
    """``--model=unet`` is a run_train.py flag; docopt expands it to --model_path=unet here."""
    from hovercrypt.io.images import write_png

    src = tmp_path / "in"
    src.mkdir()
    write_png(src / "a.png", np.full((30, 30, 3), 200, np.uint8))
    rc = _run_infer(["tile", f"--input_dir={src}", f"--output_dir={tmp_path / 'o'}", "--model=unet"])
    err = capsys.readouterr().err
    assert rc == 2 and "unet: model checkpoint not found" in err
    assert "architecture comes from the checkpoint" in err


def test_update_stored_config_sets_inference_defaults_and_names_bad_sections(tmp_path: Path) -> None:
    """The stored ``infer`` section is what run_infer.py starts from; an unknown section is an error."""
    from hovercrypt.config import ConfigError, InferConfig
    from hovercrypt.infer.options import load_predictor
    from hovercrypt.models.checkpoint import update_stored_config

    ckpt = _tiny_checkpoint(tmp_path)
    update_stored_config(ckpt, infer=InferConfig(backend="torch", window=512, window_border=8))
    pred = load_predictor({"--model_path": str(ckpt), "--gpu": ""})
    assert (pred.config.infer.backend, pred.backend, pred.input_size) == ("torch", "torch", 512)
    with pytest.raises(ConfigError, match=r"model.pt: no config section\(s\) \['inference'\]"):
        update_stored_config(ckpt, inference=InferConfig())
