"""Training budgets: the same tokens, the same training FLOPs, or the same wall-clock seconds.

A budget turns into a number of optimizer steps in one place, :func:`plan_budget`, before the
Trainer is built; the LR schedule then uses those steps as its horizon.  ``time`` cannot be
turned into steps in advance: :class:`BudgetCallback` stops training once the training clock
(validation excluded) reaches the limit, and re-estimates the schedule's horizon after every
step from the time spent so far, so the cosine decay ends when the clock runs out.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass

import lightning.pytorch as pl
import torch

from glubench.train.validate import BUDGET_MODES, ConfigError

# time mode: the step cap handed to Lightning and the data module; the clock stops first.
TIME_MODE_MAX_STEPS = 10**9


@dataclass(frozen=True)
class BudgetPlan:
    """A budget resolved to optimizer steps.

    Attributes:
        mode: ``tokens``, ``flops`` or ``time``.
        value: ``budget.value`` as given (``None``: derived from ``trainer.max_steps``).
        target: the budget in its own unit: tokens, training FLOPs or seconds.
        max_steps: optimizer steps to train (``time``: a cap the clock stops before).
        tokens_per_step: tokens per optimizer step, all devices and micro-batches.
        flops_per_token: training FLOPs per token of this model.
    """

    mode: str
    value: float | None
    target: float
    max_steps: int
    tokens_per_step: int
    flops_per_token: float


def world_size(devices, num_nodes: int = 1) -> int:
    """Processes Lightning will start for ``trainer.devices`` × ``trainer.num_nodes``.

    An int, a digit string or a list of ids is exact; ``"auto"``/``-1`` counts the visible
    CUDA devices (1 without CUDA).  train.py checks the answer against the built Trainer.
    """
    if hasattr(devices, "__len__") and not isinstance(devices, str):  # list or ListConfig of ids
        n = len(devices)
    elif isinstance(devices, str) and devices.strip().lstrip("-").isdigit():
        n = int(devices)
    elif isinstance(devices, int):
        n = devices
    else:
        n = -1
    if n == -1:
        n = max(1, torch.cuda.device_count())
    return n * num_nodes


def plan_budget(mode: str, value: float | None, *, max_steps: int, tokens_per_step: int,
                flops_per_token: float, reference_flops_per_token: float | None = None,
                warmup_steps: int = 0) -> BudgetPlan:
    """Resolve a budget to optimizer steps (rounded down: a run never exceeds its budget).

    - ``tokens``: ``value`` tokens, or ``max_steps`` steps when ``value`` is ``None``.
    - ``flops``: ``value`` training FLOPs (``flops_per_token`` · tokens, the analytic
      6·N + 12·L·d·T of :func:`glubench.metrics.flops_per_token`); ``None`` means what
      ``max_steps`` steps cost the reference model (``reference_flops_per_token``, the
      non-gated baseline), so cheaper variants get more steps and dearer ones fewer.
      Two variants' FLOPs then differ by less than one step's FLOPs of the dearer one.
    - ``time``: ``value`` training seconds; ``max_steps`` becomes :data:`TIME_MODE_MAX_STEPS`.

    Raises:
        ConfigError: unknown mode, a missing or non-positive value, or a budget that does not
            cover more than ``warmup_steps`` steps.
    """
    if mode not in BUDGET_MODES:
        raise ConfigError(f"budget.mode={mode!r} is not known; valid: {', '.join(BUDGET_MODES)}")
    if value is not None and not value > 0:
        raise ConfigError(f"budget.value={value} must be positive (or null for budget.mode=tokens|flops)")
    if mode == "time":
        if value is None:
            raise ConfigError("budget.value=null: budget.mode=time needs the training seconds, e.g. budget.value=60")
        return BudgetPlan(mode, value, float(value), TIME_MODE_MAX_STEPS, tokens_per_step, flops_per_token)
    if mode == "tokens":
        target = float(value) if value is not None else float(max_steps * tokens_per_step)
        steps = math.floor(target / tokens_per_step)
    else:
        ref = reference_flops_per_token if reference_flops_per_token is not None else flops_per_token
        target = float(value) if value is not None else float(max_steps * tokens_per_step * ref)
        steps = math.floor(target / (tokens_per_step * flops_per_token))
    if steps <= warmup_steps:
        raise ConfigError(
            f"budget.value={value} ({mode}) gives {steps} optimizer steps of {tokens_per_step} tokens, "
            f"which must exceed optim.warmup_steps={warmup_steps}; raise budget.value"
        )
    return BudgetPlan(mode, value, target, steps, tokens_per_step, flops_per_token)


class BudgetCallback(pl.Callback):
    """Measures training seconds (validation excluded) and, with a limit, stops at it.

    The clock starts at ``on_train_start`` and pauses during validation.  With
    ``seconds_limit`` set (``budget=time``), the clock is read after every optimizer step
    (after ``torch.cuda.synchronize`` on CUDA, so queued kernels count) and training stops at
    the first step that ends at or past the limit: the overshoot is less than one step.  The
    module's :func:`~glubench.module.lr_lambda` schedule is rebound to a horizon re-estimated
    after every step as ``steps · limit / elapsed`` (:attr:`horizon`), so the cosine reaches its
    floor as the clock runs out rather than at an arbitrary step count.  Under DDP the stop
    decision is shared.

    Args:
        seconds_limit: training seconds, or ``None`` to measure only.
        clock: returns seconds (``time.perf_counter``; tests pass a fake one).
    """

    def __init__(self, seconds_limit: float | None = None, clock: Callable[[], float] = time.perf_counter) -> None:
        self.seconds_limit, self.clock = seconds_limit, clock
        self.seconds = 0.0  # finished segments
        self.last_step_seconds = 0.0  # time mode: the last optimizer step's training seconds
        self.stopped_at: float | None = None  # time mode: training seconds when the stop was decided
        self._t_run: float | None = None
        self._running = False
        self._last_step = 0
        self._last_read = 0.0
        self._sync: Callable[[], None] | None = None
        self.horizon = TIME_MODE_MAX_STEPS  # time mode: the schedule's current estimate of the total steps

    def _now(self) -> float:
        if self._sync is not None:
            self._sync()
        return self.clock()

    def elapsed(self) -> float:
        """Training seconds so far."""
        return self.seconds + (self._now() - self._t_run if self._t_run is not None else 0.0)

    def on_train_start(self, trainer, pl_module) -> None:
        self._sync = torch.cuda.synchronize if pl_module.device.type == "cuda" else None
        self._running, self._last_step = True, trainer.global_step
        self._t_run = self._now()
        if self.seconds_limit is not None:
            self._rebind_schedule(trainer, pl_module)

    def _rebind_schedule(self, trainer, pl_module) -> None:
        """Point every LambdaLR's multiplier at :attr:`horizon` instead of a fixed step count."""
        from glubench.train.module import lr_lambda

        def multiplier(step: int) -> float:
            return lr_lambda(step, pl_module.warmup_steps, self.horizon, pl_module.min_lr_ratio)

        for config in getattr(trainer, "lr_scheduler_configs", []):
            if isinstance(config.scheduler, torch.optim.lr_scheduler.LambdaLR):
                config.scheduler.lr_lambdas = [multiplier] * len(config.scheduler.lr_lambdas)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if self.seconds_limit is None or trainer.global_step == self._last_step:
            return  # measuring only, or still accumulating gradients
        steps = trainer.global_step
        self._last_step = steps
        now = self.elapsed()
        self.last_step_seconds, self._last_read = now - self._last_read, now
        stop = now >= self.seconds_limit
        if trainer.world_size > 1:
            stop = trainer.strategy.reduce_boolean_decision(stop, all=False)
        if stop:
            trainer.should_stop, self.stopped_at = True, now
        elif now > 0:
            self.horizon = max(steps + 1, math.ceil(steps * self.seconds_limit / now))

    def on_validation_start(self, trainer, pl_module) -> None:
        if self._running and self._t_run is not None:
            self.seconds += self._now() - self._t_run
            self._t_run = None

    def on_validation_end(self, trainer, pl_module) -> None:
        if self._running and self._t_run is None:
            self._t_run = self._now()

    def on_train_end(self, trainer, pl_module) -> None:
        if self._t_run is not None:
            self.seconds += self._now() - self._t_run
            self._t_run = None
        self._running = False


