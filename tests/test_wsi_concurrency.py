"""Concurrent runs on one output folder: per-slide OS locks, results taken from disk, counts.csv.

Tests the guarantees without Ray: a slide is only processed while its lock is
held, a run defers locked slides and reuses what the holder finished, and
``counts.csv`` is rebuilt from the slide folders, so it is right whoever writes it last.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from cohort_helpers import SlowOracle, make_slides, output_bytes, wsi_opts

from hovercrypt.infer.slide_jobs import SlideLock, result_on_disk
from hovercrypt.infer.wsi import process_slide
from hovercrypt.infer.wsi_cli import run_wsi
from hovercrypt.infer.wsi_outputs import SlideResult

pytestmark = pytest.mark.filterwarnings("ignore:Corrupt EXIF data:UserWarning")  # broken.svs


@pytest.fixture(scope="module")
def cohort(tmp_path_factory) -> tuple[list[Path], np.ndarray, Path, int]:
    """The slides, the oracle's ellipses, and a serial reference run (its folder, its tile count)."""
    d = tmp_path_factory.mktemp("cohort")
    slides, ellipses = make_slides(d / "in")
    orc = SlowOracle(ellipses)
    res = run_wsi(slides, d / "serial", orc, wsi_opts())
    assert [r.status == "ok" for r in res] == [True, True, False]  # a, b, broken
    assert res[0].total > 0 and res[1].total > 0 and res[0].total != res[1].total
    return slides, ellipses, d / "serial", orc.tiles_seen


def test_locked_slide_is_deferred_then_taken_from_the_holder(cohort, tmp_path, caplog):
    """While another holder has slide a, the run does b first, waits, then reuses a's result."""
    slides, ellipses, serial, _ = cohort
    out = tmp_path / "out"
    (out / "a").mkdir(parents=True)
    lock = SlideLock(out / "a")
    assert lock.acquire(wait=False)
    orc = SlowOracle(ellipses)
    box: dict[str, list[SlideResult]] = {}
    th = threading.Thread(
        target=lambda: box.setdefault("res", run_wsi(slides, out, orc, wsi_opts()))
    )
    caplog.set_level("INFO", logger="hovercrypt.wsi")
    th.start()
    try:
        deadline = time.monotonic() + 120
        while not (out / "b" / "done.json").is_file() or "waiting for its lock" not in caplog.text:
            assert th.is_alive() and time.monotonic() < deadline
            time.sleep(0.05)
        # the message names the slide, the process holding it and the lock file
        busy = [r.getMessage() for r in caplog.records if "locked by" in r.getMessage()]
        assert busy == [
            f"a: locked by {lock.holder()} ({out / 'a' / '.lock'}); doing the other slides first, "
            "then waiting for it"
        ]
        assert f"pid {os.getpid()} on host" in busy[0]
        assert orc.tiles_seen > 0 and not (out / "a" / "done.json").exists()
        tiles_b = orc.tiles_seen
        # "the other run" finishes slide a while holding its lock
        mine = process_slide(slides[0], out, SlowOracle(ellipses), wsi_opts())
    finally:
        lock.release()
    th.join(120)
    res = box["res"]
    assert [r.slide for r in res] == ["a", "b", "broken"]
    assert orc.tiles_seen == tiles_b  # slide a was not predicted again
    assert res[0].total == mine.total and res[0].status == "ok"
    assert output_bytes(out, ["a", "b"]) == output_bytes(serial, ["a", "b"])
    assert not (out / "a" / ".lock.owner").exists()


def test_outcomes_on_disk_and_counts(cohort, tmp_path):
    """Each slide's outcome is a file; counts.csv is read back from them; a later success clears a failure."""
    slides, ellipses, serial, _ = cohort
    out = tmp_path / "out"
    run_wsi(slides, out, SlowOracle(ellipses), wsi_opts())
    broken = result_on_disk(out / "broken")
    assert broken.status.startswith("error: ") and "broken.svs" in broken.status
    assert (out / "counts.csv").read_bytes() == (serial / "counts.csv").read_bytes()
    # a failure recorded by another run wins over an older success in the same folder ...
    (out / "a" / "error.json").write_text(SlideResult(slide="a", status="error: a.tif: gone").to_json())
    assert result_on_disk(out / "a").status == "error: a.tif: gone"
    # ... until a run succeeds on the slide (here by reusing its finished result)
    orc = SlowOracle(ellipses)
    run_wsi(slides, out, orc, wsi_opts(), resume=True)
    assert orc.tiles_seen == 0 and not (out / "a" / "error.json").exists()
    assert (out / "counts.csv").read_bytes() == (serial / "counts.csv").read_bytes()
    # a damaged outcome file is that slide's error row, not a crash of the whole table
    (out / "b" / "done.json").write_text("{not json")
    assert "unreadable" in result_on_disk(out / "b").status


_CHILD = textwrap.dedent(
    """
    import json, sys, time
    from pathlib import Path
    import numpy as np
    sys.path.insert(0, {tests!r})
    from cohort_helpers import SlowOracle, wsi_opts
    from hovercrypt.infer.wsi_cli import run_wsi

    out, go, ready = Path({out!r}), Path({go!r}), Path(sys.argv[1])
    orc = SlowOracle(np.load({ellipses!r}), delay=0.2)
    ready.write_text("ready")
    while not go.exists():
        time.sleep(0.01)
    res = run_wsi([Path(p) for p in {slides!r}], out, orc, wsi_opts())
    print(json.dumps({{"tiles": orc.tiles_seen, "status": [r.status for r in res]}}))
    """
)


def test_two_concurrent_runs_process_every_slide_once(cohort, tmp_path, repo_root):
    """Two processes started together on one folder: each slide predicted once, outputs as serial."""
    slides, ellipses, serial, serial_tiles = cohort
    np.save(tmp_path / "e.npy", ellipses)
    out, go = tmp_path / "out", tmp_path / "go"
    code = _CHILD.format(
        tests=str(repo_root / "tests"),
        out=str(out),
        go=str(go),
        ellipses=str(tmp_path / "e.npy"),
        slides=[str(p) for p in slides],
    )
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", code, str(tmp_path / f"ready{k}")],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for k in range(2)
    ]
    deadline = time.monotonic() + 300
    while not all((tmp_path / f"ready{k}").exists() for k in range(2)):
        assert all(p.poll() is None for p in procs), [p.communicate() for p in procs]
        assert time.monotonic() < deadline
        time.sleep(0.05)
    go.write_text("go")
    outs = [p.communicate(timeout=300) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs
    reports = [json.loads(o.strip().splitlines()[-1]) for o, _ in outs]
    assert all(r["status"] == ["ok", "ok", reports[0]["status"][2]] for r in reports)
    assert reports[0]["status"][2].startswith("error:")
    # every tissue tile went through a network exactly once, across both runs
    assert reports[0]["tiles"] + reports[1]["tiles"] == serial_tiles
    assert output_bytes(out, ["a", "b"]) == output_bytes(serial, ["a", "b"])
    assert not list(out.glob("*/parts"))
