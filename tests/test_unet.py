"""UNet baseline: model shapes and windows, loss, learning on a tiny set, instance extraction."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from hovercrypt.config import MODE_WINDOWS, ConfigError, LossWeights, ModelConfig, UNetPostproc
from hovercrypt.models import count_parameters
from hovercrypt.models.unet import build_unet, soft_dice_loss, unet_loss
from hovercrypt.postproc.semantic import instances_from_semantic
from hovercrypt.testing.synthetic import render_he


def _cfg(**kw) -> ModelConfig:
    base = dict(arch="unet", unet_base_width=4, nr_types=0)
    base.update(kw)
    return ModelConfig(**base)


@pytest.mark.parametrize(
    "kw",
    [
        dict(unet_classes=2, unet_levels=5, nr_types=0, mode="original"),
        dict(unet_classes=3, unet_levels=4, nr_types=3, mode="fast", unet_upsample="resize"),
        dict(unet_classes=2, unet_levels=4, nr_types=3, mode="original"),
        dict(unet_classes=3, unet_levels=5, nr_types=0, mode="fast", unet_upsample="resize"),
        dict(unet_classes=3, unet_levels=5, nr_types=2, mode="original", unet_encoder="test_resnet"),
        dict(unet_classes=2, unet_levels=4, nr_types=0, mode="fast", unet_encoder="mobilenetv3_small_050"),
    ],
)
def test_output_shapes_and_maps(kw):
    model = build_unet(_cfg(**kw)).eval()
    inp, out = MODE_WINDOWS[kw["mode"]]
    assert (model.arch, model.input_size, model.output_size) == ("unet", inp, out)
    assert model.nr_types == kw["nr_types"]
    x = torch.rand(1, 3, inp, inp)
    with torch.no_grad():
        res = model(x)
    c = kw["unet_classes"]
    assert res["seg"].shape == (1, c, out, out)
    if kw["nr_types"]:
        assert res["tp"].shape == (1, kw["nr_types"], out, out)
    else:
        assert "tp" not in res
    maps = model.to_maps(res)
    assert maps["seg"].shape == (1, out, out, c) and maps["seg"].dtype == torch.float32
    torch.testing.assert_close(maps["seg"].sum(-1), torch.ones(1, out, out))
    assert set(maps) == set(res)
    # the contracting path / timm backbone is exposed for phase-1 freezing
    enc = {id(p) for p in model.encoder.parameters()}
    assert enc and len(enc) < len(list(model.parameters()))


def test_base_width_16_is_about_2m_parameters():
    n = count_parameters(build_unet(ModelConfig(arch="unet", unet_base_width=16, unet_levels=5, nr_types=0)))
    assert 1.7e6 < n < 2.3e6, n


def test_larger_input_keeps_the_context_margin():
    model = build_unet(_cfg(mode="fast", unet_levels=4)).eval()
    margin = (model.input_size - model.output_size) // 2
    with torch.no_grad():
        res = model(torch.rand(1, 3, 301, 288))  # odd, not a multiple of 8: padded internally
    assert res["seg"].shape[-2:] == (301 - 2 * margin, 288 - 2 * margin)
    with pytest.raises(ValueError, match="context margin"):
        model(torch.rand(1, 3, 2 * margin, 2 * margin))


def test_output_is_the_centre_of_the_input_window():
    """With identity features the seg logits must be the normalised input at the centre crop."""
    model = build_unet(_cfg(mode="original", unet_levels=5)).eval()
    width = model.seg_head.in_channels
    model.features = lambda xp: xp[:, :1].repeat(1, width, 1, 1)
    with torch.no_grad():
        model.seg_head.weight.zero_()
        model.seg_head.bias.zero_()
        model.seg_head.weight[0, 0] = 1.0
        x = torch.rand(1, 3, model.input_size, model.input_size)
        seg = model(x)["seg"][0, 0]
    m = (model.input_size - model.output_size) // 2
    expect = model.normalize(x)[0, 0, m : m + model.output_size, m : m + model.output_size]
    torch.testing.assert_close(seg, expect)


def test_bad_configs_raise_clear_errors():
    with pytest.raises(ConfigError, match="pretrained"):
        build_unet(_cfg(pretrained="weights.pt"))
    with pytest.raises(ConfigError, match="unet_encoder"):
        build_unet(_cfg(unet_encoder="no_such_backbone_xyz"))
    with pytest.raises(ConfigError, match="unet_upsample"):
        build_unet(_cfg(unet_upsample="nearest"))


def test_timm_encoder_loads_local_pretrained_file(tmp_path):
    from hovercrypt.models.encoder import build_encoder

    src = build_encoder("test_resnet")
    with torch.no_grad():
        for p in src.parameters():
            p.uniform_(-1, 1)
    path = tmp_path / "enc.pt"
    torch.save(src.state_dict(), path)
    model = build_unet(_cfg(unet_encoder="test_resnet", unet_levels=4, pretrained=str(path)))
    own = model.encoder.state_dict()
    assert len(own) < len(src.state_dict())  # truncated to 4 levels
    for k, v in own.items():
        torch.testing.assert_close(v, src.state_dict()[k])


def _loss_inputs(c: int, t: int, n: int = 2, s: int = 12):
    g = torch.Generator().manual_seed(0)
    out = {"seg": torch.randn(n, c, s, s, generator=g, requires_grad=True)}
    batch = {"seg": torch.randint(0, c, (n, s, s), generator=g)}
    if t:
        out["tp"] = torch.randn(n, t, s, s, generator=g, requires_grad=True)
        batch["tp"] = torch.randint(0, t, (n, s, s), generator=g)
    return out, batch


def test_loss_parts_weights_and_errors():
    out, batch = _loss_inputs(3, 3)
    total, parts = unet_loss(out, batch, LossWeights())
    assert set(parts) == {"seg_ce", "seg_dice", "tp_ce", "tp_dice"}
    torch.testing.assert_close(total.detach(), sum(parts.values()))
    total.backward()
    assert out["seg"].grad is not None and out["tp"].grad is not None
    w = LossWeights(seg_ce=2.0, seg_dice=0.0, tp_ce=0.0, tp_dice=0.5)
    total2, parts2 = unet_loss(out, batch, w)
    torch.testing.assert_close(total2.detach(), 2 * parts2["seg_ce"] + 0.5 * parts2["tp_dice"])
    # perfect logits give a dice loss near 0, their opposite near 1
    onehot = torch.nn.functional.one_hot(batch["seg"], 3).permute(0, 3, 1, 2).float()
    assert soft_dice_loss(onehot * 50, batch["seg"]) < 0.01
    assert soft_dice_loss(-onehot * 50, batch["seg"]) > 0.99
    # bf16 logits are lifted to float32
    bf = {"seg": out["seg"].detach().bfloat16()}
    assert unet_loss(bf, {"seg": batch["seg"]}, LossWeights())[0].dtype == torch.float32
    with pytest.raises(ValueError, match="class ids 0..2"):
        unet_loss({"seg": out["seg"][:, :2]}, {"seg": batch["seg"]}, LossWeights())
    with pytest.raises(ValueError, match="targets='unet'"):
        unet_loss(out, {"np": batch["seg"]}, LossWeights())
    with pytest.raises(ValueError, match="no 'tp'"):
        unet_loss(out, {"seg": batch["seg"]}, LossWeights())


def _disc_layout(size: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size]
    inst = np.zeros((size, size), np.int32)
    for k in range(1, 5):
        cy, cx = rng.uniform(30, size - 30, 2)
        r = rng.uniform(12, 24)
        inst[(yy - cy) ** 2 + (xx - cx) ** 2 <= r * r] = k
    return inst


def test_a_few_steps_reduce_the_loss_on_a_tiny_set():
    torch.manual_seed(0)
    model = build_unet(_cfg(mode="fast", unet_levels=4, unet_classes=2))
    inp = 160  # smaller than the 256 window to stay fast; the model keeps the same context margin
    m = (model.input_size - model.output_size) // 2
    out = inp - 2 * m
    insts = [_disc_layout(inp, s) for s in range(2)]
    x = torch.stack([torch.from_numpy(render_he(i, seed=s)).permute(2, 0, 1) for s, i in enumerate(insts)])
    x = x.float() / 255.0
    seg = torch.stack([torch.from_numpy((i[m : m + out, m : m + out] > 0).astype(np.int64)) for i in insts])
    assert 0.05 < seg.float().mean() < 0.95  # both classes present
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    losses = []
    for _ in range(8):
        total, _parts = unet_loss(model(x), {"seg": seg}, LossWeights())
        opt.zero_grad()
        total.backward()
        opt.step()
        losses.append(float(total.detach()))
    assert np.mean(losses[-2:]) < 0.8 * losses[0], losses


# ---------------------------------------------------------------- instance extraction


def _two_touching_discs(r: int = 24) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    h, w = 4 * r, 6 * r
    yy, xx = np.mgrid[:h, :w]
    a = (yy - 2 * r) ** 2 + (xx - (w // 2 - r)) ** 2 <= r * r
    b = (yy - 2 * r) ** 2 + (xx - (w // 2 + r - 1)) ** 2 <= r * r
    return a, b, a | b


def _matches(inst: np.ndarray, discs: list[np.ndarray], min_iou: float = 0.9) -> bool:
    ids = [i for i in np.unique(inst) if i]
    if len(ids) != len(discs):
        return False
    for d in discs:
        best = max(((inst == i) & d).sum() / ((inst == i) | d).sum() for i in ids)
        if best < min_iou:
            return False
    return True


def test_two_class_watershed_splits_touching_discs():
    a, b, fg = _two_touching_discs()
    assert (a & b).sum() > 0  # the discs really touch (overlap by a sliver)
    prob = np.stack([1 - fg * 0.9, fg * 0.9], -1).astype(np.float32)
    inst = instances_from_semantic(prob, unet_min_peak_distance=10, min_object_area=20)
    assert inst.dtype == np.int32
    assert _matches(inst, [a, b])
    # without splitting: one blob (the classic contour-counting behaviour)
    merged = instances_from_semantic(prob, unet_min_peak_distance=0)
    assert merged.max() == 1 and (merged > 0).sum() == fg.sum()


def test_two_class_keeps_one_elongated_crypt_whole_and_fills_its_lumen():
    yy, xx = np.mgrid[:80, :200]
    crypt = ((xx - 100) / 85.0) ** 2 + ((yy - 40) / 22.0) ** 2 <= 1
    lumen = ((xx - 100) / 30.0) ** 2 + ((yy - 40) / 6.0) ** 2 <= 1
    prob = np.zeros((80, 200, 2), np.float32)
    prob[..., 1] = crypt & ~lumen
    prob[..., 0] = 1 - prob[..., 1]
    inst = instances_from_semantic(prob, unet_min_peak_distance=15, unet_max_hole_area=2000)
    assert inst.max() == 1 and (inst > 0).sum() == crypt.sum()
    kept = instances_from_semantic(prob, unet_min_peak_distance=0, unet_max_hole_area=0)
    assert (kept > 0).sum() == (crypt & ~lumen).sum()


@pytest.mark.parametrize("neck, expect", [(8, 2), (30, 1)])
def test_two_class_split_depends_on_the_neck_width(neck, expect):
    """Two discs (r = 25) joined by a bar: a narrow neck is two crypts, a wide one a single lobed crypt."""
    yy, xx = np.mgrid[:80, :160]
    fg = ((yy - 40) ** 2 + (xx - 45) ** 2 <= 625) | ((yy - 40) ** 2 + (xx - 115) ** 2 <= 625)
    fg |= (np.abs(yy - 40) <= neck // 2) & (xx >= 45) & (xx <= 115)
    prob = np.stack([~fg, fg], -1).astype(np.float32)
    inst = instances_from_semantic(prob, unet_min_peak_distance=10, unet_split_ratio=0.4)
    assert inst.max() == expect
    assert (inst > 0).sum() == fg.sum()


def test_three_class_seeds_from_boundary_split_touching_discs():
    import cv2

    a, b, fg = _two_touching_discs()
    rim = np.zeros_like(fg)
    for d in (a, b):
        rim |= d & ~(cv2.erode(d.astype(np.uint8), np.ones((7, 7), np.uint8)) > 0)
    prob = np.zeros(fg.shape + (3,), np.float32)
    prob[..., 0] = ~fg
    prob[..., 1] = fg & ~rim
    prob[..., 2] = rim
    inst = instances_from_semantic(prob, min_object_area=20, unet_min_seed_area=10)
    assert _matches(inst, [a, b])
    # a small crypt predicted entirely as boundary is kept; a speck is removed by min_object_area
    prob2 = prob.copy()
    prob2[5:15, 5:15] = (0, 0, 1)
    prob2[2:4, 80:82] = (0, 1, 0)
    inst2 = instances_from_semantic(prob2, min_object_area=20, unet_min_seed_area=10)
    assert inst2.max() == 3 and (inst2 == inst2[10, 10]).sum() == 100 and inst2[3, 81] == 0


def test_semantic_postproc_params_and_errors():
    params = UNetPostproc().pixels(0.5)
    assert params["unet_min_peak_distance"] == 40 and params["unet_min_seed_area"] == 120
    a, b, fg = _two_touching_discs()
    prob = np.stack([1.0 - fg, fg], -1).astype(np.float32)
    inst = instances_from_semantic(prob, **UNetPostproc().pixels(2.0))
    assert _matches(inst, [a, b])
    with pytest.raises(ValueError, match="seg_prob"):
        instances_from_semantic(prob[..., :1])
    empty = instances_from_semantic(np.stack([np.ones((8, 8)), np.zeros((8, 8))], -1))
    assert empty.shape == (8, 8) and empty.max() == 0
