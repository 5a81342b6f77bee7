"""Shared fixtures: the real GlaS and HuBMAP data (skipped with a reason when absent)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
GLAS_DIR = Path(os.environ.get("HOVERCRYPT_GLAS", REPO.parent / "shared" / "data" / "glas" / "train"))


@pytest.fixture(scope="session")
def glas_dir() -> Path:
    """The GlaS training folder from ../shared (tests using it skip when it is missing)."""
    if not (GLAS_DIR / "grade.csv").is_file():
        pytest.skip(f"GlaS data not found at {GLAS_DIR} (set HOVERCRYPT_GLAS or add ../shared)")
    return GLAS_DIR


HUBMAP_DIR = Path(os.environ.get("HOVERCRYPT_HUBMAP", REPO.parent / "shared" / "data" / "hubmap_crypts"))


@pytest.fixture(scope="session")
def hubmap_dir() -> Path:
    """The HuBMAP crypts folder from ../shared (tests using it skip when it is missing)."""
    if not any(HUBMAP_DIR.glob("*_valid.png")):
        pytest.skip(f"HuBMAP crypt data not found at {HUBMAP_DIR} (set HOVERCRYPT_HUBMAP or add ../shared)")
    return HUBMAP_DIR


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return REPO
