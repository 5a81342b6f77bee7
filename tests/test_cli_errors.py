"""``run_infer.py`` option errors: one clear line on stderr and exit code 2, never a traceback.

No model is loaded here: every check happens before the checkpoint is read
(the --model_path given does not exist, so a check that is skipped shows up
as the wrong message).
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest


@pytest.fixture
def run_infer(repo_root: Path):
    spec = importlib.util.spec_from_file_location("run_infer", repo_root / "run_infer.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod.main


@pytest.fixture
def dirs(tmp_path: Path) -> tuple[Path, Path]:
    """An input folder with one (never read) image, and a model path that does not exist."""
    src = tmp_path / "in"
    src.mkdir()
    (src / "a.png").write_bytes(b"")
    return src, tmp_path / "absent.pt"


def _error_line(capsys) -> str:
    lines = [ln for ln in capsys.readouterr().err.splitlines() if ln.strip()]
    assert lines, "no error message"
    return lines[-1]


@pytest.mark.parametrize(
    "option, value, why",
    [
        ("--workers", "abc", "must be an integer, got 'abc'"),
        ("--workers", "-1", "must be >= 0, got -1"),
        ("--follow_um", "abc", "must be a number, got 'abc'"),
        ("--follow_um", "-1", "must be >= 0, got -1"),
    ],
)
def test_wsi_numeric_options_validated(run_infer, dirs, tmp_path, capsys, option, value, why):
    src, model = dirs
    argv = ["wsi", f"--input_dir={src}", f"--output_dir={tmp_path / 'o'}", f"--model_path={model}"]
    assert run_infer([*argv, f"{option}={value}"]) == 2
    assert _error_line(capsys).endswith(f"{option} {why}")


@pytest.mark.parametrize("option", ["--workers", "--follow_um"])
def test_wsi_zero_allowed(run_infer, dirs, tmp_path, capsys, option):
    src, model = dirs
    argv = ["wsi", f"--input_dir={src}", f"--output_dir={tmp_path / 'o'}", f"--model_path={model}"]
    assert run_infer([*argv, f"{option}=0"]) == 2  # gets past the option checks to the missing model
    assert "absent.pt: model checkpoint not found" in _error_line(capsys)


def test_wsi_rejects_input_mpp(run_infer, dirs, tmp_path, capsys):
    src, model = dirs
    argv = ["wsi", f"--input_dir={src}", f"--output_dir={tmp_path / 'o'}", f"--model_path={model}"]
    assert run_infer([*argv, "--input_mpp=0.5"]) == 2
    line = _error_line(capsys)
    assert "--input_mpp" in line and "--slide_mpp" in line


@pytest.mark.parametrize("cmd", ["tile", "wsi"])
def test_output_dir_that_is_a_file(run_infer, dirs, tmp_path, capsys, cmd):
    src, model = dirs
    for out in (tmp_path / "file.txt", tmp_path / "file.txt" / "sub"):  # the file itself, or below it
        (tmp_path / "file.txt").write_text("x")
        assert run_infer([cmd, f"--input_dir={src}", f"--output_dir={out}", f"--model_path={model}"]) == 2
        line = _error_line(capsys)
        assert line.startswith(f"error: {out}: ") and "--output_dir" in line, line
        assert (tmp_path / "file.txt").read_text() == "x"
