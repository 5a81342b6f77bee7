"""The README's first command (after the install) runs: sample slide -> run_infer.py wsi -> counts."""

from __future__ import annotations

import csv
import json
import subprocess
import sys


def test_quickstart_runs_end_to_end(tmp_path, repo_root) -> None:
    out = tmp_path / "qs"
    proc = subprocess.run(
        [sys.executable, str(repo_root / "examples" / "quickstart.py"), f"--output_dir={out}"],
        cwd=repo_root,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    rows = list(csv.DictReader(open(out / "results" / "counts.csv")))
    assert len(rows) == 1 and rows[0]["status"] == "ok"
    total = int(rows[0]["total"])
    # the per-type columns (benign, malignant, untyped) add up to the total
    assert sum(int(rows[0][c]) for c in ("benign", "malignant", "untyped")) == total
    assert f"{total} crypts" in proc.stdout
    res = out / "results" / "colon_sample"
    lines = (res / "instances.jsonl").read_text().splitlines()
    assert len(lines) == total
    geo = json.loads((res / "colon_sample.geojson").read_text())
    assert len(geo["features"]) == total
    assert (res / "thumbnail.png").stat().st_size > 0
