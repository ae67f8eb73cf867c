"""Training faults: divergence, interruptions and atomic checkpoints.

- :class:`~glubench.core.errors.Diverged` is what :class:`glubench.train.callbacks.NonFiniteGuard` raises when the loss
  or its gradient stops being finite, with the step and the last finite loss.
- :class:`AtomicCheckpointIO` writes checkpoints through a temp file and ``os.replace`` and
  reads them with ``torch.load(weights_only=True)``.
- :class:`Interrupts` (one per run, installed by :meth:`Interrupts.installed`) stops a run cleanly on
  Ctrl-C, SIGTERM, SIGUSR1 or SIGUSR2 (preemption and SLURM's time-limit warning) at an
  optimizer-step boundary, so it writes ``status: "interrupted"`` and a checkpoint that resumes
  exactly; it holds what was received, so the command can name the signal and exit with its status.

Secrets are kept out of logs and files by :mod:`glubench.core.secrets`.
"""

from __future__ import annotations

import contextlib
import logging
import signal
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO

from glubench.core.errors import Interrupted
from glubench.core.io import atomic_write


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


PREEMPTION_SIGNALS = (signal.SIGTERM, signal.SIGUSR1, signal.SIGUSR2)
"""SIGTERM: preemption (or ``scancel``); SIGUSR1: SLURM's warning before the time limit
(``--signal=USR1@90``); SIGUSR2: the warning submitit asks SLURM for (``signal_delay_s``)."""

INTERRUPT_SIGNALS = (signal.SIGINT, *PREEMPTION_SIGNALS)
"""Every signal that stops a run cleanly: Ctrl-C (SIGINT) and the preemption signals."""

def describe(name: str | None) -> str:
    """How a signal (:attr:`Interrupts.received`) is named in messages and ``results.json``:
    ``"SIGINT (Ctrl-C)"`` (also for ``None``: a ``KeyboardInterrupt`` without our handler is a Ctrl-C),
    ``"SIGTERM"``."""
    return "SIGINT (Ctrl-C)" if name in (None, "SIGINT") else name


class Interrupts:
    """One run's interrupting signals: what was received, and the handlers in place.

    :meth:`installed` makes Ctrl-C, SIGTERM, SIGUSR1 and SIGUSR2 stop the run cleanly at an
    optimizer-step boundary.  While the Trainer fits (:attr:`deferring`, set by
    :class:`glubench.train.callbacks.FitSignals`, which the task builds with this object), a signal is
    only recorded (:attr:`received`); the callback then hands it to Lightning's SIGTERM handling
    (:meth:`hand_over`) once the current optimizer step (all its gradient-accumulation micro-batches)
    and any validation after it are done, Lightning raises ``SIGTERMException`` (a ``SystemExit``) at
    the end of that batch, and :class:`glubench.train.callbacks.InterruptCheckpoint` saves a
    checkpoint whose step, loop counters, LR schedule and data position agree, so the run resumes
    exactly.  A Ctrl-C used to raise ``KeyboardInterrupt`` wherever Python happened to be (inside the
    optimizer's update, between the batch counters), which left a checkpoint a step off.  A second
    Ctrl-C stops at once (:attr:`forced`; the last periodic checkpoint stays the resume point).
    Outside ``fit`` (data preparation, the final validation) the signals raise
    :class:`~glubench.core.errors.Interrupted` before the default action kills the process without
    ``results.json``.  The handlers that were there before (submitit's checkpoint-and-requeue) are
    kept for :meth:`forward_preemption`, called once the results are written.

    Attributes:
        deferring: the Trainer fits; a signal only records itself.
        received: the name of the first interrupting signal (``"SIGINT"``, ``"SIGUSR1"``), or ``None``.
        forced: a second Ctrl-C stopped the run in the middle of a step (no checkpoint at that step).
    """

    def __init__(self) -> None:
        self.deferring = False
        self.received: str | None = None
        self.forced = False
        self._handed_over = False  # Lightning has been asked to stop the run: later signals change nothing
        self._before: dict[int, Any] = {}  # the handlers installed before ours: submitit's requeue, for one
        self._active = False  # our handler is installed

    @property
    def preempted(self) -> bool:
        """Whether the signal received is a preemption (SIGTERM, SIGUSR1, SIGUSR2), not a Ctrl-C."""
        return self.received in [s.name for s in PREEMPTION_SIGNALS]

    def _handle(self, signum, frame) -> None:
        if self._handed_over:
            return  # the stop is under way (Lightning's handler calls this one too)
        name = signal.Signals(signum).name
        if self.deferring and self.received is not None and signum == signal.SIGINT:
            self.forced = True
            raise KeyboardInterrupt(f"a second {describe(name)}: stopped at once")
        self.received = self.received or name
        if not self.deferring:
            raise Interrupted(f"signal {name}")

    @contextlib.contextmanager
    def installed(self) -> Iterator[Interrupts]:
        """Within the block our handler takes the interrupting signals (see the class).  Only the main
        thread can install handlers; elsewhere this is a no-op."""
        if threading.current_thread() is not threading.main_thread():
            yield self
            return
        self.received, self.forced, self._handed_over, self._active = None, False, False, True
        self._before = {s: signal.signal(s, self._handle) for s in INTERRUPT_SIGNALS}
        try:
            yield self
        finally:
            for s, before in self._before.items():
                signal.signal(s, before)
            self.deferring, self._active = False, False

    def defer_sigterm(self) -> Any:
        """While fitting, take SIGTERM back from Lightning (which stops at the next *batch*, mid-accumulation);
        return Lightning's handler for :meth:`hand_over`.  ``None`` outside :meth:`installed`."""
        if not self._active:
            return None
        lightning = signal.getsignal(signal.SIGTERM)
        signal.signal(signal.SIGTERM, self._handle)
        return lightning

    def hand_over(self, lightning_handler: Any) -> None:
        """Give the recorded signal to Lightning's SIGTERM handler (from :meth:`defer_sigterm`): Lightning
        stops at the end of the current batch, the way it documents for SIGTERM."""
        self._handed_over = True
        signal.signal(signal.SIGTERM, lightning_handler)
        if not callable(lightning_handler):
            return
        # Its "Received SIGTERM" line would misname a Ctrl-C or SIGUSR1; the run's own message names the signal.
        quiet = logging.getLogger("lightning.pytorch.trainer.connectors.signal_connector")
        level = quiet.level
        quiet.setLevel(logging.WARNING)
        try:
            lightning_handler(signal.SIGTERM, None)
        finally:
            quiet.setLevel(level)

    def forward_preemption(self) -> None:
        """Hand the signal received to the handler that was installed before ours, now that the run is saved.

        Under ``hydra/launcher=slurm`` that is submitit's checkpoint-and-requeue (it requeues the job,
        which resumes from ``checkpoints/last.ckpt``, and exits); elsewhere there is nothing to call.
        """
        received = self.received
        before = self._before.get(getattr(signal, received)) if received and received != "SIGINT" else None
        if callable(before):  # (Ctrl-C's previous handler is Python's, which would raise KeyboardInterrupt again)
            before(getattr(signal, received), None)

    def exit_status(self) -> int:
        """The status an interrupted run exits with: 128 + the signal's number (143 for SIGTERM), 130 for Ctrl-C."""
        return 128 + int(getattr(signal, self.received)) if self.received else 130
