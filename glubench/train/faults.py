"""Training faults: non-finite losses, interruptions and atomic checkpoints.

- :class:`NonFiniteGuard` stops a run (or drops a bounded number of batches) when the loss or
  its gradient stops being finite, raising :class:`Diverged` with the step and the last finite loss.
- :class:`AtomicCheckpointIO` writes checkpoints through a temp file and ``os.replace`` and
  reads them with ``torch.load(weights_only=True)``.
- :func:`sigterm_as_interrupt` turns SIGTERM outside ``trainer.fit`` into an exception so the
  run can still write ``status: "interrupted"`` (inside ``fit`` Lightning handles it itself).

Secrets are kept out of logs and files by :mod:`glubench.redaction`.
"""

from __future__ import annotations

import contextlib
import os
import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
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


class NonFiniteGuard(pl.Callback):
    """Catch a non-finite loss or gradient and name the step and the last finite loss.

    Before each optimizer step the total gradient norm is computed (one fused kernel); a NaN or
    infinite norm means the loss or a gradient is non-finite.  Gradients are all-reduced before
    this hook, so every DDP rank sees the same verdict.  With ``16-mixed`` precision the
    GradScaler already skips overflowing steps, so the guard watches the (unscaled) loss instead.
    The first bad step and the last finite loss before it are kept on the device
    (``torch.where``), so watching costs no host sync.

    Args:
        on_nonfinite: ``"stop"`` raises :class:`Diverged`; ``"skip"`` drops the batch's update
            (all gradients set to ``None``, so AdamW leaves those weights and moments alone) and
            raises only when more than ``max_skips`` batches were dropped.  ``skip`` must decide
            before each update, so it reads the verdict back every optimizer step (a host sync).
        max_skips: the bound for ``"skip"``.
        check_loss_only: watch the loss, not the gradients (for ``16-mixed``).
        check_every_n_steps: ``stop`` reads the verdict back every this many optimizer steps (and
            before each validation and at the end), so the hot path keeps no per-step sync; with
            1 it stops before the bad update reaches the weights, otherwise up to n-1 steps later
            (the step it names is still the first bad one).

    ``skipped`` counts dropped batches.
    """

    def __init__(self, on_nonfinite: str = "stop", max_skips: int = 10, check_loss_only: bool = False,
                 check_every_n_steps: int = 1) -> None:
        if on_nonfinite not in ("stop", "skip"):
            raise ValueError(f"faults.on_nonfinite={on_nonfinite!r} is not known; valid: stop, skip")
        self.on_nonfinite, self.max_skips, self.check_loss_only = on_nonfinite, max_skips, check_loss_only
        self.every = max(1, check_every_n_steps)
        self.skipped = 0
        self._step = 0
        self._checked_at = -1
        self._last_loss: torch.Tensor | None = None  # last finite loss before the first bad step
        self._last_step: torch.Tensor | None = None
        self._bad_step: torch.Tensor | None = None  # first bad step, -1 while none

    def _init_state(self, device: torch.device) -> None:
        if self._bad_step is None or self._bad_step.device != device:
            self._last_loss = torch.zeros((), device=device)
            self._last_step = torch.full((), -1, dtype=torch.long, device=device)
            self._bad_step = torch.full((), -1, dtype=torch.long, device=device)

    def _note(self, finite: torch.Tensor) -> None:
        self._bad_step = torch.where(finite | (self._bad_step >= 0), self._bad_step,
                                     torch.full_like(self._bad_step, self._step))

    def _last(self) -> str:
        step = int(self._last_step)
        return "no finite loss yet" if step < 0 else f"last finite loss {float(self._last_loss):.4f} at step {step}"

    def _what(self) -> str:
        return "loss" if self.check_loss_only else "loss or gradient"

    def _diverged(self, step: int, message: str) -> Diverged:
        step_last = int(self._last_step)
        return Diverged(message, step, float(self._last_loss) if step_last >= 0 else None,
                        step_last if step_last >= 0 else None)

    def check(self) -> None:
        """Stop mode: raise :class:`Diverged` if any step so far was non-finite (one host sync)."""
        if self.on_nonfinite != "stop" or self._bad_step is None:
            return
        bad = int(self._bad_step)
        if bad >= 0:
            raise self._diverged(bad, f"non-finite {self._what()} at step {bad} ({self._last()}); "
                                      "lower optim.lr or set faults.on_nonfinite=skip")

    def _skip(self) -> None:
        self.skipped += 1
        if self.skipped > self.max_skips:
            raise self._diverged(self._step, f"non-finite {self._what()} at step {self._step}; {self.skipped} "
                                             f"batches skipped, more than faults.max_skips={self.max_skips} "
                                             f"({self._last()})")
        self._bad_step.fill_(-1)  # skipped batches are forgiven; the next bad one is reported afresh

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self._step = trainer.global_step  # the optimizer step this batch contributes to

    def on_before_optimizer_step(self, trainer, pl_module, optimizer) -> None:
        if self.check_loss_only:
            return
        grads = [p.grad for group in optimizer.param_groups for p in group["params"] if p.grad is not None]
        if not grads:
            return
        self._init_state(grads[0].device)
        finite = torch.isfinite(torch.nn.utils.get_total_norm(grads, error_if_nonfinite=False))
        if self.on_nonfinite == "stop":
            self._note(finite)
            if self.every == 1:
                self.check()  # before the update reaches the weights
            return
        if not bool(finite):  # skip mode: decide now (host sync)
            self._skip()
            for group in optimizer.param_groups:
                for p in group["params"]:
                    p.grad = None

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        loss = outputs["loss"] if isinstance(outputs, dict) else outputs
        if loss is None:
            return
        loss = loss.detach().float()
        self._init_state(loss.device)
        finite = torch.isfinite(loss)
        keep = finite & (self._bad_step < 0)
        self._last_loss = torch.where(keep, loss, self._last_loss)
        self._last_step = torch.where(keep, torch.full_like(self._last_step, self._step), self._last_step)
        if self.check_loss_only:
            if self.on_nonfinite == "skip":
                if not bool(finite):
                    self._skip()  # the GradScaler has already dropped this update
            else:
                self._note(finite)
        step = trainer.global_step
        if step % self.every == 0 and step != self._checked_at:
            self._checked_at = step
            self.check()

    def on_validation_start(self, trainer, pl_module) -> None:
        if trainer.state.fn == "fit":
            self.check()  # never validate or checkpoint a model that has diverged

    def on_train_end(self, trainer, pl_module) -> None:
        self.check()

    def state_dict(self) -> dict[str, Any]:
        return {"skipped": self.skipped}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.skipped = int(state_dict.get("skipped", 0))


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


