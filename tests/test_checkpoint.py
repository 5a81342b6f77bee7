"""Checkpoints: round trip, extra state, export to fp16, clear errors, default model path."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

import hovercrypt
from hovercrypt.config import Config, ConfigError, ModelConfig
from hovercrypt.errors import InputError
from hovercrypt.models import build_model
from hovercrypt.models.checkpoint import (
    default_model_path,
    export_for_inference,
    load_checkpoint,
    load_model,
    save_checkpoint,
)


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> tuple[torch.nn.Module, Config, Path]:
    """A tiny HoVer-Net after one Adam step (so BN stats and optimiser state are non-trivial)."""
    torch.manual_seed(0)
    cfg = Config(model=ModelConfig(encoder="test_resnet", mode="fast", decoder_width=0.25, nr_types=3))
    model = build_model(cfg.model)
    opt = torch.optim.Adam(model.parameters(), 1e-3)
    sched = torch.optim.lr_scheduler.StepLR(opt, 1, 0.5)
    out = model(torch.rand(1, 3, 160, 160))  # any size works; output = input - 92
    sum(v.float().mean() for v in out.values()).backward()
    opt.step()
    sched.step()
    path = tmp_path_factory.mktemp("ck") / "last.pt"
    rng = {"numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    save_checkpoint(
        path, model, cfg, optimizer=opt, scheduler=sched, phase=1, epoch=7, extra={"note": "x"}, rng=rng
    )
    return model.eval(), cfg, path


def test_round_trip(trained):
    model, cfg, path = trained
    ck = load_checkpoint(path)
    assert (ck["phase"], ck["epoch"], ck["arch"], ck["extra"]) == (1, 7, "hovernet", {"note": "x"})
    assert ck["version"] == hovercrypt.__version__ and ck["config"] == cfg.to_dict()
    assert ck["optimizer"]["state"] and ck["scheduler"]["last_epoch"] == 1
    assert isinstance(ck["rng"]["numpy"][1], np.ndarray)  # numpy RNG state survives weights_only loading
    loaded, cfg2 = load_model(path)
    assert cfg2 == cfg and not loaded.training
    sd, sd2 = model.state_dict(), loaded.state_dict()
    assert sd.keys() == sd2.keys() and all(torch.equal(sd[k], sd2[k]) for k in sd)
    x = torch.rand(1, 3, 160, 160)
    with torch.no_grad():
        a, b = model(x), loaded(x)
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_export_is_fp16_and_loads_back_as_float32(trained, tmp_path):
    model, cfg, path = trained
    dst = export_for_inference(path, tmp_path / "small.pt")
    ck = torch.load(dst, weights_only=True)
    assert set(ck) == {"model", "config", "arch", "version"}
    assert ck["model"]["decoders.np.head.2.weight"].dtype == torch.float16
    assert dst.stat().st_size < 0.6 * path.stat().st_size
    loaded, cfg2 = load_model(dst, expect_arch="hovernet")
    assert cfg2 == cfg and loaded.decoders["np"].head[2].weight.dtype == torch.float32
    ref = model.state_dict()["decoders.hv.head.2.weight"]
    torch.testing.assert_close(loaded.state_dict()["decoders.hv.head.2.weight"], ref, atol=1e-3, rtol=1e-3)


def test_errors_name_the_file(trained, tmp_path):
    _, _, path = trained
    with pytest.raises(ConfigError, match=r"last\.pt holds a hovernet model, but --model=unet was given"):
        load_model(path, expect_arch="unet")
    with pytest.raises(InputError, match=r"absent\.pt: checkpoint file not found"):
        load_checkpoint(tmp_path / "absent.pt")
    (tmp_path / "cut.pt").write_bytes(path.read_bytes()[:1000])
    with pytest.raises(InputError, match=r"cut\.pt: not a readable hovercrypt checkpoint"):
        load_checkpoint(tmp_path / "cut.pt")
    # a pickle with a class outside the allow-list: torch's multi-line advice (weights_only=False, i.e.
    # run arbitrary code) must not reach the user; one line naming the file and the refused class
    torch.save({"model": {}, "config": Path("x")}, tmp_path / "foreign.pt")
    for name in ("cut.pt", "foreign.pt"):
        with pytest.raises(InputError) as ei:
            load_checkpoint(tmp_path / name)
        msg = str(ei.value)
        assert msg.startswith(f"{tmp_path / name}: not a readable hovercrypt checkpoint (")
        assert "\n" not in msg and "weights_only" not in msg and "\x1b" not in msg, msg
    assert "Path" in msg
    torch.save({"model": {}, "epoch": 1}, tmp_path / "partial.pt")
    with pytest.raises(
        InputError, match=r"partial\.pt: checkpoint lacks key\(s\) \['config', 'arch', 'version'\]"
    ):
        load_checkpoint(tmp_path / "partial.pt")
    with pytest.raises(ValueError, match="clash"):
        save_checkpoint(tmp_path / "x.pt", trained[0], trained[1], arch="unet")


def test_default_model_path(tmp_path, monkeypatch):
    monkeypatch.setattr(hovercrypt, "__file__", str(tmp_path / "hovercrypt" / "__init__.py"))
    expected = tmp_path / "hovercrypt" / "weights" / "hovercrypt_glas.pt"
    with pytest.raises(InputError, match="hovercrypt_glas.pt"):
        default_model_path()
    expected.parent.mkdir(parents=True)
    expected.write_bytes(b"")
    assert default_model_path() == expected
