"""Shared test setup: offline hubs, the shared data folder, tiny synthetic clips."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

# Nothing may reach a model hub, in any test.
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ.setdefault("OMP_NUM_THREADS", "2")

REPO = Path(__file__).resolve().parent.parent


def shared_dir() -> Path:
    """../shared beside the checkout (CI lays a copy there); FRDM_SHARED overrides."""
    return Path(os.environ.get("FRDM_SHARED", REPO.parent / "shared"))


@pytest.fixture(scope="session")
def shared_data() -> Path:
    path = shared_dir() / "data"
    if not path.is_dir():
        pytest.skip(f"shared data folder {path} not present")
    return path


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return REPO
