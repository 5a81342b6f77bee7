"""Semantic families from segmentation-models-pytorch and MONAI (issue 18) through the real pipeline.

Each family builds on tiny settings (resnet18 / mit_b0 / a tiny ViT, head width 4, fast windows),
takes one training step through the family's own loss on real semantic targets, runs one image
through the overlap-tile engine on the CPU, and round-trips its checkpoint (same maps after
loading). Then local pretrained weights (a torchvision-layout file written here), the one-line
errors of wrong flags, and one family end to end: run_train (two phases, resume), run_infer tile
and compute_stats.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest
import torch

from hovercrypt.config import Config, DataConfig, ModelConfig, PhaseConfig, TrainConfig
from hovercrypt.models.registry import family_names, get_family
from hovercrypt.testing.synthetic import random_ellipses, render_he

REPO = Path(__file__).resolve().parents[1]
SHARED_RESNET50 = REPO.parent / "shared" / "weights" / "resnet50_imagenet_msra.pth"

#: (family, the small encoder its test uses)
FAMILIES = [
    ("smp_unet", "resnet18"),
    ("unetplusplus", "resnet18"),
    ("deeplabv3plus", "resnet18"),
    ("fpn", "resnet18"),
    ("segformer", "mit_b0"),
    ("upernet", "resnet18"),
    ("unetr", "vit_tiny"),
]


def _config(arch: str, encoder: str, patch_dir: str = "", pretrained: str | None = None) -> Config:
    """Fast windows (256 -> 164), 3 classes + 3 types, head width 4: the cheapest real set-up."""
    return Config(
        name="tiny",
        proc_mpp=1.0,
        model=ModelConfig(
            arch=arch,
            mode="fast",
            encoder=encoder,
            pretrained=pretrained,
            nr_types=3,
            unet_classes=3,
            unet_base_width=4,
        ),
        data=DataConfig(patch_dir=patch_dir, patch_size=256, image_mpp=1.0),
        train=TrainConfig(
            phases=[
                PhaseConfig(name="decoders", epochs=1, freeze_encoder=True, lr=1e-3, batch_size=2),
                PhaseConfig(name="all", epochs=1, freeze_encoder=False, lr=1e-3, batch_size=2),
            ],
            num_workers=0,
            amp="none",
            channels_last=False,
            valid_instance_metrics=False,
            max_steps_per_epoch=1,
        ),
    )


def _batch(cfg: Config, size: int, n: int) -> dict[str, torch.Tensor]:
    """Images and the family's real targets (``seg`` with boundary class, ``tp``) at the output size."""
    family = get_family(cfg.model.arch)
    margin = (cfg.windows.input - cfg.windows.output) // 2
    out = size - 2 * margin
    images, segs, tps = [], [], []
    for i in range(n):
        inst = random_ellipses((size, size), 4, radius_range=(10, 25), seed=i)
        images.append(torch.from_numpy(render_he(inst, seed=i)).permute(2, 0, 1).float() / 255.0)
        segs.append(torch.from_numpy(family.make_targets(inst, out, cfg)["seg"]))
        crop = inst[margin : margin + out, margin : margin + out]
        tps.append(torch.from_numpy(np.where(crop > 0, 1 + crop % 2, 0).astype(np.int64)))
    return {"image": torch.stack(images), "seg": torch.stack(segs), "tp": torch.stack(tps)}


def test_every_family_is_registered_and_listed(capsys):
    names = [f for f, _ in FAMILIES]
    assert set(names) <= set(family_names())
    for name in names:  # the UNet baseline's recipe: same targets, loss, post-processing, grid
        fam, unet = get_family(name), get_family("unet")
        assert (fam.loss, fam.targets, fam.instances, fam.settings) == (
            unet.loss, unet.targets, unet.instances, unet.settings
        )
        assert dict(fam.tune_grid) == dict(unet.tune_grid) and fam.encoder_field == "encoder"
    spec = importlib.util.spec_from_file_location("run_train_smp", REPO / "run_train.py")
    run_train = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(run_train)
    assert run_train.main(["--list_models"]) == 0
    listed = [line.split()[0] for line in capsys.readouterr().out.splitlines() if line.strip()]
    assert set(names) <= set(listed)