def realised(plan: BudgetPlan, tokens: int, steps: int, clock: BudgetCallback) -> dict:
    """The ``budget`` record of results.json: the request and what was spent.

    Keys: ``mode``, ``value``, ``target`` (tokens | FLOPs | seconds), ``max_steps`` (planned;
    ``None`` for time), ``steps``, ``tokens``, ``flops`` (tokens · FLOPs per token) and
    ``seconds`` (training only, validation excluded); for time also ``stopped_at`` (training
    seconds at the stop decision, ``None`` if the step cap came first) and ``last_step_seconds``.
    """
    out = {"mode": plan.mode, "value": plan.value, "target": plan.target,
           "max_steps": plan.max_steps if plan.mode != "time" else None, "steps": int(steps),
           "tokens": int(tokens), "flops": float(tokens) * plan.flops_per_token, "seconds": float(clock.seconds)}
    if plan.mode == "time":
        out.update(stopped_at=clock.stopped_at, last_step_seconds=clock.last_step_seconds)
    return out


def plan_from_config(cfg, model) -> BudgetPlan:
    """:func:`plan_budget` for a composed config and its built :class:`~glubench.model.Transformer`.

    The reference for ``budget=flops`` with no value is the non-gated baseline of width
    ``model.d_ff``: this model's matmul weights with its FFN matrices swapped for two
    ``d_model × d_ff`` ones.
    """
    from glubench.nn.flops import flops_per_token
    from glubench.nn.transformer import count_params

    mc, t = model.cfg, cfg.trainer
    matmul = count_params(model).matmul
    ffn_matmul = sum(m.weight.numel() for m in model.blocks[0].ffn.modules() if isinstance(m, torch.nn.Linear))
    ref_matmul = matmul + mc.n_layers * (2 * mc.d_model * mc.d_ff - ffn_matmul)
    tps = cfg.data.batch_size * mc.seq_len * t.accumulate_grad_batches * world_size(t.devices, t.num_nodes)
    return plan_budget(
        cfg.budget.mode, cfg.budget.value, max_steps=t.max_steps, tokens_per_step=tps,
        flops_per_token=flops_per_token(matmul, mc.n_layers, mc.d_model, mc.seq_len),
        reference_flops_per_token=flops_per_token(ref_matmul, mc.n_layers, mc.d_model, mc.seq_len),
        warmup_steps=cfg.optim.warmup_steps,
    )
