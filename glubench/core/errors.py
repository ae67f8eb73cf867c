"""Every error type glubench raises on purpose, in one small hierarchy.

``GlubenchError`` is the root; each type also derives from the built-in exception a caller would
expect (``ValueError`` for bad values, ``OSError`` for a failed write, ``RuntimeError`` for a
state the run cannot go on from), so ``except ValueError`` keeps working::

    GlubenchError
    ├── ConfigError (ValueError)      a config value, a file or a flag the user can fix: exit 2
    │   └── ExportError               a checkpoint the Hugging Face export cannot represent exactly
    ├── Unavailable (RuntimeError)    something the run needs is not here (offline, not installed)
    │   ├── CorpusUnavailable
    │   └── TokenizerUnavailable
    ├── WriteFailed (OSError)         a file could not be written; its previous version is intact
    ├── Diverged (RuntimeError)       training produced a non-finite loss or gradient
    └── FitError (ValueError)         a scaling fit got input it cannot fit
        └── Undefined                 a multiplier or crossover the fits do not define

``Interrupted`` stands apart: it is a ``KeyboardInterrupt`` (a signal stops the run), which no
``except Exception`` may catch.  No torch here: the command line imports these before anything heavy.
"""

from __future__ import annotations


class GlubenchError(Exception):
    """The root of the errors glubench raises on purpose; the message is one line for the user."""


class ConfigError(GlubenchError, ValueError):
    """A bad config value; the message is one line naming the key, the value and what is allowed.

    Commands print it as ``<command>: error: <message>`` and exit with status 2, before any
    expensive work.
    """


class ExportError(ConfigError):
    """A checkpoint the export cannot represent exactly; the message is one line naming the setting."""


class Unavailable(GlubenchError, RuntimeError):
    """Something the run needs cannot be had here (offline and not cached, a package or file missing);
    the message says how to provide it."""


class CorpusUnavailable(Unavailable):
    """A corpus that cannot be loaded here (offline and not cached); the message says how to fix it."""


class TokenizerUnavailable(Unavailable):
    """A tokenizer whose files or package are missing here; the message says how to provide them."""


class WriteFailed(GlubenchError, OSError):
    """A file could not be written (disk full, permission lost, ...); its previous version is intact.

    Raised as ``WriteFailed(errno, strerror, filename)``; ``str()`` is one line naming the file and the
    reason, for the user.
    """

    def __str__(self) -> str:
        return f"cannot write {self.filename}: {self.strerror}; its previous version, if any, is intact"


class Diverged(GlubenchError, RuntimeError):
    """Training produced a non-finite loss or gradient (the run's status becomes ``diverged``).

    Attributes:
        step: the optimizer step (``trainer.global_step``, 0-based) whose loss or gradient was non-finite.
        last_finite_loss, last_finite_step: the latest finite training loss and its step (``None``
            if no step had a finite loss).
    """

    def __init__(self, message: str, step: int, last_finite_loss: float | None,
                 last_finite_step: int | None) -> None:
        super().__init__(message)
        self.step, self.last_finite_loss, self.last_finite_step = step, last_finite_loss, last_finite_step


class FitError(GlubenchError, ValueError):
    """A scaling fit (:mod:`glubench.sweep.fits`) got input it cannot fit: lists of unequal length,
    values that are not finite and positive, a baseline without runs."""


class Undefined(FitError):
    """A multiplier or crossover that the fits do not define; the message says why."""


class Interrupted(KeyboardInterrupt):
    """An interrupting signal received outside ``trainer.fit`` (treated like Ctrl-C)."""
