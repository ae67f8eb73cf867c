"""Every Lightning callback glubench uses, built from ``conf/callbacks/`` by ``hydra.utils.instantiate``.

* :class:`StepCheckpoint`, :class:`ResumeState`, :class:`InterruptCheckpoint`: checkpoints that a
  resumed run continues from exactly, and one at the interrupted step on Ctrl-C / SIGTERM.
* :class:`NonFiniteGuard`: a non-finite loss or gradient stops the run (or drops the batch).
* :class:`ThroughputCallback`, :class:`BudgetCallback`: tokens/s, MFU and training seconds
  (validation excluded); the budget callback also stops a ``budget=time`` run.
* :class:`StepLRMonitor`: Lightning's ``LearningRateMonitor``, once per optimizer step, also without a logger.
* :class:`GlubenchProgressBar`: Lightning's bar without a host sync per step.
* :class:`DeadUnitsCallback`: dead units, sparsity and gate saturation on a fixed probe batch.
* :class:`FitSignals`: internal; marks when Lightning handles SIGTERM itself (always added).

Per-step values reach the loggers through :func:`glubench.train.module.log_at_step`, labelled with the optimizer steps
done, the same step numbers ``results.json``, the checkpoints and the report use.
"""

from __future__ import annotations

import logging
import math
import os
import sys
import warnings
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import numpy as np
import torch
from lightning.pytorch.callbacks import LearningRateMonitor, ModelCheckpoint, TQDMProgressBar
from lightning.pytorch.callbacks.progress.tqdm_progress import convert_inf

from glubench.analysis.dead_units import STAT_KEYS, probe_batch, probe_stats
from glubench.core.clock import Stopwatch
from glubench.core.errors import Diverged
from glubench.nn.flops import mfu
from glubench.train.budget import TIME_MODE_MAX_STEPS
from glubench.train.faults import Interrupts
from glubench.train.metrics import ThroughputMeter, peak_flops
from glubench.train.module import LanguageModel, is_logging_step, log_at_step, total_grad_norm
from glubench.train.resume import CHECKPOINT_DIR, LAST_CHECKPOINT, collect_rng_states, set_rng_states
from glubench.train.schema import DiagnosticsConfig, FaultsConfig

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


class ThroughputCallback(pl.Callback):
    """Logs ``train/tokens_per_sec``, ``train/step_time_ms`` and (if a peak is known) ``train/mfu``.

    Tokens per optimizer step are the module's ``tokens_seen`` (every gradient-accumulation
    micro-batch) times the processes (``tokens_per_sec`` is the global rate, not per device); the
    time is the module's ``train_clock`` (validation excluded).  The first ``warmup_steps``
    optimizer steps are excluded, and the clock is read only at logging steps (after
    ``torch.cuda.synchronize`` on CUDA), so the hot path has no host syncs.  Lightning's own
    ``ThroughputMonitor`` is not used because it synchronises the device after every batch and
    reports a sliding window, not the whole-run rate ``results.json`` records.

    Args:
        flops_per_token: training FLOPs per token (the task sets the budget plan's); ``None``: no MFU.
        peak_flops: the device's dense peak FLOP/s; ``None``: :func:`glubench.train.metrics.peak_flops`
            of the training device and precision (no MFU where it is unknown, e.g. on a CPU).
        warmup_steps: optimizer steps excluded from the measurement.
        log_every_n_steps: optimizer steps between clock reads; ``None``: ``trainer.log_every_n_steps``.
    """

    def __init__(self, flops_per_token: float | None = None, peak_flops: float | None = None, warmup_steps: int = 10,
                 log_every_n_steps: int | None = None) -> None:
        self.flops_per_token, self.peak_flops = flops_per_token, peak_flops
        self.warmup_steps, self.log_every_n_steps = warmup_steps, log_every_n_steps
        self.meter: ThroughputMeter | None = None
        self._tokens = 0  # tokens of all processes when the last optimizer step ended

    def on_train_start(self, trainer, pl_module) -> None:
        self.meter = ThroughputMeter(pl_module.train_clock, self.warmup_steps)
        self._tokens = pl_module.tokens_seen * trainer.world_size
        if self.peak_flops is None:
            self.peak_flops = peak_flops(trainer.strategy.root_device, str(trainer.precision))

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if not pl_module.step_finished:
            return
        tokens = pl_module.tokens_seen * trainer.world_size
        self.meter.step(tokens - self._tokens)
        self._tokens = tokens
        if is_logging_step(trainer, every=self.log_every_n_steps):
            rates = self.meter.read()
            if rates is not None:
                log_at_step(trainer, self._metrics(rates))

    def on_train_end(self, trainer, pl_module) -> None:
        if self.meter is not None:
            self.meter.read()  # close the window on the last steps

    def _metrics(self, rates: dict[str, float]) -> dict[str, float]:
        out = {"train/tokens_per_sec": rates["tokens_per_sec"], "train/step_time_ms": rates["step_time_ms"]}
        value = self._mfu(rates["tokens_per_sec"])
        if value is not None:
            out["train/mfu"] = value
        return out

    def summary(self) -> dict[str, float] | None:
        """Whole-run rates since warmup (``tokens_per_sec``, ``step_time_ms``, ``mfu``) or ``None``."""
        if self.meter is None:
            return None
        s = self.meter.summary()
        if s is not None:
            s["mfu"] = self._mfu(s["tokens_per_sec"])
        return s

    def _mfu(self, tokens_per_sec: float) -> float | None:
        return mfu(tokens_per_sec, self.flops_per_token, self.peak_flops) if self.flops_per_token else None