@pytest.mark.parametrize("arch, encoder", FAMILIES)
def test_family_trains_infers_and_round_trips(arch, encoder, tmp_path):
    from hovercrypt.infer.predictor import NetworkPredictor
    from hovercrypt.infer.tile import predict_image
    from hovercrypt.models import build_model
    from hovercrypt.models.checkpoint import load_checkpoint, save_checkpoint
    from hovercrypt.postproc import maps_to_instances

    torch.manual_seed(0)
    cfg = _config(arch, encoder)
    model = build_model(cfg.model)
    assert model.arch == arch and (model.input_size, model.output_size) == (256, 164)
    assert isinstance(model.encoder, torch.nn.Module) and any(True for _ in model.encoder.parameters())

    # one training step through the family's loss; UNETR takes exactly its 256 px window
    size, n = (256, 1) if arch == "unetr" else (128, 2)
    batch = _batch(cfg, size, n)
    model.train()
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    out = model(batch["image"])
    assert out["seg"].shape == (n, 3, *batch["seg"].shape[1:]) and out["tp"].shape[1] == 3
    loss, parts = get_family(arch).compute_loss(out, batch, cfg.train.loss)
    assert torch.isfinite(loss) and {"seg_ce", "seg_dice", "tp_ce", "tp_dice"} <= set(parts)
    before = model.seg_head.weight.detach().clone()
    loss.backward()
    opt.step()
    assert not torch.equal(before, model.seg_head.weight)

    # checkpoint: stores the family; the rebuilt model gives identical outputs
    path = tmp_path / "ck.pt"
    save_checkpoint(path, model, cfg)
    ck = load_checkpoint(path)
    assert ck["arch"] == arch and ck["config"]["model"]["arch"] == arch
    model.eval()
    loaded = NetworkPredictor.from_checkpoint(path, amp="none")
    assert loaded.arch == arch and loaded.nr_types == 3
    with torch.no_grad():
        a, b = model(batch["image"][:1]), loaded.model(batch["image"][:1])
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=0)

    # one image through the overlap-tile engine and the family's post-processing
    image = render_he(random_ellipses((120, 136), 3, radius_range=(10, 25), seed=5), seed=5)
    maps = predict_image(loaded, image, batch_size=1)
    assert set(maps) == {"seg", "tp"} and maps["seg"].shape == (120, 136, 3)
    np.testing.assert_allclose(maps["seg"].sum(-1), 1.0, atol=1e-5)
    inst = maps_to_instances(maps, loaded.arch, cfg.postproc.pixels(cfg.proc_mpp))
    assert inst.shape == (120, 136) and inst.dtype == np.int32


# ----------------------------------------------------------------------------- pretrained weights


@pytest.fixture(scope="module")
def torchvision_resnet18(tmp_path_factory) -> tuple[Path, dict[str, torch.Tensor]]:
    """A torchvision-layout ResNet18 state dict (with ``fc``), marked so loading is visible."""
    import torchvision

    torch.manual_seed(1)
    sd = torchvision.models.resnet18(weights=None).state_dict()
    sd["conv1.weight"].fill_(0.25)
    sd["layer4.1.bn2.running_var"].fill_(3.0)
    path = tmp_path_factory.mktemp("weights") / "resnet18_torchvision.pth"
    torch.save(sd, path)
    return path, sd


@pytest.mark.parametrize(
    "arch, encoder", [("fpn", "resnet18"), ("deeplabv3plus", "resnet18"), ("fpn", "tu-resnet18")]
)
def test_pretrained_torchvision_file_loads_into_the_smp_encoder(arch, encoder, torchvision_resnet18):
    from hovercrypt.models import build_model

    path, sd = torchvision_resnet18
    model = build_model(_config(arch, encoder, pretrained=str(path)).model)
    own = model.encoder.state_dict()
    prefix = "model." if encoder.startswith("tu-") else ""  # smp wraps timm models as encoder.model
    for key in ("conv1.weight", "layer4.1.bn2.running_var", "layer2.0.downsample.0.weight"):
        torch.testing.assert_close(own[prefix + key], sd[key])


def test_pretrained_errors_name_the_file(tmp_path, torchvision_resnet18):
    from hovercrypt.config import ConfigError
    from hovercrypt.errors import InputError
    from hovercrypt.models import build_model

    path, sd = torchvision_resnet18
    wrong = tmp_path / "not_resnet18.pth"
    torch.save({k: (v[..., :1] if k == "layer1.0.conv1.weight" else v) for k, v in sd.items()}, wrong)
    other = tmp_path / "other_arch.pth"
    torch.save({"features.0.weight": torch.zeros(8, 3, 3, 3)}, other)
    cases = [(tmp_path / "absent.pth", "not found"), (wrong, "shape mismatches"), (other, "missing keys")]
    for file, why in cases:
        with pytest.raises(InputError, match=why) as e:
            build_model(_config("unetplusplus", "resnet18", pretrained=str(file)).model)
        assert str(file) in str(e.value) and "\n" not in str(e.value)
    with pytest.raises(ConfigError, match="unetr has no local pretrained weights"):
        build_model(_config("unetr", "vit_tiny", pretrained=str(path)).model)


@pytest.mark.skipif(not SHARED_RESNET50.is_file(), reason=f"{SHARED_RESNET50} is absent")
def test_shared_imagenet_resnet50_fits_the_smp_resnet50_encoder():
    """The file users pass with --pretrained has exactly the keys of smp's resnet50 encoder."""
    import segmentation_models_pytorch as smp

    from hovercrypt.models.smp_families import load_smp_encoder_weights

    encoder = smp.encoders.get_encoder("resnet50", weights=None)
    load_smp_encoder_weights(encoder, str(SHARED_RESNET50))
    ref = torch.load(SHARED_RESNET50, map_location="cpu", weights_only=True)
    torch.testing.assert_close(encoder.state_dict()["layer3.5.conv2.weight"], ref["layer3.5.conv2.weight"])


