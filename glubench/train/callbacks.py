"""The Lightning callbacks that keep a run whole: checkpoints, resumption, interruptions, divergence.

Built from ``conf/callbacks/`` by ``hydra.utils.instantiate``, like those of :mod:`glubench.train.monitors`.

* :class:`StepCheckpoint`, :class:`ResumeState`, :class:`InterruptCheckpoint`: checkpoints that a
  resumed run continues from exactly, and one at the interrupted step on Ctrl-C / SIGTERM.
* :class:`NonFiniteGuard`: a non-finite loss or gradient stops the run (or drops the batch).
* :class:`FitSignals`: internal; marks when Lightning handles SIGTERM itself (always added).
"""

from __future__ import annotations

import logging
import os
import warnings
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import ModelCheckpoint

from glubench.core.errors import Diverged
from glubench.train.faults import Interrupts
from glubench.train.module import LanguageModel, total_grad_norm
from glubench.train.resume import CHECKPOINT_DIR, LAST_CHECKPOINT, collect_rng_states, set_rng_states
from glubench.train.schema import FaultsConfig

log = logging.getLogger(__name__)


def _validation_follows(trainer) -> bool:
    """Whether Lightning validates right after the current training batch (its own rule, in public attributes)."""
    loop = trainer.fit_loop.epoch_loop
    if loop.batch_progress.is_last_batch or trainer.should_stop:
        return True
    every = trainer.val_check_batch
    return every not in (None, float("inf")) and (loop.total_batch_idx + 1) % every == 0


class StepCheckpoint(ModelCheckpoint):
    """``ModelCheckpoint`` every ``every_n_train_steps`` steps, *after* that step's validation if one follows.

    Lightning saves step checkpoints before the step's validation, and a run resumed from
    such a checkpoint skips that validation, so its ``history`` would miss a point that the
    uninterrupted run has.  Deferring the save to the end of the validation keeps them equal.

    Files: ``<run dir>/checkpoints/step-<N>.ckpt`` (no ``=`` in the name, so the path is a plain
    Hydra override value) and ``last.ckpt``, a relative link to the newest, so a save costs one
    write.  ``every_n_train_steps=None`` saves after each validation (``ModelCheckpoint``'s own
    rule with no step or epoch interval given); ``save_top_k=1`` keeps the newest
    ``step-<N>.ckpt`` only, ``-1`` keeps them all.  Files are written by
    :class:`glubench.train.faults.AtomicCheckpointIO` (atomic, loaded weights-only).
    """

    def __init__(self, dirpath: str | os.PathLike | None = None, every_n_train_steps: int | None = None,
                 save_top_k: int = 1, **kwargs: Any) -> None:
        kwargs = {"filename": "step-{step}", "auto_insert_metric_name": False, "save_last": "link", **kwargs}
        super().__init__(dirpath=dirpath, save_top_k=save_top_k, every_n_train_steps=every_n_train_steps, **kwargs)
        self._found_files = False  # the folder held files at setup and this run does not resume from them

    def setup(self, trainer, pl_module, stage: str) -> None:
        if self.dirpath is None:
            self.dirpath = str(Path(trainer.default_root_dir) / CHECKPOINT_DIR)
        with warnings.catch_warnings():
            # Lightning warns whenever the folder holds files.  On a resume they are this run's own
            # checkpoints, which this callback goes on managing (its state comes back with the
            # checkpoint, load_state_dict below), so the warning would be untrue there; whether the
            # run resumes is known only after setup, so on_train_start says it when it is true.
            warnings.filterwarnings("ignore", message="Checkpoint directory .* exists and is not empty")
            super().setup(trainer, pl_module, stage)
        folder = Path(self.dirpath)
        self._found_files = stage == "fit" and folder.is_dir() and any(folder.iterdir())

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._found_files = False  # resuming: the files are this run's
        super().load_state_dict(state_dict)

    def on_train_start(self, trainer, pl_module) -> None:
        super().on_train_start(trainer, pl_module)
        if self._found_files and trainer.is_global_zero:
            log.warning(f"glubench: {self.dirpath} already holds checkpoints this run does not resume from; "
                        "those of the steps it saves are replaced")

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if not _validation_follows(trainer):
            super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)

    def _save_checkpoint(self, trainer, filepath: str) -> None:
        # Every save of ModelCheckpoint goes through here.  The module's on_save_checkpoint pauses its
        # training clock too, but Lightning calls it after collecting the state (~1 ms of a small
        # model's write); pausing here keeps the whole checkpoint out of tokens/s and budget=time.
        clock = getattr(trainer.lightning_module, "train_clock", None)
        if clock is not None:
            clock.pause()  # the next training batch restarts it (LanguageModel.on_train_batch_start)
        super()._save_checkpoint(trainer, filepath)

    def on_validation_end(self, trainer, pl_module) -> None:
        super().on_validation_end(trainer, pl_module)
        if not trainer.sanity_checking:
            super().on_train_batch_end(trainer, pl_module, None, None, 0)


