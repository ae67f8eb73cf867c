"""Logging for every glubench command: plain ``glubench: ...`` lines on the console, and inside a
Hydra job also the per-job log file (``<run dir>/<job name>.log``) with timestamps.

Modules log through ``logging.getLogger(__name__)`` (all under the ``glubench`` logger); nothing
prints.  Under Hydra the handlers come from ``conf/hydra/job_logging/glubench.yaml``; the other
commands (``glubench-report``, ``-data``, ``-analyze``, ``-bench``) call :func:`configure`.
"""

from __future__ import annotations

import logging
import sys

from glubench.core.ranks import global_rank


class MaxLevel(logging.Filter):
    """Passes records below ``level`` (so INFO goes to stdout and WARNING and above to stderr)."""

    def __init__(self, level: str | int = "WARNING") -> None:
        super().__init__()
        self.level = logging.getLevelName(level) if isinstance(level, str) else level

    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno < self.level


class Redact(logging.Filter):
    """Replaces secrets in every record's message by ``***`` (:func:`glubench.core.secrets.redact`)."""

    def __init__(self) -> None:
        super().__init__()
        from glubench.core.secrets import secret_values

        self.secrets = secret_values()  # once: the environment and the command line do not change

    def filter(self, record: logging.LogRecord) -> bool:
        from glubench.core.secrets import redact

        message = record.getMessage()
        clean = redact(message, self.secrets)
        if clean != message:
            record.msg, record.args = clean, ()
        if record.exc_info and not record.exc_text:  # tracebacks can quote values too
            record.exc_text = redact(logging.Formatter().formatException(record.exc_info), self.secrets)
        return True


class RankZero(logging.Filter):
    """Passes every record on global rank 0 and only warnings and errors on the other ranks,
    so a multi-GPU job logs each message once."""

    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno >= logging.WARNING or global_rank() == 0


class _Console(logging.StreamHandler):
    """A console handler that writes to whatever ``sys.<name>`` is at write time (pytest swaps it)."""

    def __init__(self, name: str) -> None:
        self._sys_attr = name
        super().__init__()

    @property
    def stream(self):
        return getattr(sys, self._sys_attr)

    @stream.setter
    def stream(self, value) -> None:  # StreamHandler.__init__ assigns it; the property decides
        pass


def configure(level: int = logging.INFO) -> None:
    """Console logging for a command that Hydra does not run: INFO to stdout, WARNING+ to stderr, no decoration.

    Idempotent: handlers are added to the ``glubench`` logger once.
    """
    logger = logging.getLogger("glubench")
    logger.setLevel(level)
    if getattr(logger, "_glubench_configured", False):
        return
    out = _Console("stdout")
    out.addFilter(MaxLevel(logging.WARNING))
    err = _Console("stderr")
    err.setLevel(logging.WARNING)
    for h in (out, err):
        h.setFormatter(logging.Formatter("%(message)s"))
        h.addFilter(RankZero())
        h.addFilter(Redact())
        logger.addHandler(h)
    logger.propagate = False
    logger._glubench_configured = True


def route_through_root(*names: str) -> None:
    """Drop the console handlers a library attached to its own logger at import, when the root
    logger has handlers (Hydra's job logging or :func:`configure`): its records still propagate
    there, so they are printed once, in glubench's format, and reach the per-job log.

    ``lightning`` adds one (``INFO: ...``) when it is imported, after Hydra configured logging.
    """
    if not logging.getLogger().hasHandlers():
        return
    for name in names:
        logger = logging.getLogger(name)
        for handler in logger.handlers[:]:
            if type(handler) is logging.StreamHandler:
                logger.removeHandler(handler)
        logger.propagate = True
