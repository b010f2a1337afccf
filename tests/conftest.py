"""Shared test set-up: no test may reach the network, and the real data lies beside the repo."""

import os
from pathlib import Path

import pytest

# Set before transformers / datasets / huggingface_hub are imported by any test.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
REPO_ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def shared_data() -> Path:
    if not SHARED_DATA.exists():
        pytest.fail(f"the real data folder {SHARED_DATA} is missing: clone the repo next to shared/")
    return SHARED_DATA
