"""Cohorts on Ray (``run_infer.py wsi --ray=...``): a 2-CPU local Ray instance, tiny slides.

Ray is an optional extra; without it the Ray tests skip with the install hint,
and only the "Ray missing" error path runs. One Ray instance serves the whole
module (starting one costs seconds); ``run_cohort`` then joins it.
"""

from __future__ import annotations

import csv
import importlib.util
import logging
import re
import sys
from pathlib import Path

import numpy as np
import pytest
from cohort_helpers import OracleSource, SlowOracle, make_slides, output_bytes, wsi_opts

from hovercrypt.infer.wsi_cli import run_wsi
from hovercrypt.testing.slides import random_layout, write_layout_slide

pytestmark = pytest.mark.filterwarnings("ignore:Corrupt EXIF data:UserWarning")  # broken.svs
SKIP = 'Ray is not installed (optional extra: pip install -e ".[ray]"); the cohort tests need it'


@pytest.fixture(scope="module")
def ray_local():
    """A local Ray instance: 2 worker CPUs, a small object store, no dashboard."""
    ray = pytest.importorskip("ray", reason=SKIP)
    import cohort_helpers
    from ray import cloudpickle

    cloudpickle.register_pickle_by_value(cohort_helpers)  # the workers cannot import the tests folder
    kw = {"num_cpus": 2, "object_store_memory": 80 << 20, "include_dashboard": False}
    try:
        ray.init(logging_level=logging.WARNING, **kw)
    except Exception:  # Ray gives its node a fixed 30 s to start; a busy 2-core machine can miss it
        ray.shutdown()
        ray.init(logging_level=logging.WARNING, **kw)
    yield ray
    ray.shutdown()


@pytest.fixture(scope="module")
def cohort(tmp_path_factory) -> tuple[list[Path], np.ndarray, Path]:
    d = tmp_path_factory.mktemp("raycohort")
    slides, ellipses = make_slides(d / "in")
    run_wsi(slides, d / "serial", SlowOracle(ellipses), wsi_opts())
    return slides, ellipses, d / "serial"


def test_ray_run_matches_serial(ray_local, cohort, tmp_path):
    """2 workers over two pyramids and a corrupt file: the same counts.csv and files as serially."""
    from hovercrypt.infer.cohort import run_cohort

    slides, ellipses, serial = cohort
    res = run_cohort(slides, tmp_path, OracleSource(ellipses), wsi_opts(), 3, ray_workers=2)
    assert [r.slide for r in res] == ["a", "b", "broken"]
    assert [r.status for r in res][:2] == ["ok", "ok"] and res[2].status.startswith("error: ")
    assert "broken.svs" in res[2].status
    assert output_bytes(tmp_path, ["a", "b"]) == output_bytes(serial, ["a", "b"])
    assert (tmp_path / "broken" / "error.json").is_file()


def test_killed_worker_is_retried_and_resumes(ray_local, cohort, tmp_path):
    """The worker dies after slide a's first committed region; Ray retries, the retry continues."""
    from hovercrypt.infer.cohort import run_cohort

    slides, ellipses, _ = cohort
    marker = tmp_path / "killed"
    source = OracleSource(ellipses, str(marker), str(tmp_path / "a" / "parts"))
    # the margin rule (follow_um=0): the second region then runs tiles of its own, so the predictor,
    # which does the killing, is called after the first commit (following crypts, the first region
    # already runs every tile of this small slide)
    res = run_cohort(slides[:1], tmp_path, source, wsi_opts(follow_um=0.0), 3, ray_workers=2)
    assert marker.is_file()  # the kill happened
    assert res[0].status == "ok"
    serial = tmp_path / "serial_margin_rule"
    run_wsi(slides[:1], serial, SlowOracle(ellipses), wsi_opts(follow_um=0.0))
    got, want = output_bytes(tmp_path, ["a"]), output_bytes(serial, ["a"])
    assert {k: v for k, v in got.items() if k.startswith("a/")} == {
        k: v for k, v in want.items() if k.startswith("a/")
    }
    rows = [list(csv.reader(open(d / "counts.csv"))) for d in (tmp_path, serial)]
    assert rows[0] == rows[1][:2]  # header and slide a
    # the retry found the region committed by the killed attempt and did only the rest
    plans = re.findall(r"\ba: .* (\d+) regions \((\d+) to do\)", (tmp_path / "wsi.log").read_text())
    (n, first), (n2, second) = [tuple(map(int, p)) for p in plans]
    assert n == n2 == first and 0 < second < n


