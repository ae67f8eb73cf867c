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


def _markdown_rows(md: str, title_prefix: str = "|  | variant") -> list[list[str]]:
    """The body rows (cells stripped) of the first markdown table in ``md`` whose header line starts
    with ``title_prefix`` (default: glubench-report's summary table)."""
    lines = md.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(title_prefix))
    rows = []
    for line in lines[start + 2:]:
        if not line.startswith("|"):
            break
        rows.append([c.strip() for c in line.strip("|").split("|")])
    return rows


@pytest.fixture
def markdown_table():
    """The markdown-table reader: ``markdown_table(md, title_prefix="|  | variant") -> rows``."""
    return _markdown_rows


@pytest.fixture
def glubench_console_logging():
    """For tests that call a command's ``main`` (which runs :func:`glubench.core.logging.configure`):
    undo that configuration afterwards, so its handlers, bound to this test's captured stdout and
    stderr, do not outlive the test."""
    import logging

    logger = logging.getLogger("glubench")
    before = (list(logger.handlers), logger.level, logger.propagate, getattr(logger, "_glubench_configured", False))
    yield
    logger.handlers[:] = before[0]
    logger.setLevel(before[1])
    logger.propagate = before[2]
    logger._glubench_configured = before[3]
