"""Metrics: corpus-level NLL/perplexity/bits-per-byte, FLOPs per token, throughput and MFU."""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torchmetrics import Metric

LN2 = math.log(2.0)


class CorpusNLL(Metric):
    """Total negative log-likelihood and predicted-token count over a whole split.

    ``update(nll_sum, n_tokens)`` adds one batch's *summed* NLL (nats) and its count of
    predicted (non-padding) tokens; ``compute()`` returns ``{"nll": total, "tokens": count}``
    (float64 scalars, summed across processes under DDP), from which the mean NLL is
    ``nll / tokens`` — never a mean of batch means, so it does not depend on the batch size.
    """

    full_state_update = False
    higher_is_better = False

    def __init__(self) -> None:
        super().__init__()
        self.add_state("nll", torch.zeros((), dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("tokens", torch.zeros((), dtype=torch.float64), dist_reduce_fx="sum")

    def update(self, nll_sum: torch.Tensor, n_tokens: torch.Tensor | int) -> None:
        self.nll += nll_sum.detach().to(torch.float64)
        self.tokens += torch.as_tensor(n_tokens, dtype=torch.float64, device=self.tokens.device)

    def compute(self) -> dict[str, torch.Tensor]:
        return {"nll": self.nll, "tokens": self.tokens}


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


@dataclass
class ThroughputMeter:
    """Tokens/s and step time of training alone, measured after a warmup.

    Call :meth:`step` once per optimizer step with the tokens that step consumed (all
    micro-batches of gradient accumulation and all devices).  The first ``warmup_steps``
    steps are excluded: the clock starts when step ``warmup_steps`` ends.  :meth:`pause` /
    :meth:`resume` bracket work that is not training (validation), which is then not
    counted.  The clock is read only by :meth:`read`, :meth:`pause` and :meth:`resume`
    (logging steps and validation boundaries), each after ``sync`` (pass
    ``torch.cuda.synchronize`` on CUDA) so that pending kernels are finished.

    ``clock`` returns seconds (``time.perf_counter`` by default; tests pass a fake one).
    """

    warmup_steps: int = 10
    clock: Callable[[], float] = time.perf_counter
    sync: Callable[[], None] | None = None
    steps: int = 0
    tokens: int = 0
    _active: float = 0.0  # measured seconds from finished segments
    _t_run: float | None = field(default=None, repr=False)  # clock at the start of the running segment
    _window: tuple[float, int, int] | None = field(default=None, repr=False)  # (seconds, tokens, steps) at start
    _last: tuple[float, int, int] | None = field(default=None, repr=False)  # ... at the previous read

    def __post_init__(self) -> None:
        if self.warmup_steps <= 0:
            self._open_window()

    def _now(self) -> float:
        if self.sync is not None:
            self.sync()
        return self.clock()

    def _elapsed(self) -> float:
        return self._active + (self._now() - self._t_run if self._t_run is not None else 0.0)

    def _open_window(self) -> None:
        self._t_run = self._now()
        self._window = self._last = (0.0, self.tokens, self.steps)

    @property
    def started(self) -> bool:
        return self._window is not None

    def step(self, tokens: int) -> None:
        """Record one finished optimizer step that consumed ``tokens`` tokens."""
        self.steps += 1
        self.tokens += int(tokens)
        if self.steps == self.warmup_steps:
            self._open_window()

    def pause(self) -> None:
        """Stop the clock (e.g. when validation starts); no-op before warmup ends or when paused."""
        if self._t_run is not None:
            self._active += self._now() - self._t_run
            self._t_run = None

    def resume(self) -> None:
        """Restart the clock after :meth:`pause`; no-op before warmup ends or when running."""
        if self.started and self._t_run is None:
            self._t_run = self._now()

    def read(self) -> dict[str, float] | None:
        """Rates since the previous read (``tokens_per_sec``, ``step_time_ms``); ``None`` in warmup."""
        if not self.started:
            return None
        now = self._elapsed()
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
