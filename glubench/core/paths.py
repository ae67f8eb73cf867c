"""Where glubench finds its configs and keeps its caches (no torch)."""

from __future__ import annotations

import os
from pathlib import Path

CONF_DIR = Path(__file__).resolve().parents[1] / "conf"
"""The Hydra config folder shipped inside the package (so a wheel runs anywhere)."""


def default_cache_dir() -> Path:
    """``$GLUBENCH_CACHE``, else ``~/.cache/glubench``."""
    return Path(os.path.expanduser(os.environ.get("GLUBENCH_CACHE") or "~/.cache/glubench"))
