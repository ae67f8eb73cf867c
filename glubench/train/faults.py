"""Training faults: divergence, interruptions and atomic checkpoints.

- :class:`~glubench.core.errors.Diverged` is what :class:`glubench.train.callbacks.NonFiniteGuard` raises when the loss
  or its gradient stops being finite, with the step and the last finite loss.
- :class:`AtomicCheckpointIO` writes checkpoints through a temp file and ``os.replace`` and
  reads them with ``torch.load(weights_only=True)``.
- :func:`preemption_as_interrupt` stops a run cleanly on Ctrl-C, SIGTERM, SIGUSR1 or SIGUSR2 (preemption
  and SLURM's time-limit warning) at an optimizer-step boundary, so it writes ``status: "interrupted"``
  and a checkpoint that resumes exactly.

Secrets are kept out of logs and files by :mod:`glubench.core.secrets`.
"""

from __future__ import annotations

import contextlib
import logging
import signal
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

DEFERRING = False
"""True while the Trainer fits (set by :class:`glubench.train.callbacks.FitSignals`): a signal then only
records itself, and the callback stops the run at the next optimizer-step boundary."""

RECEIVED: str | None = None
"""The name of the first interrupting signal this process received (``"SIGINT"``, ``"SIGUSR1"``), or ``None``."""

FORCED = False
"""True once a second Ctrl-C stopped the run at once, in the middle of a step (no checkpoint at that step)."""

_HANDED_OVER = False  # Lightning's SIGTERM handling has been asked to stop the run: later signals change nothing
_BEFORE: dict[int, Any] = {}  # the handlers installed before ours: submitit's requeue, for one
_HANDLER: Any = None  # ours, while preemption_as_interrupt is active


def describe(name: str | None) -> str:
    """How a signal (:data:`RECEIVED`) is named in messages and ``results.json``: ``"SIGINT (Ctrl-C)"`` (also
    for ``None``: a ``KeyboardInterrupt`` without our handler is a Ctrl-C), ``"SIGTERM"``."""
    return "SIGINT (Ctrl-C)" if name in (None, "SIGINT") else name


@contextlib.contextmanager
def preemption_as_interrupt() -> Iterator[None]:
    """Within the block, Ctrl-C, SIGTERM, SIGUSR1 and SIGUSR2 stop the run cleanly at an optimizer-step boundary.

    While the Trainer fits (:data:`DEFERRING`), a signal is only recorded (:data:`RECEIVED`);
    :class:`glubench.train.callbacks.FitSignals` then hands it to Lightning's SIGTERM handling once
    the current optimizer step (all its gradient-accumulation micro-batches) and any validation
    after it are done, Lightning raises ``SIGTERMException`` (a ``SystemExit``) at the end of that
    batch, and :class:`glubench.train.callbacks.InterruptCheckpoint` saves a checkpoint whose step,
    loop counters, LR schedule and data position agree, so the run resumes exactly.  A Ctrl-C used
    to raise ``KeyboardInterrupt`` wherever Python happened to be (inside the optimizer's update,
    between the batch counters), which left a checkpoint a step off.  A second Ctrl-C stops at once
    (:data:`FORCED`; the last periodic checkpoint stays the resume point).  Outside ``fit`` (data
    preparation, the final validation) the signals raise :class:`~glubench.core.errors.Interrupted` before the default
    action kills the process without ``results.json``.  The handlers that were there before
    (submitit's checkpoint-and-requeue) are kept for :func:`forward_preemption`, called once the
    results are written.  Only the main thread can install handlers; elsewhere this is a no-op.
    """
    import threading

    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum, frame):
        global RECEIVED, FORCED
        if _HANDED_OVER:
            return  # the stop is under way (Lightning's handler calls this one too)
        name = signal.Signals(signum).name
        if DEFERRING and RECEIVED is not None and signum == signal.SIGINT:
            FORCED = True
            raise KeyboardInterrupt(f"a second {describe(name)}: stopped at once")
        RECEIVED = RECEIVED or name
        if not DEFERRING:
            raise Interrupted(f"signal {name}")

    global DEFERRING, RECEIVED, FORCED, _HANDED_OVER, _HANDLER
    RECEIVED, FORCED, _HANDED_OVER, _HANDLER = None, False, False, handler
    _BEFORE.update({s: signal.signal(s, handler) for s in INTERRUPT_SIGNALS})
    try:
        yield
    finally:
        for s, before in _BEFORE.items():
            signal.signal(s, before)
        DEFERRING, _HANDLER = False, None


def defer_sigterm() -> Any:
    """While fitting, take SIGTERM back from Lightning (which stops at the next *batch*, mid-accumulation);
    return Lightning's handler for :func:`hand_over`.  ``None`` outside :func:`preemption_as_interrupt`."""
    if _HANDLER is None:
        return None
    lightning = signal.getsignal(signal.SIGTERM)
    signal.signal(signal.SIGTERM, _HANDLER)
    return lightning


def hand_over(lightning_handler: Any) -> None:
    """Give the recorded signal to Lightning's SIGTERM handler (from :func:`defer_sigterm`): Lightning
    stops at the end of the current batch, the way it documents for SIGTERM."""
    global _HANDED_OVER
    _HANDED_OVER = True
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


def forward_preemption() -> None:
    """Hand the signal received to the handler that was installed before ours, now that the run is saved.

    Under ``hydra/launcher=slurm`` that is submitit's checkpoint-and-requeue (it requeues the job,
    which resumes from ``checkpoints/last.ckpt``, and exits); elsewhere there is nothing to call.
    """
    before = _BEFORE.get(getattr(signal, RECEIVED)) if RECEIVED and RECEIVED != "SIGINT" else None
    if callable(before):  # (Ctrl-C's previous handler is Python's, which would raise KeyboardInterrupt again)
        before(getattr(signal, RECEIVED), None)


def exit_status() -> int:
    """The status an interrupted run exits with: 128 + the signal's number (143 for SIGTERM), 130 for Ctrl-C."""
    return 128 + int(getattr(signal, RECEIVED)) if RECEIVED else 130
