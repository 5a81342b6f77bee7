"""Resume: a run stopped after a few committed chunks, then resumed, gives byte-identical outputs."""

from __future__ import annotations

from pathlib import Path

import pytest

from hovercrypt.config import InferConfig, PostprocConfig
from hovercrypt.infer.wsi import WsiOptions
from hovercrypt.infer.wsi_cli import run_wsi
from hovercrypt.io.type_info import TypeInfo
from hovercrypt.testing.interrupt import RunInterrupted, stop_after
from hovercrypt.testing.oracle import OraclePredictor
from hovercrypt.testing.slides import boundary_crypts, random_layout, write_layout_slide

MPP, PROC_MPP, SIZE = 0.5, 2.0, 4096
OUTPUTS = ("instances.jsonl", "r.geojson", "thumbnail.png", "tissue_mask.png")


def _opts(workers: int = 0, stop_after_regions: int | None = None) -> WsiOptions:
    hook = stop_after(stop_after_regions) if stop_after_regions else None
    return WsiOptions(
        proc_mpp=PROC_MPP,
        postproc=PostprocConfig(min_object_area_um2=100.0).pixels(PROC_MPP),
        type_info=TypeInfo.default(0),
        infer=InferConfig(tile_shape=256, margin_um=80.0, postproc_workers=workers),
        progress=False,
        on_region_committed=hook,
    )


@pytest.fixture(scope="module")
def slide(tmp_path_factory):
    d = tmp_path_factory.mktemp("resume")
    tissue = [(128, 128, 3968, 3968)]
    fixed = boundary_crypts(tissue, SIZE, SIZE, [1024], (30.0, 60.0), seed=2)
    layout = random_layout(SIZE, SIZE, tissue, 150, (30.0, 60.0), seed=5, gap=16, fixed=fixed)
    return write_layout_slide(d / "r.tif", layout, MPP), layout


def _bytes(d: Path) -> dict[str, bytes]:
    files = {n: (d / "r" / n).read_bytes() for n in OUTPUTS}
    files["counts.csv"] = (d / "counts.csv").read_bytes()
    return files


def test_resume_after_interruption_is_identical(slide, tmp_path):
    path, layout = slide
    e = layout.to_processing(PROC_MPP / MPP)

    clean = OraclePredictor(e, 160, 128)
    (res,) = run_wsi([path], tmp_path / "clean", clean, _opts(workers=2), pool_kind="process")
    assert res.status == "ok" and res.total == len(layout.ellipses)

    out = tmp_path / "resumed"
    first = OraclePredictor(e, 160, 128)
    with pytest.raises(RunInterrupted):
        run_wsi([path], out, first, _opts(workers=1, stop_after_regions=4), pool_kind="thread")
    parts = sorted((out / "r" / "parts").glob("chunk_*.jsonl"))
    assert len(parts) >= 4
    assert not (out / "r" / "instances.jsonl").exists() and not (out / "counts.csv").exists()

    second = OraclePredictor(e, 160, 128)
    (res2,) = run_wsi([path], out, second, _opts(workers=2), resume=True, pool_kind="thread")
    assert res2.total == res.total
    assert _bytes(out) == _bytes(tmp_path / "clean")
    # finished chunks were not predicted again
    assert 0 < second.tiles_seen < clean.tiles_seen
    assert first.tiles_seen + second.tiles_seen >= clean.tiles_seen

    # resuming a finished run does no work and changes nothing
    third = OraclePredictor(e, 160, 128)
    before = _bytes(out)
    run_wsi([path], out, third, _opts(), resume=True)
    assert third.tiles_seen == 0 and _bytes(out) == before


def test_changed_settings_restart_instead_of_mixing(slide, tmp_path):
    path, layout = slide
    e = layout.to_processing(PROC_MPP / MPP)
    with pytest.raises(RunInterrupted):
        run_wsi([path], tmp_path, OraclePredictor(e, 160, 128), _opts(stop_after_regions=2))
    other = _opts()
    other.infer.tile_shape = 512  # different chunks: the old parts must not be reused
    orc = OraclePredictor(e, 160, 128)
    (res,) = run_wsi([path], tmp_path, orc, other, resume=True)
    assert res.total == len(layout.ellipses)
    fresh = OraclePredictor(e, 160, 128)
    run_wsi([path], tmp_path / "fresh", fresh, other)
    assert orc.tiles_seen == fresh.tiles_seen


@pytest.mark.parametrize(
    ("attr", "value"), [("tta", True), ("backend", "openvino"), ("precision", "bf16")]
)
def test_resume_with_map_settings_toggled_restarts(slide, tmp_path, attr, value):
    """Flip TTA, another backend or bf16 arithmetic change the maps, so regions predicted
    without them are not reused with them."""
    path, layout = slide
    e = layout.to_processing(PROC_MPP / MPP)
    with pytest.raises(RunInterrupted):
        run_wsi([path], tmp_path, OraclePredictor(e, 160, 128), _opts(stop_after_regions=2))
    again = OraclePredictor(e, 160, 128)
    setattr(again, attr, value)  # the oracle ignores it; only the manifest sees the change
    (res,) = run_wsi([path], tmp_path, again, _opts(), resume=True)
    fresh = OraclePredictor(e, 160, 128)
    (ref,) = run_wsi([path], tmp_path / "fresh", fresh, _opts())
    assert res.total == ref.total == len(layout.ellipses)
    assert again.tiles_seen == fresh.tiles_seen  # nothing was reused
