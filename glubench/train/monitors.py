"""The Lightning callbacks that measure and show a run, built from ``conf/callbacks/`` by ``hydra.utils.instantiate``.

* :class:`ThroughputCallback`, :class:`BudgetCallback`: tokens/s, MFU and training seconds
  (validation excluded); the budget callback also stops a ``budget=time`` run.
* :class:`StepLRMonitor`: Lightning's ``LearningRateMonitor``, once per optimizer step, also without a logger.
* :class:`GlubenchProgressBar`: Lightning's bar without a host sync per step.
* :class:`DeadUnitsCallback`: dead units, sparsity and gate saturation on a fixed probe batch.

Per-step values reach the loggers through :func:`glubench.train.module.log_at_step`, labelled with the optimizer steps
done, the same step numbers ``results.json``, the checkpoints and the report use.
"""

from __future__ import annotations

import logging
import math
import sys
from typing import Any

import lightning.pytorch as pl
import numpy as np
import torch
from lightning.pytorch.callbacks import LearningRateMonitor, TQDMProgressBar
from lightning.pytorch.callbacks.progress.tqdm_progress import convert_inf

from glubench.analysis.dead_units import STAT_KEYS, probe_batch, probe_stats
from glubench.core.clock import Stopwatch
from glubench.nn.flops import mfu
from glubench.train.budget import TIME_MODE_MAX_STEPS
from glubench.train.metrics import ThroughputMeter, peak_flops
from glubench.train.module import is_logging_step, log_at_step
from glubench.train.schema import DiagnosticsConfig

log = logging.getLogger(__name__)


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