def _main(repo_root: Path):
    spec = importlib.util.spec_from_file_location("run_infer", repo_root / "run_infer.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod.main


def test_cli_ray_local_matches_serial_with_a_network(ray_local, tmp_path, repo_root):
    """``--ray=local`` with a real (tiny, random) checkpoint: same outputs as without Ray, exit code 1."""
    import torch

    from hovercrypt.config import Config, ModelConfig
    from hovercrypt.models import build_model
    from hovercrypt.models.checkpoint import save_checkpoint

    torch.manual_seed(0)
    cfg = Config(
        proc_mpp=1.0,
        model=ModelConfig(
            encoder="resnet10t", mode="fast", nr_types=3, decoder_width=0.125, dense_units=(1, 1)
        ),
    )
    cfg = cfg.replace(data={**cfg.to_dict()["data"], "patch_size": 256})
    save_checkpoint(tmp_path / "m.pt", build_model(cfg.model), cfg)
    src = tmp_path / "in"
    for k in range(2):
        lay = random_layout(512, 512, [(32, 32, 480, 480)], 8, (28.0, 56.0), seed=10 + k, gap=16)
        write_layout_slide(src / f"s{k}.tif", lay, 0.5, downsamples=(1,))
    (src / "broken.svs").write_bytes(b"II*\x00" + bytes(range(256)) * 40)
    main = _main(repo_root)
    common = [
        "wsi",
        f"--input_dir={src}",
        f"--model_path={tmp_path / 'm.pt'}",
        "--proc_mpp=2.0",
        "--tile_shape=64",
        "--workers=0",
        "--batch_size=4",
    ]
    assert main([*common, f"--output_dir={tmp_path / 'serial'}"]) == 1
    # one slide task at a time (2 CPUs each): one worker process loads torch, not two (CPU is scarce)
    assert main([*common, f"--output_dir={tmp_path / 'ray'}", "--ray=local", "--ray_cpus_per_slide=2"]) == 1
    a, b = tmp_path / "serial", tmp_path / "ray"
    assert (a / "counts.csv").read_bytes() == (b / "counts.csv").read_bytes()
    for k in range(2):
        assert (a / f"s{k}" / "instances.jsonl").read_bytes() == (
            b / f"s{k}" / "instances.jsonl"
        ).read_bytes()
    log = (b / "wsi.log").read_text()
    assert "ray: 3 slide task(s)" in log and "broken.svs" in log


def test_cli_ray_errors_are_one_line(tmp_path, repo_root, monkeypatch):
    """Without Ray installed, --ray is a one-line error with the install hint; so is --gpu with --ray."""
    main = _main(repo_root)
    src = tmp_path / "in"
    src.mkdir()
    (src / "x.png").write_bytes(b"")
    base = ["wsi", f"--input_dir={src}", f"--output_dir={tmp_path / 'o'}"]
    monkeypatch.setitem(sys.modules, "ray", None)  # import ray -> ImportError, as when not installed
    assert main([*base, "--ray=local"]) == 2
    assert 'pip install -e ".[ray]"' in (tmp_path / "o" / "wsi.log").read_text()
    assert main([*base, "--ray=local", "--gpu=0"]) == 2
    assert "with --ray give --ray_gpus_per_slide=1" in (tmp_path / "o" / "wsi.log").read_text()
