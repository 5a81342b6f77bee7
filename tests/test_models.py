"""HoVer-Net model: output shapes per mode/encoder, centre alignment, maps, pretrained loading."""

from __future__ import annotations

import copy

import pytest
import torch

from hovercrypt.config import ConfigError, ModelConfig
from hovercrypt.errors import InputError
from hovercrypt.models import build_model, count_parameters
from hovercrypt.models.decoder import DecoderBranch
from hovercrypt.models.encoder import build_encoder, load_pretrained_encoder


def _tiny(mode: str, encoder: str = "test_resnet", **kw) -> torch.nn.Module:
    torch.manual_seed(0)
    return build_model(ModelConfig(encoder=encoder, mode=mode, decoder_width=0.25, **kw)).eval()


@pytest.fixture(scope="module")
def tiny_models() -> dict[str, torch.nn.Module]:
    """timm's 0.4M-parameter test ResNet keeps these plumbing tests fast."""
    return {"original": _tiny("original", nr_types=3), "fast": _tiny("fast", nr_types=0)}


def _check_shapes(model, mode: str, nr_types: int, batch: int) -> None:
    size_in, size_out = {"original": (270, 80), "fast": (256, 164)}[mode]
    assert (model.input_size, model.output_size, model.arch) == (size_in, size_out, "hovernet")
    assert model.nr_types == nr_types and isinstance(model.encoder, torch.nn.Module)
    with torch.no_grad():
        out = model(torch.rand(batch, 3, size_in, size_in))
    expected = {"np": 2, "hv": 2} | ({"tp": nr_types} if nr_types else {})
    assert {k: tuple(v.shape) for k, v in out.items()} == {
        k: (batch, c, size_out, size_out) for k, c in expected.items()
    }


@pytest.mark.parametrize("mode,nr_types", [("original", 3), ("fast", 0)])
def test_output_shapes_small_encoder(tiny_models, mode, nr_types):
    _check_shapes(tiny_models[mode], mode, nr_types, batch=2)


def test_output_shapes_resnet50():
    _check_shapes(_tiny("original", "resnet50", nr_types=2), "original", 2, batch=1)


@pytest.mark.parametrize("mode", ["original", "fast"])
def test_output_is_centre_aligned(tiny_models, mode):
    """With mirror-symmetric kernels the network commutes with flips only if the output is centred.

    225 = 7 * 32 + 1 makes every stride-2^k grid symmetric too, so the check is exact.
    """
    model = copy.deepcopy(tiny_models[mode])
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.Conv2d):
                w = m.weight
                w.copy_((w + w.flip(-1) + w.flip(-2) + w.flip(-1, -2)) / 4)
        x = torch.rand(1, 3, 225, 225)
        out = model(torch.cat([x, x.flip(-1), x.flip(-2)]))
    for v in out.values():
        assert v.shape[-1] == 225 - (model.input_size - model.output_size)
        assert not torch.allclose(v[0], v[0].flip(-1), atol=1e-5)  # the maps themselves are not symmetric
        torch.testing.assert_close(v[1], v[0].flip(-1), atol=1e-5, rtol=0)
        torch.testing.assert_close(v[2], v[0].flip(-2), atol=1e-5, rtol=0)


def test_to_maps_ranges_and_layout(tiny_models):
    model = tiny_models["original"]
    out = {
        "np": torch.randn(2, 2, 80, 80) * 5,
        "hv": torch.randn(2, 2, 80, 80) * 3,
        "tp": torch.randn(2, 3, 80, 80) * 5,
    }
    maps = model.to_maps(out)
    assert {k: tuple(v.shape) for k, v in maps.items()} == {
        "np": (2, 80, 80, 1),
        "hv": (2, 80, 80, 2),
        "tp": (2, 80, 80, 3),
    }
    assert 0 <= maps["np"].min() and maps["np"].max() <= 1
    torch.testing.assert_close(maps["np"][..., 0], torch.softmax(out["np"], 1)[:, 1])
    assert -1 <= maps["hv"].min() and maps["hv"].max() <= 1 and maps["hv"].min() < -0.99
    torch.testing.assert_close(maps["hv"][..., 0], out["hv"][:, 0].clamp(-1, 1))  # channel 0 = x
    torch.testing.assert_close(maps["tp"].sum(-1), torch.ones(2, 80, 80))


def test_bad_configs_are_config_errors():
    with pytest.raises(ConfigError, match="not_a_backbone"):
        build_model(ModelConfig(encoder="not_a_backbone"))
    with pytest.raises(ConfigError, match="dense_units"):
        build_model(ModelConfig(encoder="test_resnet", dense_units=(8,)))
    # too many valid 5x5 units eat the whole 270 px window: caught at construction
    with pytest.raises(ConfigError, match="80 px output"):
        build_model(ModelConfig(encoder="test_resnet", decoder_width=0.25, dense_units=(24, 4)))


def test_decoder_width_shrinks_the_decoder():
    def params(width: float) -> int:
        return count_parameters(
            DecoderBranch([64, 256, 512, 1024, 2048], [2, 4, 8, 16, 32], 2, width, (8, 4), True)
        )

    assert 0.25 < params(0.5) / params(1.0) < 0.45  # ~width^2, skip projections ~width


def test_pretrained_timm_and_torchvision_state_dicts_load(tmp_path):
    import timm
    import torchvision

    torch.manual_seed(1)
    full = timm.create_model("test_resnet", pretrained=False, num_classes=10)  # includes fc.*
    torch.save(full.state_dict(), tmp_path / "timm.pth")
    model = build_model(
        ModelConfig(
            encoder="test_resnet", mode="fast", decoder_width=0.25, pretrained=str(tmp_path / "timm.pth")
        )
    )
    key = "layer4.0.conv2.weight"
    torch.testing.assert_close(model.encoder.state_dict()[key], full.state_dict()[key])

    tv = torchvision.models.resnet18(weights=None)  # torchvision names, wrapped like a training checkpoint
    torch.save({"state_dict": {f"module.{k}": v for k, v in tv.state_dict().items()}}, tmp_path / "tv.pth")
    enc = build_encoder("resnet18")
    load_pretrained_encoder(enc, tmp_path / "tv.pth")
    for key in ("conv1.weight", "layer3.1.bn2.running_var"):
        torch.testing.assert_close(enc.state_dict()[key], tv.state_dict()[key])


def test_pretrained_mismatch_is_a_clear_error(tmp_path):
    enc = build_encoder("resnet18")
    before = {k: v.clone() for k, v in enc.state_dict().items()}
    torch.save(build_encoder("resnet34").state_dict(), tmp_path / "r34.pth")
    with pytest.raises(InputError, match=r"r34\.pth.*unexpected keys: layer1\.2\."):
        load_pretrained_encoder(enc, tmp_path / "r34.pth")
    torch.save(build_encoder("test_resnet").state_dict(), tmp_path / "tiny.pth")
    with pytest.raises(
        InputError,
        match=r"tiny\.pth.*missing keys: .*shape mismatches: bn1\.weight \(32,\) vs encoder \(64,\)",
    ):
        load_pretrained_encoder(enc, tmp_path / "tiny.pth")
    with pytest.raises(InputError, match="not found"):
        load_pretrained_encoder(enc, tmp_path / "absent.pth")
    after = enc.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)  # nothing half-loaded