class ResumeState(pl.Callback):
    """Saves this process's RNG states in each checkpoint and restores them on resume.

    The states are applied in ``on_train_start``, after Lightning has built the dataloader
    iterators (which draw from the torch RNG), so the next random draw of a resumed run is
    the one the uninterrupted run made after the checkpoint.  Under DDP each rank restores
    the state rank 0 saved; all ranks are seeded alike, so this only matters for dropout,
    whose masks then stay identical to an uninterrupted run on the same world size.
    """

    def __init__(self) -> None:
        self._pending: dict[str, Any] | None = None

    def state_dict(self) -> dict[str, Any]:
        return {"rng": collect_rng_states()}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._pending = state_dict.get("rng")

    def on_train_start(self, trainer, pl_module) -> None:
        if self._pending is not None:
            set_rng_states(self._pending)
            self._pending = None


def at_step_boundary(trainer) -> bool:
    """Whether the fit loop is between optimizer steps: no batch in flight, every gradient-accumulation
    micro-batch of the last step done, no validation under way, so a checkpoint now resumes exactly."""
    done = trainer.fit_loop.epoch_loop.batch_progress.total
    return (not trainer.validating and done.ready == done.completed
            and done.completed % trainer.accumulate_grad_batches == 0)


class InterruptCheckpoint(pl.Callback):
    """Save a checkpoint to ``path`` when ``fit`` is interrupted (Ctrl-C, SIGTERM), so no step is lost.

    ``path`` defaults to ``<run dir>/checkpoints/last.ckpt``.

    :class:`FitSignals` makes Lightning stop at an optimizer-step boundary (``SIGTERMException``, a
    ``SystemExit``) and Lightning calls ``on_exception`` before unwinding.  The checkpoint is written
    only at such a boundary (:func:`at_step_boundary`): a second Ctrl-C (``KeyboardInterrupt``) stops in
    the middle of a step, whose weights, counters and schedule disagree, so the last periodic
    checkpoint stays the resume point.  Nothing is written either when the periodic checkpoint of
    this very step exists (``last.ckpt`` already links to it) or for other exceptions (bugs,
    :class:`Diverged`).  Unlike Lightning's ``OnExceptionCheckpoint`` the file is kept after a normal
    teardown.
    """

    def __init__(self, path: str | os.PathLike | None = None) -> None:
        self.path = Path(path) if path is not None else None
        self._saved_step: int | None = None  # the step of the last checkpoint written (or resumed from)

    def setup(self, trainer, pl_module, stage: str) -> None:
        if self.path is None:
            self.path = Path(trainer.default_root_dir) / CHECKPOINT_DIR / LAST_CHECKPOINT

    def on_save_checkpoint(self, trainer, pl_module, checkpoint: dict[str, Any]) -> None:
        self._saved_step = trainer.global_step

    def on_load_checkpoint(self, trainer, pl_module, checkpoint: dict[str, Any]) -> None:
        self._saved_step = checkpoint.get("global_step")  # the resume point until a new checkpoint is written

    def on_exception(self, trainer, pl_module, exception: BaseException) -> None:
        if not isinstance(exception, (KeyboardInterrupt, SystemExit)) or trainer.global_step == 0:
            return
        if self._saved_step == trainer.global_step and self.path.exists():
            return  # the periodic checkpoint of this step is there and last.ckpt names it
        if not at_step_boundary(trainer):
            where = (f"during the validation at step {trainer.global_step}" if trainer.validating
                     else f"in the middle of step {trainer.global_step + 1}")
            log.warning(f"glubench: stopped {where}: no checkpoint written; {self.path} "
                        f"(step {self._saved_step or 0}) is the resume point")
            return
        try:
            trainer.save_checkpoint(self.path, weights_only=False)  # optimizer too: resumable
        except Exception as e:  # never mask the interruption itself
            log.warning(f"glubench: could not save {self.path} on interrupt: {e}")


