"""Test setup: an isolated token cache, W&B offline, and a small CPU thread count."""

import os
import tempfile
from pathlib import Path

import pytest

# Set before anything imports glubench or wandb, and inherited by subprocess tests.
os.environ.setdefault("GLUBENCH_CACHE", tempfile.mkdtemp(prefix="glubench-test-cache-"))
os.environ["WANDB_MODE"] = "offline"
os.environ["WANDB_SILENT"] = "true"
os.environ.setdefault("WANDB_DISABLE_GIT", "true")

import glubench.train.schema  # noqa: E402, F401  (registers the typed config schema for hydra.compose)

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"


@pytest.fixture
def shared_data() -> Path:
    """``../shared/data`` beside the checkout; tests that need it skip when it is absent."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"real corpora not found at {SHARED_DATA} (CI provides ../shared/data)")
    return SHARED_DATA
