"""Training faults: divergence, interruptions and atomic checkpoints.

- :class:`Diverged` is what :class:`glubench.train.callbacks.NonFiniteGuard` raises when the loss
  or its gradient stops being finite, with the step and the last finite loss.
- :class:`AtomicCheckpointIO` writes checkpoints through a temp file and ``os.replace`` and
  reads them with ``torch.load(weights_only=True)``.
- :func:`preemption_as_interrupt` stops a run cleanly on SIGTERM, SIGUSR1 or SIGUSR2 (preemption
  and SLURM's time-limit warning), so it writes ``status: "interrupted"`` and a resumable checkpoint.

Secrets are kept out of logs and files by :mod:`glubench.core.secrets`.
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
    """A preemption signal received outside ``trainer.fit`` (treated like Ctrl-C)."""


PREEMPTION_SIGNALS = (signal.SIGTERM, signal.SIGUSR1, signal.SIGUSR2)
"""SIGTERM: preemption (or ``scancel``); SIGUSR1: SLURM's warning before the time limit
(``--signal=USR1@90``); SIGUSR2: the warning submitit asks SLURM for (``signal_delay_s``)."""

LIGHTNING_OWNS_SIGTERM = False
"""True while the Trainer runs (set by :class:`glubench.train.callbacks.FitSignals`): Lightning turns
SIGTERM into ``SIGTERMException`` at the next batch boundary then."""

RECEIVED: str | None = None
"""The name of the first preemption signal this process received (``"SIGUSR1"``), or ``None``."""

_BEFORE: dict[int, Any] = {}  # the handlers installed before ours: submitit's requeue, for one


@contextlib.contextmanager
def preemption_as_interrupt() -> Iterator[None]:
    """Within the block, SIGTERM, SIGUSR1 and SIGUSR2 stop the run cleanly at the next step boundary.

    During ``trainer.fit`` each of them is handed to Lightning's SIGTERM handling: the current
    batch finishes, ``SIGTERMException`` (a ``SystemExit``) unwinds ``fit``, and
    :class:`glubench.train.callbacks.InterruptCheckpoint` saves the checkpoint at that step, so a
    requeued run resumes exactly.  Outside ``fit`` (data preparation, the final validation) they
    raise :class:`Interrupted` before the default action kills the process without
    ``results.json``.  The handlers that were there before (submitit's checkpoint-and-requeue) are
    kept for :func:`forward_preemption`, called once the results are written.  Only the main
    thread can install handlers; elsewhere this is a no-op.
    """
    import threading

    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum, frame):
        global RECEIVED
        RECEIVED = RECEIVED or signal.Signals(signum).name
        if not LIGHTNING_OWNS_SIGTERM:
            raise Interrupted(f"signal {signal.Signals(signum).name}")
        if signum != signal.SIGTERM:  # Lightning's handler: stop at the next batch boundary
            signal.getsignal(signal.SIGTERM)(signal.SIGTERM, frame)

    global LIGHTNING_OWNS_SIGTERM, RECEIVED
    RECEIVED = None
    _BEFORE.update({s: signal.signal(s, handler) for s in PREEMPTION_SIGNALS})
    try:
        yield
    finally:
        for s, before in _BEFORE.items():
            signal.signal(s, before)
        LIGHTNING_OWNS_SIGTERM = False


def forward_preemption() -> None:
    """Hand the signal received to the handler that was installed before ours, now that the run is saved.

    Under ``hydra/launcher=slurm`` that is submitit's checkpoint-and-requeue (it requeues the job,
    which resumes from ``checkpoints/last.ckpt``, and exits); elsewhere there is nothing to call.
    """
    before = _BEFORE.get(getattr(signal, RECEIVED)) if RECEIVED else None
    if callable(before):
        before(getattr(signal, RECEIVED), None)


def exit_status() -> int:
    """The status an interrupted run exits with: 128 + the signal's number (143 for SIGTERM), 130 for Ctrl-C."""
    return 128 + int(getattr(signal, RECEIVED)) if RECEIVED else 130
