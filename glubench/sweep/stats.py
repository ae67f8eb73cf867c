"""Statistics of a sweep at one size: each variant against the baseline (Welch's t), and whether the
throughput of a group can be compared with the others'.  Lightweight: scipy is imported on first use."""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from statistics import fmean
from typing import Any, Optional

CONFIDENCE = 0.95
BUSY_LOAD_PER_CPU = 1.5
"""A run whose machine's 1-minute load average, at its start or end, exceeds this many runnable tasks per
CPU shared the CPUs with other work (a run's own threads alone load it by at most one per CPU)."""
MAX_THROUGHPUT_SPREAD = 1.5
"""Identical configs (seeds) whose tokens/s differ by more than this factor (max / min) were not measured
under the same conditions: repeated runs on an idle 2-core machine differ by about ±10% (BENCHMARKS.md)."""


@dataclass
class Welch:
    """Difference of means ``a - b`` with a Welch t confidence interval (``low``, ``high``) and the
    two-sided p-value of "no difference".  With fewer than two values on a side, or no variance on
    either, every field but ``diff`` is ``None`` and ``note`` says why."""

    diff: float
    low: Optional[float] = None
    high: Optional[float] = None
    p: Optional[float] = None
    df: Optional[float] = None
    note: str = ""

    @property
    def significant(self) -> Optional[bool]:
        """``True`` when the interval excludes 0, ``None`` when it could not be computed."""
        return None if self.low is None or self.high is None else self.low > 0 or self.high < 0


def welch(a: list[float], b: list[float], confidence: float = CONFIDENCE) -> Welch:
    """Welch's unequal-variance t interval for ``mean(a) - mean(b)`` (values in any one unit, e.g. nats/token).

    By :func:`scipy.stats.ttest_ind` with ``equal_var=False``: ``se = sqrt(s_a²/n_a + s_b²/n_b)``
    (sample variances), Welch–Satterthwaite ``df = se⁴ / ((s_a²/n_a)²/(n_a-1) + (s_b²/n_b)²/(n_b-1))``
    and ``diff ± t_{df, (1+confidence)/2} · se`` (Welch 1947, Biometrika 34; Satterthwaite 1946,
    Biometrics Bulletin 2).

    Raises:
        ValueError: if ``a`` or ``b`` is empty.
    """
    if not a or not b:
        raise ValueError(f"welch: both samples need values (got n={len(a)} and n={len(b)})")
    diff = fmean(a) - fmean(b)
    if len(a) < 2 or len(b) < 2:
        return Welch(diff, note=f"n/a: needs >= 2 seeds on both sides (n={len(a)} vs {len(b)})")
    # Tested on the values, not on a computed variance, which rounding can leave a hair above 0.
    const_a, const_b = len(set(a)) == 1, len(set(b)) == 1
    if const_a and const_b:  # se = 0: scipy would give t = ±inf and a zero-width interval
        return Welch(diff, note="n/a: zero variance on both sides")
    from scipy import stats  # not at module level: scipy takes a while to import

    with warnings.catch_warnings():
        if const_a or const_b:
            # scipy warns of "catastrophic cancellation" for a constant sample; its variance is
            # exactly 0 here, so the warning would only be noise.
            warnings.filterwarnings("ignore", message="Precision loss occurred", category=RuntimeWarning)
        res = stats.ttest_ind(a, b, equal_var=False)
    ci = res.confidence_interval(confidence_level=confidence)
    return Welch(diff, float(ci.low), float(ci.high), float(res.pvalue), float(res.df))


def busy_machine(result: Any) -> Optional[str]:
    """Why ``result`` (a :class:`glubench.train.results.RunResult`) ran on a busy machine, from its
    ``machine`` record (``cpu_count``, ``load_start`` and ``load_end`` as [1, 5, 15]-minute load averages),
    e.g. ``"load 5.1 on 2 CPUs"``; ``None`` when it was not busy or recorded nothing."""
    machine = getattr(result, "machine", None) or {}
    cpus = machine.get("cpu_count")
    loads = [x[0] for x in (machine.get("load_start"), machine.get("load_end")) if x]
    if not cpus or not loads or max(loads) <= BUSY_LOAD_PER_CPU * cpus:
        return None
    return f"load {max(loads):.1f} on {cpus} CPUs"


def throughput_problem(results: list, tokens_per_sec: list[float]) -> Optional[str]:
    """Why the throughput of one group of identical configs (its ``results`` and their finite
    ``tokens_per_sec``) is not comparable with other groups', or ``None``: a run recorded a busy machine
    (:func:`busy_machine`), or the seeds' tokens/s spread by more than :data:`MAX_THROUGHPUT_SPREAD`×."""
    busy = [b for r in results if (b := busy_machine(r))]
    if busy:
        return f"busy machine ({busy[0]})"
    if len(tokens_per_sec) > 1 and min(tokens_per_sec) > 0:
        spread = max(tokens_per_sec) / min(tokens_per_sec)
        if spread > MAX_THROUGHPUT_SPREAD:
            return f"seeds differ {spread:.1f}× in tokens/s"
    return None