class BudgetCallback(pl.Callback):
    """Reports training seconds (the module's ``train_clock``, validation excluded) and, with a limit, stops at it.

    With ``seconds_limit`` set (``budget=time``), the clock is read after every optimizer step
    (after ``torch.cuda.synchronize`` on CUDA, so queued kernels count) and training stops at
    the first step that ends at or past the limit: the overshoot is less than one step.  The
    module's cosine horizon (:attr:`~glubench.train.module.LanguageModel.schedule_horizon`, which its
    :func:`~glubench.train.module.lr_lambda` schedule reads at every step) is re-estimated after every
    step as ``steps · limit / elapsed``, so the cosine reaches its floor as the clock runs out rather
    than at an arbitrary step count.  Under DDP the stop decision is shared.

    Args:
        seconds_limit: training seconds, or ``None`` to measure only.

    Raises:
        TypeError: at the start of training with a limit, when the LightningModule has no
            ``schedule_horizon`` (its schedule could not follow the clock).
    """

    def __init__(self, seconds_limit: float | None = None) -> None:
        self.seconds_limit = seconds_limit
        self.watch: Stopwatch | None = None  # the module's train_clock, from on_train_start
        self.last_step_seconds = 0.0  # time mode: the last optimizer step's training seconds
        self.stopped_at: float | None = None  # time mode: training seconds when the stop was decided
        self._last_read = 0.0

    @property
    def seconds(self) -> float:
        """Training seconds so far (validation excluded)."""
        return self.watch.elapsed() if self.watch is not None else 0.0

    def on_train_start(self, trainer, pl_module) -> None:
        self.watch = pl_module.train_clock
        if self.seconds_limit is not None and not hasattr(pl_module, "schedule_horizon"):
            raise TypeError(f"budget=time: {type(pl_module).__name__} has no schedule_horizon for its LR schedule "
                            "to follow the clock (glubench.train.module.LanguageModel has)")

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if self.seconds_limit is None or not pl_module.step_finished:
            return  # measuring only, or still accumulating gradients
        steps = trainer.global_step
        now = self.watch.elapsed()
        self.last_step_seconds, self._last_read = now - self._last_read, now
        stop = now >= self.seconds_limit
        if trainer.world_size > 1:
            stop = trainer.strategy.reduce_boolean_decision(stop, all=False)
        if stop:
            trainer.should_stop, self.stopped_at = True, now
        elif now > 0:
            pl_module.schedule_horizon = max(steps + 1, math.ceil(steps * self.seconds_limit / now))


