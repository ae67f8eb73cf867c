"""Logging for every glubench command: plain ``glubench: ...`` lines on the console, and inside a
Hydra job also the per-job log file (``<run dir>/<job name>.log``) with timestamps.

Modules log through ``logging.getLogger(__name__)`` (all under the ``glubench`` logger); nothing
prints.  Under Hydra the handlers come from ``conf/hydra/job_logging/glubench.yaml``; the other
commands (``glubench-report``, ``-data``, ``-analyze``, ``-bench``) call :func:`configure`.

The console of a training job carries glubench's own lines and every warning or error
(:class:`Console`); the per-job log carries everything, the libraries' INFO lines included.
``verbose=true`` puts all of it on the console too.
"""

from __future__ import annotations

import logging
import sys
import warnings

from glubench.core.ranks import global_rank
from glubench.core.secrets import redact, secret_values

FILE_ONLY = {"console": False}
"""``log.info(..., extra=FILE_ONLY)``: a detail for the per-job log, not the console (:class:`Console`)."""

KNOWN_WARNINGS = (
    # torch deprecated LeafSpec (a FutureWarning on construction); Lightning 2.6's CombinedLoader
    # (lightning/pytorch/utilities/_pytree.py) still builds one per fit/validate/test: nothing to act on.
    (r"`isinstance\(treespec, LeafSpec\)` is deprecated", FutureWarning),
)
"""``(message regex, category)`` of library warnings that say nothing about the user's run: ignored by
:func:`ignore_known_warnings`, each scoped to its exact message."""


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
        self.secrets = secret_values()  # once: the environment and the command line do not change

    def filter(self, record: logging.LogRecord) -> bool:
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


class Console(logging.Filter):
    """What a training job prints: glubench's own lines and any warning or error; the rest goes to the log
    file only.

    Left to ``train.log`` (the file handler has no such filter): Lightning's INFO lines (``GPU available:
    False``, ``TPU available``, the litlogger "Tip", ```Trainer.fit` stopped: max_steps reached``,
    ```Trainer(val_check_interval=1.0)` was configured ...``: the hardware is in ``results.json`` and the
    stop is the run's plan), any other library's INFO lines, and glubench's own details marked
    :data:`FILE_ONLY`.  Hydra's launcher lines (``[HYDRA] #0 : ...``) are not job records and stay.

    Args:
        verbose: pass every record (``verbose=true`` on the command line).
    """

    def __init__(self, verbose: bool = False) -> None:
        super().__init__()
        self.verbose = bool(verbose)

    def filter(self, record: logging.LogRecord) -> bool:
        if self.verbose or record.levelno >= logging.WARNING:
            return True
        ours = record.name == "glubench" or record.name.startswith(("glubench.", "hydra", "HYDRA"))
        return ours and getattr(record, "console", True)


def ignore_known_warnings() -> None:
    """Ignore the library warnings of :data:`KNOWN_WARNINGS` (each by its exact message); any other warning
    still prints.  Called where a command starts Lightning (training, ``glubench-eval``)."""
    for message, category in KNOWN_WARNINGS:
        warnings.filterwarnings("ignore", message=message, category=category)


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
