"""run_train.py end to end on the CPU (subprocess), and its option checks."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from test_train import tiny_config, write_patches  # tests/ is on sys.path (rootdir conftest)

from hovercrypt.config import ConfigError


def test_run_train_cpu_end_to_end(tmp_path, repo_root):
    from hovercrypt.models.checkpoint import load_checkpoint
    from hovercrypt.train.logs import CSV_NAME, PLOT_NAME, TB_DIR, read_csv

    data = write_patches(tmp_path / "patches")
    cfg_file = tmp_path / "tiny.json"
    tiny_config(data, epochs=(1, 1)).save_json(cfg_file)
    log = tmp_path / "log"
    cmd = [sys.executable, str(repo_root / "run_train.py"), "--gpu=", f"--config={cfg_file}"]
    cmd += [f"--data_dir={data}", f"--log_dir={log}", "--epochs=1", "--batch_size=1", "--seed=3"]
    cmd += ["--max_steps_per_epoch=1", "--num_workers=0", "--amp=none", "--no_progress"]
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": ""}  # "no GPU" even on a GPU machine
    r = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=tmp_path, timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    notices = [line for line in r.stdout.splitlines() if "training on the CPU" in line]
    assert len(notices) == 1, r.stdout

    ck = load_checkpoint(log / "last.pt")
    assert ck["epoch"] == 2 and ck["phase"] == 1  # both phases ran
    assert ck["config"]["train"]["seed"] == 3  # CLI overrides are stored
    assert [p["batch_size"] for p in ck["config"]["train"]["phases"]] == [1, 1]
    assert (log / "best.pt").is_file()
    rows = read_csv(log / CSV_NAME)
    assert [r["epoch"] for r in rows] == ["1", "2"] and [r["phase"] for r in rows] == ["1", "2"]
    assert all(float(r["valid/np_dice"]) >= 0 for r in rows)
    assert (log / PLOT_NAME).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert list((log / TB_DIR).glob("events.out.tfevents.*"))

    # a second run into the same folder must not overwrite it silently
    from hovercrypt.train.cli import prepare

    with pytest.raises(ConfigError, match="--resume"):
        prepare({"--config": str(cfg_file), "--log_dir": str(log)})
    cfg, log_dir, ck = prepare({"--resume": str(log), "--epochs": "1,2", "--num_workers": "0"})
    assert log_dir == log and ck["epoch"] == 2 and [p.epochs for p in cfg.train.phases] == [1, 2]


def test_prepare_rejects_model_options_on_resume(tmp_path):
    from hovercrypt.train.cli import prepare

    with pytest.raises(ConfigError, match="--encoder"):
        prepare({"--resume": str(tmp_path), "--encoder": "resnet18"})


def _load_run_train(repo_root):
    import importlib.util

    spec = importlib.util.spec_from_file_location("run_train_script", repo_root / "run_train.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_user_errors_give_one_line_and_exit_2(tmp_path, repo_root, capsys):
    """Bad configs, options and data folders: ``error: ...`` naming the culprit, exit 2, no traceback."""
    run_train = _load_run_train(repo_root)
    data = write_patches(tmp_path / "patches")
    good = tmp_path / "tiny.json"
    tiny_config(data).save_json(good)
    broken_json = tmp_path / "broken.json"
    broken_json.write_text('{"name": "x",')
    broken_py = tmp_path / "broken.py"
    broken_py.write_text("CONFIG = undefined_name\n")
    (tmp_path / "empty").mkdir()
    base = ["--gpu=", f"--log_dir={tmp_path / 'log'}", "--no_progress"]
    cases = [
        ([f"--config={broken_json}"], "broken.json"),
        ([f"--config={broken_py}"], "broken.py"),
        ([f"--config={good}", f"--data_dir={tmp_path / 'nope'}"], "nope"),
        ([f"--config={good}", f"--data_dir={tmp_path / 'empty'}"], "empty"),
        ([f"--config={good}", "--epochs=abc"], "--epochs"),
        ([f"--config={good}", "--amp=xx"], "train.amp"),
        ([f"--resume={tmp_path / 'missing.pt'}"], "missing.pt"),
    ]
    for opts, named in cases:
        rc = run_train.main(base + opts)
        err = capsys.readouterr().err.strip()
        assert rc == 2, (opts, err)
        assert err.startswith("error: ") and "\n" not in err and named in err, (opts, err)
        assert "Traceback" not in err


def test_internal_bugs_keep_their_traceback(tmp_path, repo_root, monkeypatch):
    """Only user errors are turned into ``error:`` lines; a bug still raises."""
    import hovercrypt.train.cli as cli

    def boom(*_a, **_k):
        raise ValueError("internal bug")

    monkeypatch.setattr(cli, "prepare", boom)
    run_train = _load_run_train(repo_root)
    with pytest.raises(ValueError, match="internal bug"):
        run_train.main(["--gpu=", f"--log_dir={tmp_path / 'log'}"])
