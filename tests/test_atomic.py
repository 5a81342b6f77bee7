"""Atomic writes: an interrupted write keeps the old content and leaves no temp file behind."""

from __future__ import annotations

import os

import numpy as np
import pytest

from hovercrypt.io.atomic import atomic_save_npy, atomic_write, atomic_write_text


def test_interrupted_write_keeps_old_content(tmp_path) -> None:
    target = tmp_path / "result.txt"
    atomic_write_text(target, "old")
    with pytest.raises(KeyboardInterrupt), atomic_write(target, "w") as f:
        f.write("half of the new")
        raise KeyboardInterrupt
    assert target.read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["result.txt"]


def test_written_files_are_complete_and_shareable(tmp_path) -> None:
    arr = np.arange(12, dtype=np.int32).reshape(3, 4)
    atomic_save_npy(tmp_path / "sub" / "a.npy", arr)
    assert np.array_equal(np.load(tmp_path / "sub" / "a.npy"), arr)
    umask = os.umask(0)
    os.umask(umask)
    assert os.stat(tmp_path / "sub" / "a.npy").st_mode & 0o777 == 0o666 & ~umask
