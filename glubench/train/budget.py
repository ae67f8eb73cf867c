"""Training budgets: the same tokens, training FLOPs or wall-clock seconds, or tokens per parameter.

A budget turns into a number of optimizer steps in one place, :func:`plan_budget`, before the
Trainer is built; the LR schedule then uses those steps as its horizon.  ``time`` cannot be
turned into steps in advance: :class:`glubench.train.monitors.BudgetCallback` stops training once the training clock
(validation excluded) reaches the limit, and re-estimates the schedule's horizon after every
step from the time spent so far, so the cosine decay ends when the clock runs out.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from glubench.core.errors import ConfigError
from glubench.nn.config import ffn_params
from glubench.nn.flops import flops_per_token
from glubench.train.schema import BudgetConfig

# time mode: the step cap handed to Lightning and the data module; the clock stops first.
TIME_MODE_MAX_STEPS = 10**9


@dataclass(frozen=True)
class BudgetPlan:
    """A budget resolved to optimizer steps.

    Attributes:
        mode: ``tokens``, ``flops``, ``time`` or ``tokens_per_param``.
        value: ``budget.value`` as given (``None``: derived from ``trainer.max_steps``).
        target: the budget in its own unit: tokens, training FLOPs or seconds
            (``tokens_per_param``: tokens, ``value`` × non-embedding parameters).
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


def plan_budget(mode: str, value: float | None, *, max_steps: int, tokens_per_step: int,
                flops_per_token: float, reference_flops_per_token: float | None = None,
                warmup_steps: int = 0, params: int | None = None) -> BudgetPlan:
    """Resolve a budget to optimizer steps (rounded down: a run never exceeds its budget).

    - ``tokens``: ``value`` tokens, or ``max_steps`` steps when ``value`` is ``None``.
    - ``flops``: ``value`` training FLOPs (``flops_per_token`` · tokens, the analytic
      6·N + 12·L·d·T of :func:`glubench.nn.flops.flops_per_token`); ``None`` means what
      ``max_steps`` steps cost the reference model (``reference_flops_per_token``, the
      non-gated baseline), so cheaper variants get more steps and dearer ones fewer.
      Two variants' FLOPs then differ by less than one step's FLOPs of the dearer one.
    - ``time``: ``value`` training seconds; ``max_steps`` becomes :data:`TIME_MODE_MAX_STEPS`.
    - ``tokens_per_param``: ``value`` × ``params`` training tokens (``params``: the model's
      non-embedding parameters, Kaplan et al. 2020's N), so the budget grows with the model, as
      a compute ladder needs (Hoffmann et al. 2022 find ~20 tokens per parameter compute-optimal).

    Raises:
        ConfigError: see :class:`~glubench.train.schema.BudgetConfig`, or a budget that does not cover more than
            ``warmup_steps`` steps.
    """
    BudgetConfig(mode, value)  # its rules: a known mode, a positive value where one is needed
    if mode == "time":
        return BudgetPlan(mode, value, float(value), TIME_MODE_MAX_STEPS, tokens_per_step, flops_per_token)
    if mode == "tokens_per_param":
        target = float(value) * params
        steps = math.floor(target / tokens_per_step)
    elif mode == "tokens":
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


def realised(plan: BudgetPlan, tokens: int, steps: int, seconds: float, stopped_at: float | None = None,
             last_step_seconds: float | None = None) -> dict:
    """The ``budget`` record of results.json: the request and what was spent.

    Keys: ``mode``, ``value``, ``target`` (tokens | FLOPs | seconds), ``max_steps`` (planned;
    ``None`` for time), ``steps``, ``tokens``, ``flops`` (tokens · FLOPs per token) and
    ``seconds`` (training only, validation excluded); for time also ``stopped_at`` (training
    seconds at the stop decision, ``None`` if the step cap came first) and ``last_step_seconds``.
    """
    out = {"mode": plan.mode, "value": plan.value, "target": plan.target,
           "max_steps": plan.max_steps if plan.mode != "time" else None, "steps": int(steps),
           "tokens": int(tokens), "flops": float(tokens) * plan.flops_per_token, "seconds": float(seconds)}
    if plan.mode == "time":
        out.update(stopped_at=stopped_at, last_step_seconds=last_step_seconds)
    return out


def plan_from_config(cfg, model_cfg, matmul_params: int, world_size: int, nonembedding_params: int = 0
                     ) -> BudgetPlan:
    """:func:`plan_budget` for a composed config, its model and the number of processes.

    Args:
        cfg: the run config (``budget.*``, ``trainer.*``, ``data.batch_size``, ``optim.warmup_steps``).
        model_cfg: the :class:`~glubench.nn.transformer.ModelConfig` (FFN widths after matching).
        matmul_params: the model's per-token matmul weights (``count_params(model).matmul``).
        nonembedding_params: its non-embedding parameters (``count_params(model).nonembedding``), for
            ``budget.mode=tokens_per_param``.
        world_size: processes training together (``trainer.world_size``).

    The reference for ``budget=flops`` with no value is the non-gated baseline of width
    ``model.d_ff``: this model's matmul weights with its FFN matrices swapped for two
    ``d_model × d_ff`` ones.
    """
    mc, t = model_cfg, cfg.trainer
    ffn_matmul = ffn_params(mc.d_model, mc.ffn_hidden, mc.gated, bias=False)
    ref_matmul = matmul_params + mc.n_layers * (2 * mc.d_model * mc.d_ff - ffn_matmul)
    tps = cfg.data.batch_size * mc.seq_len * t.accumulate_grad_batches * world_size
    return plan_budget(
        cfg.budget.mode, cfg.budget.value, max_steps=t.max_steps, tokens_per_step=tps,
        flops_per_token=flops_per_token(matmul_params, mc.n_layers, mc.d_model, mc.seq_len),
        reference_flops_per_token=flops_per_token(ref_matmul, mc.n_layers, mc.d_model, mc.seq_len),
        # a warmup fraction < 1 is shorter than any run of at least one step
        warmup_steps=cfg.optim.warmup_steps if cfg.optim.get("warmup_fraction") is None else 0,
        params=nonembedding_params,
    )
