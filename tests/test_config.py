"""Config loading: JSON values are type-checked, broken config files give ConfigError."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from hovercrypt.config import Config, ConfigError
from hovercrypt.presets import glas_config, load_config

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize(
    "section, message",
    [
        ({"data": {"keep_unannotated": "false"}}, "config.data.keep_unannotated: expected bool, got 'false'"),
        ({"proc_mpp": "abc"}, "config.proc_mpp: expected float, got 'abc'"),
        ({"proc_mpp": True}, "config.proc_mpp: expected float, got True"),
        ({"model": {"nr_types": True}}, "config.model.nr_types: expected int, got True"),
        ({"model": {"nr_types": 2.5}}, "config.model.nr_types: expected int, got 2.5"),
        ({"model": {"nr_types": "3"}}, "config.model.nr_types: expected int, got '3'"),
        ({"model": {"pretrained": 3}}, "config.model.pretrained: expected str or None, got 3"),
        ({"model": {"encoder": None}}, "config.model.encoder: expected str, got None"),
        ({"model": {"dense_units": [8]}}, "config.model.dense_units: expected tuple[int, int], got [8]"),
        ({"train": {"augment": {"affine_scale": [0.8, "x"]}}}, "affine_scale[1]: expected float, got 'x'"),
        ({"data": {"type_csv_map": {"benign": "1"}}}, "type_csv_map['benign']: expected int, got '1'"),
        ({"train": {"phases": [{"epochs": "2"}]}}, "phases[0].epochs: expected int, got '2'"),
    ],
)
def test_json_values_are_type_checked(tmp_path, section, message):
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(section))
    with pytest.raises(ConfigError, match=re.escape(message)) as info:
        load_config(path)
    assert str(path) in str(info.value)


def test_valid_values_are_accepted_and_normalised():
    cfg = Config.from_dict(
        {
            "proc_mpp": 1,
            "model": {"pretrained": None, "dense_units": [2, 2], "decoder_width": 1},
            "train": {"augment": {"affine_scale": [1, 1.5]}},
            "data": {"type_csv_map": {"a": 1}},
        }
    )
    assert cfg.proc_mpp == 1.0 and isinstance(cfg.proc_mpp, float)  # int accepted for float
    assert cfg.model.dense_units == (2, 2) and cfg.train.augment.affine_scale == (1.0, 1.5)
    assert cfg.model.pretrained is None and cfg.data.type_csv_map == {"a": 1}
    assert Config.from_dict({"model": {"pretrained": "w.pth"}}).model.pretrained == "w.pth"


@pytest.mark.parametrize(
    "source",
    [
        "default",
        "glas",
        "configs/glas_small.py",
        "configs/unet_resnet50.py",
        "configs/unet_resnet50_crops.py",
        "config.py",
    ],
)
def test_shipped_configs_round_trip(tmp_path, source):
    cfg = load_config(source if source in ("default", "glas") else REPO / source)
    assert Config.from_dict(cfg.to_dict()) == cfg
    path = tmp_path / "c.json"
    cfg.save_json(path)
    assert load_config(path) == cfg
    assert Config.from_dict(glas_config().to_dict()) == glas_config()


def test_py_config_that_fails_to_run(tmp_path):
    path = tmp_path / "broken.py"
    path.write_text("import math\nCONFIG = math.nope\n")
    with pytest.raises(ConfigError, match=r"broken.py: cannot run config file \(AttributeError: "):
        load_config(path)
    path.write_text("CONFIG = (\n")
    with pytest.raises(ConfigError, match=r"cannot run config file \(SyntaxError"):
        load_config(path)
