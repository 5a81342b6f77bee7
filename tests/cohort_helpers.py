"""Small slides and test predictors for the concurrency and Ray tests (not collected by pytest).

Two synthetic pyramids whose tissue and crypts lie in different places of the
same 4096 x 1024 px frame, so one oracle (holding both layouts) serves both
slides exactly: a slide's tiles near its own tissue only see its own crypts.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from hovercrypt.config import InferConfig, PostprocConfig
from hovercrypt.infer.wsi import WsiOptions
from hovercrypt.io.type_info import TypeInfo
from hovercrypt.testing.oracle import OraclePredictor
from hovercrypt.testing.slides import random_layout, write_layout_slide

MPP, PROC_MPP = 0.5, 2.0
F = PROC_MPP / MPP
W, H = 4096, 1024
TISSUE = {"a": (64, 64, 1400, 960), "b": (2700, 64, 4032, 960)}  # level-0 px, far apart
N_CRYPTS = {"a": 14, "b": 9}
SLIDE_OUTPUTS = ("instances.jsonl", "thumbnail.png", "tissue_mask.png", "done.json")


def wsi_opts(workers: int = 0, **infer) -> WsiOptions:
    return WsiOptions(
        proc_mpp=PROC_MPP,
        postproc=PostprocConfig(min_object_area_um2=100.0).pixels(PROC_MPP),
        type_info=TypeInfo.default(3),
        # 1024 x 256 processing px: 4 regions per slide
        infer=InferConfig(tile_shape=256, margin_um=80.0, postproc_workers=workers, **infer),
        progress=False,
    )


def make_slides(d: Path, corrupt: bool = True) -> tuple[list[Path], np.ndarray]:
    """``a.tif``, ``b.tif`` (and ``broken.svs``) in ``d``; returns them and the oracle's ellipses."""
    d.mkdir(parents=True, exist_ok=True)
    paths, ellipses = [], []
    for seed, (name, box) in enumerate(TISSUE.items()):
        lay = random_layout(W, H, [box], N_CRYPTS[name], (28.0, 56.0), seed=seed, gap=16, n_types=2)
        paths.append(write_layout_slide(d / f"{name}.tif", lay, MPP, downsamples=(1, 4)))
        ellipses.append(lay.to_processing(F))
    if corrupt:
        (d / "broken.svs").write_bytes(b"II*\x00" + bytes(range(256)) * 40)
        paths.append(d / "broken.svs")
    return sorted(paths), np.concatenate(ellipses)


class SlowOracle(OraclePredictor):
    """The oracle, slowed down so that concurrent runs overlap in time."""

    def __init__(self, ellipses: np.ndarray, delay: float = 0.0) -> None:
        super().__init__(ellipses, 160, 128, nr_types=3)
        self.delay = delay

    def predict(self, tiles, origins=None):
        if self.delay:
            time.sleep(self.delay)
        return super().predict(tiles, origins)


class KillOnceOracle(OraclePredictor):
    """Kills its own process (like an OOM kill or a lost node) once the slide has a committed region.

    ``marker`` is created first, so the retried task (in a new worker process) runs normally.
    """

    def __init__(self, ellipses: np.ndarray, marker: Path, parts_dir: Path) -> None:
        super().__init__(ellipses, 160, 128, nr_types=3)
        self.marker, self.parts_dir = Path(marker), Path(parts_dir)

    def predict(self, tiles, origins=None):
        if not self.marker.exists() and any(self.parts_dir.glob("chunk_*.jsonl")):
            self.marker.write_text(str(os.getpid()))
            os._exit(1)
        return super().predict(tiles, origins)


@dataclass
class OracleSource:
    """A ``build(device)`` source for ``run_cohort``: what a checkpoint is for a real model."""

    ellipses: np.ndarray
    kill_marker: str | None = None
    kill_parts_dir: str | None = None

    def build(self, device: str):
        if self.kill_marker:
            return KillOnceOracle(self.ellipses, Path(self.kill_marker), Path(self.kill_parts_dir))
        return SlowOracle(self.ellipses)


def output_bytes(out_dir: Path, names: list[str]) -> dict[str, bytes]:
    """The files that must be byte-identical between runs (done.json without its timings)."""
    import json

    files: dict[str, bytes] = {"counts.csv": (out_dir / "counts.csv").read_bytes()}
    for n in names:
        for f in SLIDE_OUTPUTS:
            data = (out_dir / n / f).read_bytes()
            if f == "done.json":
                d = json.loads(data)
                d.pop("seconds"), d.pop("stages")
                data = json.dumps(d, sort_keys=True).encode()
            files[f"{n}/{f}"] = data
    return files