class StepLRMonitor(LearningRateMonitor):
    """Lightning's ``LearningRateMonitor`` (``lr-AdamW/pg1`` and ``/pg2``: the decayed and the
    undecayed parameter groups), except that a run without a logger (``logger=none``) logs nothing
    instead of refusing to start, and that with gradient accumulation it logs once per optimizer step
    (at its first micro-batch), not once per micro-batch: Lightning's logging-step test counts
    optimizer steps, so each of a logging step's micro-batches passed it and wrote the same row."""

    def on_train_start(self, trainer, *args: Any, **kwargs: Any) -> None:
        if trainer.loggers:
            super().on_train_start(trainer, *args, **kwargs)

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx, *args: Any, **kwargs: Any) -> None:
        if trainer.loggers and batch_idx % trainer.accumulate_grad_batches == 0:
            super().on_train_batch_start(trainer, pl_module, batch, batch_idx, *args, **kwargs)

    def on_train_epoch_start(self, trainer, *args: Any, **kwargs: Any) -> None:
        if trainer.loggers:
            super().on_train_epoch_start(trainer, *args, **kwargs)


class GlubenchProgressBar(TQDMProgressBar):
    """Lightning's progress bar, showing ``loss`` (the last training loss) at each refresh.

    The module keeps its loss as a device tensor (``last_loss``); it is read back to the
    host only when the bar refreshes (every ``refresh_rate`` steps; ``conf/callbacks/default.yaml`` sets
    ``trainer.log_every_n_steps``), not after every step as ``self.log(..., prog_bar=True)``
    would do.

    Only on a terminal: when stdout is a file or a pipe (a batch job's log, ``| tee``) a bar's
    carriage-return redraws pile up as dozens of lines, so there is no bar and each validation
    during training logs one line instead (``glubench: step 100/300 val_loss=2.6312``).
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if not sys.stdout.isatty():
            self.disable()

    def on_validation_end(self, trainer, pl_module) -> None:
        super().on_validation_end(trainer, pl_module)
        loss = getattr(pl_module, "last_val", {}).get("val/loss")
        if self.is_disabled and trainer.state.fn == "fit" and not trainer.sanity_checking and loss is not None:
            of = f"/{trainer.max_steps}" if 0 < trainer.max_steps < TIME_MODE_MAX_STEPS else ""
            log.info(f"glubench: step {trainer.global_step}{of} val_loss={loss:.4f}")

    @property
    def total_train_batches(self) -> int | float:
        """The bar counts optimizer steps, up to ``max_steps`` (``inf`` under ``budget=time``).

        Lightning's total is the steps *left* (or the epoch's micro-batches), while its count is the
        batch index, which runs ``accumulate_grad_batches`` times faster than the steps.
        """
        steps = self.trainer.max_steps
        return steps if 0 < steps < TIME_MODE_MAX_STEPS else float("inf")

    def on_train_start(self, trainer, pl_module) -> None:
        super().on_train_start(trainer, pl_module)
        # Lightning sets the total and the title in on_train_epoch_start, which it skips for a run
        # resumed in the middle of its epoch: that bar showed "Training: 120/?".
        bar = self.train_progress_bar
        bar.total = convert_inf(self.total_train_batches)
        bar.initial = bar.n = trainer.global_step
        bar.set_description(f"Epoch {trainer.current_epoch}")

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if getattr(pl_module, "step_finished", True):  # the last micro-batch of a step: the step count moves
            super().on_train_batch_end(trainer, pl_module, outputs, batch, trainer.global_step - 1)

    def get_metrics(self, trainer, pl_module) -> dict:
        metrics = super().get_metrics(trainer, pl_module)
        loss = getattr(pl_module, "last_loss", None)
        if loss is not None and trainer.training:
            metrics["loss"] = f"{loss.item():.4g}"
        return metrics


class DeadUnitsCallback(pl.Callback):
    """Every ``every_n_steps`` optimizer steps (and at the start and end of training) runs the model
    on a fixed probe batch and logs, per layer ``i``, ``act/layer{i}/dead_frac``,
    ``act/layer{i}/active_frac`` and, for gated variants, ``act/layer{i}/gate_mean`` and
    ``act/layer{i}/gate_sat_frac`` (:func:`glubench.analysis.dead_units.activation_stats`), plus the
    layer means ``act/dead_frac`` and ``act/active_frac``, at the current step.

    Args:
        every_n_steps: optimizer steps between probes.
        probe_batch_size: validation windows in the probe (:func:`glubench.analysis.dead_units.probe_batch`
            of the datamodule's validation split, taken when training starts).
        eps, saturation_tol: see :func:`glubench.analysis.dead_units.activation_stats`.
        probe: ``(B, T)`` token ids to use instead of the validation windows.
    """

    def __init__(self, every_n_steps: int = 50, probe_batch_size: int = 8, eps: float = 1e-3,
                 saturation_tol: float = 1e-2, probe: torch.Tensor | None = None) -> None:
        DiagnosticsConfig(True, every_n_steps, probe_batch_size, eps, saturation_tol)  # the section's rules
        self.every_n_steps, self.probe_batch_size = every_n_steps, probe_batch_size
        self.eps, self.saturation_tol, self.probe = eps, saturation_tol, probe
        self.history: list[dict] = []
        self.probe_seconds: list[float] = []

    def measure(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Probe now, append to :attr:`history` and log (rank zero only)."""
        step = int(trainer.global_step)
        if not trainer.is_global_zero or (self.history and self.history[-1]["step"] == step):
            return  # once per step (the end of training may follow a probe)
        watch = Stopwatch(sync=torch.cuda.synchronize if pl_module.device.type == "cuda" else None)
        watch.start()
        layers = probe_stats(pl_module.model, self.probe.to(pl_module.device), self.eps, self.saturation_tol)
        self.probe_seconds.append(watch.elapsed())
        entry = {"step": step, **{k: [layer[k] for layer in layers] for k in STAT_KEYS if k in layers[0]}}
        self.history.append(entry)
        metrics = {f"act/layer{i}/{k}": v for i, layer in enumerate(layers) for k, v in layer.items()}
        metrics["act/dead_frac"] = float(np.mean(entry["dead_frac"]))
        metrics["act/active_frac"] = float(np.mean(entry["active_frac"]))
        log_at_step(trainer, metrics)

    def on_train_start(self, trainer, pl_module) -> None:
        if self.probe is None:
            self.probe = probe_batch(trainer.datamodule.splits.val, pl_module.model.cfg.seq_len, self.probe_batch_size)
        self.measure(trainer, pl_module)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if pl_module.step_finished and trainer.global_step % self.every_n_steps == 0:
            self.measure(trainer, pl_module)

    def on_train_end(self, trainer, pl_module) -> None:
        self.measure(trainer, pl_module)

    def summary(self, step_time_ms: float | None = None) -> dict | None:
        """The ``diagnostics.dead_units`` entry of ``results.json``, or ``None`` before any probe.

        ``final`` holds the last probe's per-layer lists, ``max`` the per-layer maxima over all
        probes; ``dead_frac`` / ``dead_frac_max`` are the layer mean at the end and its maximum over
        training.  ``probe_ms`` is the mean probe time; with ``step_time_ms`` given,
        ``overhead_frac = probe_ms / (every_n_steps · step_time_ms)``, the share of training time
        the callback adds at this interval.
        """
        if not self.history:
            return None
        keys = [k for k in STAT_KEYS if k in self.history[0]]
        layer_means = [float(np.mean(h["dead_frac"])) for h in self.history]
        probe_ms = 1e3 * float(np.mean(self.probe_seconds))
        return {
            "every_n_steps": self.every_n_steps, "eps": self.eps, "saturation_tol": self.saturation_tol,
            "probe_tokens": int(self.probe.numel()),
            "dead_frac": layer_means[-1], "dead_frac_max": max(layer_means),
            "active_frac": float(np.mean(self.history[-1]["active_frac"])),
            "final": dict(self.history[-1]),
            "max": {k: np.max([h[k] for h in self.history], axis=0).tolist() for k in keys},
            "probe_ms": probe_ms,
            "overhead_frac": probe_ms / (self.every_n_steps * step_time_ms) if step_time_ms else None,
            "history": self.history,
        }
