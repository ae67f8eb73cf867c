"""A command's answer to bad input: one line on stderr, exit 2, and no run folder left behind.

Shared by ``glubench``, ``glubench-eval``, ``glubench-export`` and ``glubench-sample``.  No torch, and no
config registration (importing :mod:`glubench.cli.main` registers the training configs, which the
companion commands' ``--help`` would then list).
"""

from __future__ import annotations

import logging
import shutil
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from hydra.core.hydra_config import HydraConfig

from glubench.core.errors import ConfigError, CorpusUnavailable, TokenizerUnavailable
from glubench.core.secrets import redact
from glubench.train.config_rules import output_dir

T = TypeVar("T")

BAD_INPUT = (ConfigError, TokenizerUnavailable, CorpusUnavailable)


def discard_rejected_run_dir() -> None:
    """Remove the run folder Hydra created for a single run whose config was rejected.

    Only if it holds nothing but Hydra's ``.hydra/`` and the job log: the run never started, and
    an empty folder would read as a failed run in ``glubench-report outputs/``.
    """
    if not HydraConfig.initialized():
        return
    out = output_dir()
    if not out.is_dir() or any(p.name != ".hydra" and p.suffix != ".log" for p in out.iterdir()):
        return
    for handler in logging.getLogger().handlers[:]:  # the job log Hydra opened in it
        if isinstance(handler, logging.FileHandler) and handler.baseFilename.startswith(str(out)):
            logging.getLogger().removeHandler(handler)
            handler.close()
    shutil.rmtree(out, ignore_errors=True)
    cwd = Path.cwd().resolve()
    for parent in out.resolve().parents:  # outputs/<experiment>/<date>/ left empty, up to the launch folder
        if parent == cwd or cwd not in parent.parents:
            break
        try:
            parent.rmdir()
        except OSError:
            break


def reject(command: str, error: Exception) -> None:
    """Print ``<command>: error: <error>`` (secrets redacted) to stderr, drop the empty run folder, exit 2."""
    print(redact(f"{command}: error: {error}"), file=sys.stderr)
    discard_rejected_run_dir()
    sys.exit(2)


def run_or_reject(command: str, fn: Callable[..., T], *args: Any) -> T:
    """``fn(*args)``; bad input (:data:`BAD_INPUT`) ends in :func:`reject` instead of a traceback."""
    try:
        return fn(*args)
    except BAD_INPUT as e:
        reject(command, e)
        raise  # unreachable: reject exits
