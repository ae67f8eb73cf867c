"""Secrets never reach logs, results or printed configs.

A secret is (1) the value of any environment variable whose name contains KEY, TOKEN or SECRET
(``WANDB_API_KEY``, ``HF_TOKEN``, ...), (2) the W&B password in ``~/.netrc``, (3) the value of a
command-line override whose key ends in ``key``, ``token``, ``secret`` or ``password``
(``+logger.api_key=...``), and (4) anything that looks like a credential wherever it appears: a
W&B API key (40 hex digits) or a Hugging Face token (``hf_`` + 30 or more letters and digits).
Every config that is logged or written goes through :func:`redact`; :func:`redact_files` cleans
the config copies Hydra saves; :func:`redacted_argv` hides the command line from W&B's run
metadata; :class:`glubench.core.logging.Redact` cleans every log line; and
:func:`redacted_stdout` covers Hydra's own ``--cfg job --resolve`` printout.
No Lightning import here, so the CLI can use it before any heavy work.
"""

from __future__ import annotations

import contextlib
import logging
import netrc
import os
import re
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from glubench.core.io import atomic_write_bytes

log = logging.getLogger(__name__)

SECRET_NAME = re.compile(r"KEY|TOKEN|SECRET", re.IGNORECASE)
SECRET_KEY = re.compile(r"(?:^|[._])(?:[a-z0-9]+_)*(?:key|token|secret|password)$", re.IGNORECASE)
"""A config key whose value is a secret: ``api_key``, ``hf_token``, ``client_secret`` (not ``max_tokens``)."""
LOOKS_SECRET = re.compile(r"(?<![0-9A-Za-z])(?:[0-9a-f]{40}|hf_[A-Za-z0-9]{30,})(?![0-9A-Za-z])")
"""A W&B API key (40 lowercase hex digits) or a Hugging Face token."""
MIN_SECRET_LEN = 8  # shorter values (TOKENIZERS_PARALLELISM=false, ...) are not secrets and would over-redact
REDACTED = "***"


def _typed_secrets(argv: list[str]) -> set[str]:
    """Values of ``key=value`` command-line overrides whose key names a secret (``+logger.api_key=...``)."""
    found = set()
    for arg in argv:
        key, eq, value = arg.lstrip("+~").partition("=")
        value = value.strip("'\"")
        if eq and SECRET_KEY.search(key) and len(value) >= MIN_SECRET_LEN:
            found.add(value)
    return found


def secret_values(environ: dict[str, str] | None = None, argv: list[str] | None = None) -> list[str]:
    """Values to hide: env vars whose name contains KEY, TOKEN or SECRET, the W&B netrc password, and
    the values of command-line overrides whose key names a secret (default: ``sys.argv``).

    Values shorter than :data:`MIN_SECRET_LEN` characters are ignored.  Longest first, so
    that a secret containing another is replaced whole.
    """
    env = os.environ if environ is None else environ
    values = {v for k, v in env.items() if SECRET_NAME.search(k) and len(v) >= MIN_SECRET_LEN}
    values |= _typed_secrets(sys.argv[1:] if argv is None else argv)
    with contextlib.suppress(Exception):
        auth = netrc.netrc().authenticators("api.wandb.ai")
        if auth and auth[2] and len(auth[2]) >= MIN_SECRET_LEN:
            values.add(auth[2])
    return sorted(values, key=len, reverse=True)


def redact(obj: Any, secrets: list[str] | None = None) -> Any:
    """A copy of ``obj`` (nested dicts/lists/strings) with every secret replaced by ``***``: the
    :func:`secret_values`, anything :data:`LOOKS_SECRET`, and string values under a key :data:`SECRET_KEY`
    matches.  Dict keys are redacted too; non-string leaves are returned unchanged.
    """
    secrets = secret_values() if secrets is None else secrets

    def clean(x: Any, key: str = "") -> Any:
        if isinstance(x, str):
            if key and SECRET_KEY.search(key) and len(x) >= MIN_SECRET_LEN:
                return REDACTED
            for s in secrets:
                if s in x:
                    x = x.replace(s, REDACTED)
            return LOOKS_SECRET.sub(REDACTED, x)
        if isinstance(x, dict):
            return {clean(k): clean(v, str(k)) for k, v in x.items()}
        if isinstance(x, (list, tuple)):
            return type(x)(clean(v) for v in x)
        return x

    return clean(obj)


def redact_files(paths: list[Path], secrets: list[str] | None = None) -> None:
    """Rewrite each existing text file in ``paths`` (atomically) with secret values replaced by ``***``.

    For the config copies Hydra saves (``.hydra/*.yaml``, ``multirun.yaml``), which hold the
    command-line overrides verbatim.
    """
    secrets = secret_values() if secrets is None else secrets
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
    sys.stdout = _RedactingStream(saved, secrets)
    try:
        yield
    finally:
        sys.stdout = saved


def credentials_present() -> bool:
    """Whether W&B credentials exist here: ``$WANDB_API_KEY`` or an ``api.wandb.ai`` entry in ``~/.netrc``."""
    if os.environ.get("WANDB_API_KEY"):
        return True
    try:
        return netrc.netrc().authenticators("api.wandb.ai") is not None
    except (OSError, netrc.NetrcParseError):
        return False


def wandb_mode(mode: str | None) -> str:
    """The W&B mode of a run or a report: ``mode`` if given, else ``$WANDB_MODE``, else ``online`` iff
    :func:`credentials_present` (else ``offline``, said once in the log)."""
    if mode:
        return mode
    if os.environ.get("WANDB_MODE"):
        return os.environ["WANDB_MODE"]
    if credentials_present():
        return "online"
    log.info("glubench: no W&B credentials found; logging to W&B in offline mode (wandb sync later)")
    return "offline"
