"""Training faults: divergence, interruptions and atomic checkpoints.

- :class:`Diverged` is what :class:`glubench.train.callbacks.NonFiniteGuard` raises when the loss
  or its gradient stops being finite, with the step and the last finite loss.
- :class:`AtomicCheckpointIO` writes checkpoints through a temp file and ``os.replace`` and
  reads them with ``torch.load(weights_only=True)``.
- :func:`sigterm_as_interrupt` turns SIGTERM outside ``trainer.fit`` into an exception so the
  run can still write ``status: "interrupted"`` (inside ``fit`` Lightning handles it itself).

Secrets are kept out of logs and files by :mod:`glubench.redaction`.
"""

from __future__ import annotations

import contextlib
import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO

from glubench.core.io import atomic_write


class Diverged(RuntimeError):
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


class AtomicCheckpointIO(TorchCheckpointIO):
    """Checkpoints written atomically and read with ``weights_only=True``.

    Lightning's own writer moves a temp file from the system temp folder, which is a copy
    (not a rename) when that folder is on another filesystem; here the temp file sits beside
    the target, is fsynced, then ``os.replace``d, so a reader sees the old or the new
    checkpoint, never a partial one.  Loading refuses pickled code (``weights_only=True``):
    glubench checkpoints hold only tensors and plain Python values.
    """

    def save_checkpoint(self, checkpoint: dict[str, Any], path, storage_options: Any | None = None) -> None:
        if storage_options is not None:
            raise TypeError("AtomicCheckpointIO takes no storage_options")
        atomic_write(Path(path), lambda f: torch.save(checkpoint, f))

    def load_checkpoint(self, path, map_location: Any = None, weights_only: bool | None = None) -> dict[str, Any]:
        if weights_only is False:
            raise ValueError("glubench loads checkpoints with weights_only=True only")
        if not Path(path).is_file():
            raise FileNotFoundError(f"Checkpoint file not found: {path}")
        return torch.load(path, map_location=map_location or "cpu", weights_only=True)


class Interrupted(KeyboardInterrupt):
    """SIGTERM received outside ``trainer.fit`` (treated like Ctrl-C)."""


LIGHTNING_OWNS_SIGTERM = False
"""True while ``trainer.fit`` runs (set by :class:`glubench.train.callbacks.FitSignals`): Lightning turns
SIGTERM into its own exception then."""


@contextlib.contextmanager
def sigterm_as_interrupt() -> Iterator[None]:
    """Within the block, SIGTERM raises :class:`Interrupted` unless Lightning is handling it.

    During ``trainer.fit`` Lightning finishes the current batch and raises its own
    ``SIGTERMException`` (a ``SystemExit``); outside ``fit`` (data preparation, final
    validation) the default action would kill the process before ``results.json`` is written.
    Only the main thread can install handlers; elsewhere this is a no-op.
    """
    import threading

    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum, frame):
        if not LIGHTNING_OWNS_SIGTERM:
            raise Interrupted(f"signal {signal.Signals(signum).name}")

    global LIGHTNING_OWNS_SIGTERM
    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
        LIGHTNING_OWNS_SIGTERM = False
