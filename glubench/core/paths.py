"""Where glubench finds its configs and keeps its caches (no torch)."""

from __future__ import annotations

import os
from pathlib import Path


def _conf_dir() -> Path:
    """The Hydra config folder: the installed package's ``glubench/conf/``, else the checkout's ``conf/``.

    The configs live at the top level of the repository (``conf/``, next to ``glubench/``), and the wheel ships
    them inside the package as ``glubench/conf/`` (pyproject.toml's hatch ``sources`` mapping) so that an
    installed wheel runs from any folder.  An editable install (``pip install -e .``) imports ``glubench/``
    from the checkout, where no ``glubench/conf/`` exists, so it reads the checkout's ``conf/`` and an edit
    to a yaml file takes effect without reinstalling.  Every entry point and test takes the folder from here
    (``CONF_DIR``), so this is the one place that decides.
    """
    package = Path(__file__).resolve().parents[1]
    shipped = package / "conf"
    return shipped if shipped.is_dir() else package.parent / "conf"


CONF_DIR = _conf_dir()
"""The Hydra config folder every entry point composes from (see ``_conf_dir``)."""


def default_cache_dir() -> Path:
    """``$GLUBENCH_CACHE``, else ``~/.cache/glubench``."""
    return Path(os.path.expanduser(os.environ.get("GLUBENCH_CACHE") or "~/.cache/glubench"))
