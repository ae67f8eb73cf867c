"""Metrics: corpus-level NLL, perplexity and bits per byte; training throughput; the device's dense peak."""

from __future__ import annotations

import math

import torch
from lightning.fabric.utilities.throughput import get_available_flops
from torchmetrics import Metric

from glubench.core.clock import Stopwatch

LN2 = math.log(2.0)


class CorpusNLL(Metric):
    """Total negative log-likelihood and predicted-token count over a whole split.

    ``update(nll_sum, n_tokens, n_bytes)`` adds one batch's *summed* NLL (nats), its count of
    predicted (non-padding) tokens and the UTF-8 bytes of those tokens; ``compute()`` returns
    ``{"nll", "tokens", "bytes"}`` (float64 scalars, summed across processes under DDP), from which
    the mean NLL is ``nll / tokens`` — never a mean of batch means, so it does not depend on the
    batch size — and bits per byte ``nll / ln 2 / bytes``.
    """

    full_state_update = False
    higher_is_better = False

    def __init__(self) -> None:
        super().__init__()
        self.add_state("nll", torch.zeros((), dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("tokens", torch.zeros((), dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("bytes", torch.zeros((), dtype=torch.float64), dist_reduce_fx="sum")

    def update(self, nll_sum: torch.Tensor, n_tokens: torch.Tensor | int, n_bytes: torch.Tensor | int = 0) -> None:
        self.nll += nll_sum.detach().to(torch.float64)
        self.tokens += torch.as_tensor(n_tokens, dtype=torch.float64, device=self.tokens.device)
        self.bytes += torch.as_tensor(n_bytes, dtype=torch.float64, device=self.bytes.device).sum()

    def compute(self) -> dict[str, torch.Tensor]:
        return {"nll": self.nll, "tokens": self.tokens, "bytes": self.bytes}


def perplexity(mean_nll: float) -> float:
    """``exp(mean NLL in nats)``; ``inf`` on overflow."""
    try:
        return math.exp(mean_nll)
    except OverflowError:
        return math.inf


def bits_per_byte(total_nll: float, n_bytes: int) -> float:
    """``total NLL (nats) / ln 2 / UTF-8 bytes`` of the predicted text; comparable across tokenizers."""
    if n_bytes <= 0:
        raise ValueError(f"n_bytes={n_bytes} must be positive")
    return total_nll / LN2 / n_bytes


class ThroughputMeter:
    """Tokens/s and step time of training alone, measured after a warmup.

    ``watch`` is the training clock (validation excluded: its owner pauses it,
    :class:`glubench.train.module.LanguageModel`).  Call :meth:`step` once per optimizer step with
    the tokens that step consumed (all micro-batches of gradient accumulation and all devices).
    The first ``warmup_steps`` steps are excluded: the window opens when step ``warmup_steps``
    ends.  The clock is read only when the window opens and by :meth:`read` (logging steps).
    """

    def __init__(self, watch: Stopwatch, warmup_steps: int = 10) -> None:
        self.watch, self.warmup_steps = watch, warmup_steps
        self.steps = 0
        self.tokens = 0
        self._window: tuple[float, int, int] | None = None  # (seconds, tokens, steps) when the window opened
        self._last: tuple[float, int, int] | None = None  # ... at the previous read
        if warmup_steps <= 0:
            self._open_window()

    def _open_window(self) -> None:
        self._window = self._last = (self.watch.elapsed(), self.tokens, self.steps)

    @property
    def started(self) -> bool:
        """Whether the warmup is over and the clock counts."""
        return self._window is not None

    def step(self, tokens: int) -> None:
        """Record one finished optimizer step that consumed ``tokens`` tokens."""
        self.steps += 1
        self.tokens += int(tokens)
        if self.steps == self.warmup_steps:
            self._open_window()

    def read(self) -> dict[str, float] | None:
        """Rates since the previous read (``tokens_per_sec``, ``step_time_ms``); ``None`` in warmup."""
        if not self.started:
            return None
        now = self.watch.elapsed()
        t_last, tok_last, steps_last = self._last
        dt, dtok, dsteps = now - t_last, self.tokens - tok_last, self.steps - steps_last
        self._last = (now, self.tokens, self.steps)
        if dsteps <= 0 or dt <= 0:
            return None
        return {"tokens_per_sec": dtok / dt, "step_time_ms": 1e3 * dt / dsteps}

    def summary(self) -> dict[str, float] | None:
        """Rates over the whole window from warmup to the last :meth:`read`; ``None`` if empty."""
        if not self.started:
            return None
        (t0, tok0, steps0), (t1, tok1, steps1) = self._window, self._last
        if t1 <= t0 or steps1 <= steps0:
            return None
        return {
            "tokens_per_sec": (tok1 - tok0) / (t1 - t0),
            "step_time_ms": 1e3 * (t1 - t0) / (steps1 - steps0),
            "measured_steps": steps1 - steps0,
            "measured_seconds": t1 - t0,
        }


DENSE_PEAK_FLOPS: dict[str, dict[str, float]] = {
    # Lightning lists the H200's bf16 rates with 2:4 sparsity (2e15, 1.7e15); dense is half.
    "H200 NVL": {"bf16": 835.5e12, "fp32": 60e12},
    "H200": {"bf16": 989e12, "fp32": 67e12},
}
"""Dense peak FLOP/s (vendor datasheets) where Lightning's ``get_available_flops`` has no entry or
lists a rate with structured sparsity; MFU always divides by the dense peak."""


def peak_flops(device, precision: str, device_name: str | None = None) -> float | None:
    """Dense peak FLOP/s of ``device`` (a ``torch.device``) at a Lightning ``precision``, or ``None``.

    :data:`DENSE_PEAK_FLOPS` first (matched in ``device_name``, default the CUDA device's name),
    else Lightning's ``get_available_flops`` for the precision's dtype (``bf16*`` -> bfloat16,
    ``16*`` -> float16, else float32; TF32 when float32 matmuls may use it).  CPUs and unknown
    devices return ``None``: MFU is left out rather than guessed.
    """
    if device.type != "cuda":
        return None
    name = (device_name or torch.cuda.get_device_name(device)).upper()
    column = "bf16" if precision.startswith(("bf16", "16")) else "fp32"
    for key, table in DENSE_PEAK_FLOPS.items():  # longest names first
        if key in name:
            return table[column]
    dtype = (torch.bfloat16 if precision.startswith("bf16") else torch.float16 if precision.startswith("16")
             else torch.float32)
    value = get_available_flops(device, dtype)
    return float(value) if value else None
