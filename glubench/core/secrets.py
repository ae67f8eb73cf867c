"""Secrets never reach logs, results or printed configs.

A secret is the value of any environment variable whose name contains KEY, TOKEN or SECRET
(``WANDB_API_KEY``, ``HF_TOKEN``, ...), plus the W&B password in ``~/.netrc``.  Every config
that is logged or written goes through :func:`redact`; :func:`redact_files` cleans the config
copies Hydra saves; :func:`redacted_argv` hides the command line from W&B's run metadata; and
:func:`redacted_stdout` covers Hydra's own ``--cfg job --resolve`` printout.
No Lightning import here, so the CLI can use it before any heavy work.
"""

from __future__ import annotations

import contextlib
import os
import re
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

SECRET_NAME = re.compile(r"KEY|TOKEN|SECRET", re.IGNORECASE)
MIN_SECRET_LEN = 8  # shorter values (TOKENIZERS_PARALLELISM=false, ...) are not secrets and would over-redact
REDACTED = "***"


def secret_values(environ: dict[str, str] | None = None) -> list[str]:
    """Values to hide: env vars whose name contains KEY, TOKEN or SECRET, plus the W&B netrc password.

    Values shorter than :data:`MIN_SECRET_LEN` characters are ignored.  Longest first, so
    that a secret containing another is replaced whole.
    """
    env = os.environ if environ is None else environ
    values = {v for k, v in env.items() if SECRET_NAME.search(k) and len(v) >= MIN_SECRET_LEN}
    with contextlib.suppress(Exception):
        import netrc

        auth = netrc.netrc().authenticators("api.wandb.ai")
        if auth and auth[2] and len(auth[2]) >= MIN_SECRET_LEN:
            values.add(auth[2])
    return sorted(values, key=len, reverse=True)


def redact(obj: Any, secrets: list[str] | None = None) -> Any:
    """A copy of ``obj`` (nested dicts/lists/strings) with every secret value replaced by ``***``.

    Dict keys are redacted too; non-string leaves are returned unchanged.
    """
    secrets = secret_values() if secrets is None else secrets
    if not secrets:
        return obj

    def clean(x: Any) -> Any:
        if isinstance(x, str):
            for s in secrets:
                if s in x:
                    x = x.replace(s, REDACTED)
            return x
        if isinstance(x, dict):
            return {clean(k): clean(v) for k, v in x.items()}
        if isinstance(x, (list, tuple)):
            return type(x)(clean(v) for v in x)
        return x

    return clean(obj)


def redact_files(paths: list[Path], secrets: list[str] | None = None) -> None:
    """Rewrite each existing text file in ``paths`` (atomically) with secret values replaced by ``***``.

    For the config copies Hydra saves (``.hydra/*.yaml``, ``multirun.yaml``), which hold the
    command-line overrides verbatim.
    """
    from glubench.core.io import atomic_write_bytes

    secrets = secret_values() if secrets is None else secrets
    if not secrets:
        return
    for path in paths:
        try:
            text = Path(path).read_text("utf-8")
        except (OSError, UnicodeDecodeError):
            continue
        clean = redact(text, secrets)
        if clean != text:
            atomic_write_bytes(Path(path), clean.encode("utf-8"))


@contextlib.contextmanager
def redacted_argv(secrets: list[str] | None = None) -> Iterator[None]:
    """Within the block, ``sys.argv`` has every secret value replaced by ``***``.

    W&B copies ``sys.argv`` into each run's metadata (``wandb-metadata.json`` and the ``.wandb``
    log) at ``wandb.init``; Hydra has parsed the command line long before, so nothing else needs
    the original.  Restored on exit, for the next job of an in-process sweep.
    """
    saved = list(sys.argv)
    sys.argv[:] = redact(saved, secret_values() if secrets is None else secrets)
    try:
        yield
    finally:
        sys.argv[:] = saved


class _RedactingStream:
    """A text stream wrapper whose ``write`` replaces secret values by ``***`` (all else delegated)."""

    def __init__(self, stream, secrets: list[str]) -> None:
        self._stream, self._secrets = stream, secrets

    def write(self, text: str) -> int:
        self._stream.write(redact(text, self._secrets))
        return len(text)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._stream, name)


@contextlib.contextmanager
def redacted_stdout(secrets: list[str] | None = None) -> Iterator[None]:
    """Within the block, secret values written to ``sys.stdout`` appear as ``***``.

    For ``glubench --cfg job --resolve``: Hydra prints the resolved tree itself, and a value such
    as ``${oc.env:WANDB_API_KEY}`` would otherwise reach the terminal or a CI log.
    """
    secrets = secret_values() if secrets is None else secrets
    saved = sys.stdout
    sys.stdout = _RedactingStream(saved, secrets) if secrets else saved
    try:
        yield
    finally:
        sys.stdout = saved


def credentials_present() -> bool:
    """Whether W&B credentials exist here: ``$WANDB_API_KEY`` or an ``api.wandb.ai`` entry in ``~/.netrc``."""
    if os.environ.get("WANDB_API_KEY"):
        return True
    try:
        import netrc

        return netrc.netrc().authenticators("api.wandb.ai") is not None
    except (OSError, netrc.NetrcParseError):
        return False
