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


def flops_per_token(matmul_params: int, n_layers: int, d_model: int, seq_len: int) -> float:
    """Training FLOPs per token: ``6·N + 12·L·d·T``.

    ``N`` counts every weight used in a per-token matmul (the FFN's real matrices — three for
    gated, two for non-gated — attention projections and the output head); ``12·L·d·T`` is
    the attention score and value products, forward (4·L·d·T) plus backward (8·L·d·T), with
    no causal discount (Kaplan et al. 2020, Table 1; Chowdhery et al. 2022, App. B).
    """
    return 6.0 * matmul_params + 12.0 * n_layers * d_model * seq_len


# Dense (no structured sparsity) peak FLOP/s from vendor datasheets, by precision.
PEAK_FLOPS: dict[str, dict[str, float]] = {
    "H200": {"bf16": 989e12, "fp32": 67e12},
    "H100": {"bf16": 989e12, "fp32": 67e12},  # SXM; the PCIe card is lower (756e12)
    "A100": {"bf16": 312e12, "fp32": 19.5e12},
    "A10G": {"bf16": 70e12, "fp32": 31.2e12},
    "L4": {"bf16": 121e12, "fp32": 30.3e12},
    "L40S": {"bf16": 362e12, "fp32": 91.6e12},
    "V100": {"bf16": 125e12, "fp32": 15.7e12},  # fp16 tensor cores; V100 has no bf16
    "RTX 4090": {"bf16": 165e12, "fp32": 82.6e12},
}


def lookup_peak_flops(device_name: str | None, precision: str) -> float | None:
    """Dense peak FLOP/s for a device name such as ``"NVIDIA H100 80GB HBM3"``, or ``None``.

    ``precision`` is a Lightning precision string; ``bf16*``/``16*`` map to the tensor-core
    column, everything else to fp32.  CPUs and unknown devices return ``None``: MFU is then
    left out rather than guessed.
    """
    if not device_name:
        return None
    column = "bf16" if precision.startswith(("bf16", "16")) else "fp32"
    name = device_name.upper()
    if "H100" in name and "PCIE" in name:
        return 756e12 if column == "bf16" else 51e12
    for key in sorted(PEAK_FLOPS, key=len, reverse=True):
        if key in name:
            return PEAK_FLOPS[key][column]
    return None


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


def mfu(tokens_per_sec: float, flops_per_tok: float, peak_flops: float | None) -> float | None:
    """Model FLOPs utilisation: achieved FLOP/s ÷ dense peak FLOP/s; ``None`` when the peak is unknown."""
    if not peak_flops:
        return None
    return tokens_per_sec * flops_per_tok / peak_flops