# ----------------------------------------------------------------------------- wrong flags


def _run_train():
    spec = importlib.util.spec_from_file_location("run_train_smp", REPO / "run_train.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod.main


@pytest.mark.parametrize(
    "opts, says",
    [
        (["--model=nosuch"], "unetplusplus"),  # the error lists the registered families
        (["--model=segformer", "--encoder=resnet50"], "segformer takes mit_b0"),
        (["--model=unetplusplus", "--encoder=mit_b0"], "unetplusplus cannot take it"),
        (["--model=deeplabv3plus", "--encoder=vgg11"], "deeplabv3plus cannot take it"),
        (["--model=fpn", "--encoder=no_such_net"], "not a segmentation-models-pytorch encoder"),
        (["--model=fpn", "--encoder=tu-no_such_net"], "fpn cannot be built with it"),
        (["--model=unetr", "--encoder=resnet50"], "unetr takes its own ViT encoder"),
        (["--model=unetr", "--encoder=vit_tiny", "--mode=original"], "not a multiple of unetr's 16 px"),
    ],
)
def test_wrong_flags_give_one_line_errors(opts, says, tmp_path, capsys):
    rc = _run_train()(["--gpu=", f"--log_dir={tmp_path / 'log'}", "--no_progress", *opts])
    err = capsys.readouterr().err.strip()
    assert rc == 2, err
    assert err.startswith("error: ") and "\n" not in err and says in err, err


def test_unetr_refuses_another_window_at_inference():
    from hovercrypt.models import build_model

    model = build_model(_config("unetr", "vit_tiny").model).eval()
    with torch.no_grad(), pytest.raises(ValueError, match="exactly its 256 px training window"):
        model(torch.zeros(1, 3, 320, 320))


# ----------------------------------------------------------------------------- end to end


def test_run_train_resume_run_infer_and_compute_stats(tmp_path, torchvision_resnet18, capsys):
    """``--model=fpn --encoder=resnet18 --pretrained=FILE``: two phases, resume, tile inference, scores."""
    import sys

    from PIL import Image
    from test_train import write_patches  # tests/ is on sys.path (rootdir conftest)

    from hovercrypt.models.checkpoint import load_checkpoint
    from hovercrypt.train.logs import CSV_NAME, read_csv

    sys.path.insert(0, str(REPO))
    import compute_stats
    import run_infer

    data = write_patches(tmp_path / "patches", n_train=1, n_valid=1, size=256)
    cfg_file = tmp_path / "tiny.json"
    _config("unet", "resnet18", str(data)).save_json(cfg_file)  # the family comes from --model
    log = tmp_path / "log"
    base = ["--gpu=", f"--config={cfg_file}", f"--log_dir={log}", "--no_progress", "--amp=none"]
    model = ["--model=fpn", "--encoder=resnet18", f"--pretrained={torchvision_resnet18[0]}", "--batch_size=1"]
    assert _run_train()([*base, *model]) == 0, capsys.readouterr().err
    ck = load_checkpoint(log / "last.pt")
    assert ck["arch"] == "fpn" and ck["epoch"] == 2 and ck["phase"] == 1
    assert ck["config"]["model"]["encoder"] == "resnet18" and (log / "best.pt").is_file()
    assert _run_train()([f"--resume={log}", "--epochs=1,2", "--gpu=", "--no_progress"]) == 0
    rows = read_csv(log / CSV_NAME)
    assert [r["phase"] for r in rows] == ["1", "2", "2"]
    assert all(float(r["valid/crypt_dice"]) >= 0 for r in rows)

    images, truth = tmp_path / "images", tmp_path / "truth"
    images.mkdir()
    truth.mkdir()
    inst = random_ellipses((96, 112), 3, radius_range=(10, 25), seed=9)
    Image.fromarray(render_he(inst, seed=9)).save(images / "img.png")
    Image.fromarray(inst.astype(np.uint8)).save(truth / "img.png")
    out = tmp_path / "out"
    argv = ["tile", f"--input_dir={images}", f"--output_dir={out}", f"--model_path={log / 'last.pt'}"]
    assert run_infer.main([*argv, "--gpu=", "--batch_size=1"]) == 0, capsys.readouterr().err
    assert (out / "mat" / "img.mat").is_file() and (out / "json" / "img.json").is_file()
    stats = tmp_path / "stats"
    argv = [f"--pred_dir={out}", f"--true_dir={truth}", f"--out={stats}", "--mpp=1", "--quiet"]
    rc = compute_stats.main(argv)
    assert rc == 0 and (stats / "summary.json").is_file()