class FitSignals(pl.Callback):
    """Stops a fitting run at the first optimizer-step boundary after Ctrl-C or a preemption signal.

    ``interrupts`` (the run's :class:`~glubench.train.faults.Interrupts`) records the signal while
    fitting; this callback takes SIGTERM back from Lightning when training starts (Lightning would stop at the
    next *batch*, in the middle of a gradient accumulation) and hands the signal to Lightning's
    handler once an optimizer step has finished and no validation follows it, or once that
    validation (and the periodic checkpoint) is done.  Lightning then raises ``SIGTERMException`` at
    the end of the batch, with every loop counter, the LR schedule and the data position agreeing
    with ``global_step``.  A run at its last step simply finishes.  The task always adds this callback.

    Args:
        interrupts: the run's signal state; ``None``: one of its own that is never installed (nothing
            is deferred).
    """

    def __init__(self, interrupts: Interrupts | None = None) -> None:
        self.interrupts = interrupts if interrupts is not None else Interrupts()
        self._lightning_sigterm: Any = None

    def setup(self, trainer, pl_module, stage: str) -> None:
        self.interrupts.deferring = stage == "fit"

    def on_train_start(self, trainer, pl_module) -> None:
        self._lightning_sigterm = self.interrupts.defer_sigterm()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if self.interrupts.received and getattr(pl_module, "step_finished", True) and not _validation_follows(trainer):
            self._stop(trainer)

    def on_validation_end(self, trainer, pl_module) -> None:
        if self.interrupts.received and trainer.state.fn == "fit" and not trainer.sanity_checking:
            self._stop(trainer)

    def _stop(self, trainer) -> None:
        if self._lightning_sigterm is None or trainer.should_stop or trainer.global_step >= trainer.max_steps > 0:
            return  # not deferring, or the run ends after this step anyway
        self.interrupts.hand_over(self._lightning_sigterm)
        self._lightning_sigterm = None

    def teardown(self, trainer, pl_module, stage: str) -> None:
        self.interrupts.deferring = False

    on_exception = teardown  # Lightning skips callback teardown when fit raises


class NonFiniteGuard(pl.Callback):
    """Catch a non-finite loss or gradient and name the step and the last finite loss.

    Before each optimizer step the total gradient norm is taken (one fused kernel; a
    :class:`~glubench.train.module.LanguageModel` computes it once for the guard, the clipping and
    ``train/grad_norm``); a NaN or infinite norm means the loss or a gradient is non-finite.
    Gradients are all-reduced before this hook, so every DDP rank sees the same verdict.  With
    ``16-mixed`` precision the GradScaler already skips overflowing steps, so the guard watches the
    (unscaled) loss instead.
    The first bad step and the last finite loss before it are kept on the device
    (``torch.where``), so watching costs no host sync.

    Args:
        on_nonfinite: ``"stop"`` raises :class:`Diverged`; ``"skip"`` drops the batch's update
            (all gradients set to ``None``, so AdamW leaves those weights and moments alone) and
            raises only when more than ``max_skips`` batches were dropped.  ``skip`` must decide
            before each update, so it reads the verdict back every optimizer step (a host sync).
        max_skips: the bound for ``"skip"``.
        check_loss_only: watch the loss, not the gradients; ``None``: only under ``16-mixed`` precision.
        check_every_n_steps: ``stop`` reads the verdict back every this many optimizer steps (and
            before each validation and at the end), so the hot path keeps no per-step sync; with
            1 it stops before the bad update reaches the weights, otherwise up to n-1 steps later
            (the step it names is still the first bad one).

    ``skipped`` counts dropped batches.
    """

    def __init__(self, on_nonfinite: str = "stop", max_skips: int = 10, check_loss_only: bool | None = None,
                 check_every_n_steps: int = 1) -> None:
        FaultsConfig(on_nonfinite, max_skips)  # the section's rules (ConfigError)
        self.on_nonfinite, self.max_skips, self.check_loss_only = on_nonfinite, max_skips, check_loss_only
        self.every = max(1, check_every_n_steps)
        self.skipped = 0
        self._step = 0  # trainer.global_step when the batch began
        self._last_loss: torch.Tensor | None = None  # last finite loss before the first bad step
        self._last_step: torch.Tensor | None = None
        self._bad_step: torch.Tensor | None = None  # first bad step, -1 while none

    def setup(self, trainer, pl_module, stage: str) -> None:
        if self.check_loss_only is None:
            self.check_loss_only = str(trainer.precision) == "16-mixed"

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
        norm = pl_module.grad_norm(optimizer) if isinstance(pl_module, LanguageModel) else total_grad_norm(optimizer)
        if norm is None:
            return
        self._init_state(norm.device)
        finite = torch.isfinite(norm)
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
        if step != self._step and step % self.every == 0:  # an optimizer step just finished
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