class InterruptCheckpoint(pl.Callback):
    """Save a checkpoint to ``path`` when ``fit`` is interrupted (Ctrl-C, SIGTERM), so no step is lost.

    Lightning turns SIGTERM into ``SIGTERMException`` (a ``SystemExit``) between batches and
    calls ``on_exception`` before unwinding; Ctrl-C arrives here as ``KeyboardInterrupt``.
    Other exceptions (bugs, :class:`Diverged`) leave the last regular checkpoint in place.
    Unlike Lightning's ``OnExceptionCheckpoint`` the file is kept after a normal teardown.
    """

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)

    def on_exception(self, trainer, pl_module, exception: BaseException) -> None:
        if not isinstance(exception, (KeyboardInterrupt, SystemExit)) or trainer.global_step == 0:
            return
        try:
            trainer.save_checkpoint(self.path, weights_only=False)  # optimizer too: resumable
        except Exception as e:  # never mask the interruption itself
            print(f"glubench: could not save {self.path} on interrupt: {e}")


class Interrupted(KeyboardInterrupt):
    """SIGTERM received outside ``trainer.fit`` (treated like Ctrl-C)."""


_LIGHTNING_OWNS_SIGTERM = False


class FitSignals(pl.Callback):
    """Marks when Lightning's own SIGTERM handling is active (during ``fit``), see :func:`sigterm_as_interrupt`."""

    def setup(self, trainer, pl_module, stage: str) -> None:
        global _LIGHTNING_OWNS_SIGTERM
        _LIGHTNING_OWNS_SIGTERM = True

    def teardown(self, trainer, pl_module, stage: str) -> None:
        global _LIGHTNING_OWNS_SIGTERM
        _LIGHTNING_OWNS_SIGTERM = False

    on_exception = teardown  # Lightning skips callback teardown when fit raises


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
        if not _LIGHTNING_OWNS_SIGTERM:
            raise Interrupted(f"signal {signal.Signals(signum).name}")

    global _LIGHTNING_OWNS_SIGTERM
    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
        _LIGHTNING_OWNS_SIGTERM = False
