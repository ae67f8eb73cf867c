"""Compute scaling fits: does a variant's advantage over the baseline grow with compute?

Each variant's final validation loss ``L`` (nats per token) is fitted against its training compute ``C``
(training FLOPs) over a ladder of model sizes (several seeds per size) with the saturating power law
``L(C) = E + A·C^(−α)`` (Kaplan et al. 2020, arXiv 2001.08361, eq. 1.3 plus an offset; Hoffmann et al.
2022, arXiv 2203.15556, eq. 2, where ``E`` is the irreducible loss).  When the ladder cannot pin ``E``
down, the pure power law ``log L = log A − α·log C`` (``E = 0``) is fitted instead and the fit says so;
ignoring a true ``E > 0`` pulls the multiplier towards 1 (1.16 for a true 1.3 on a synthetic ladder).

Two fitted curves are compared by their compute-equivalent gain at a target loss ``L*``: the multiplier
``m = C_base(L*) / C_variant(L*)`` with ``C_f(L) = (A / (L − E))^(1/α)``; the variant reaches ``L*`` with
``1/m`` of the baseline's compute, so ``m > 1`` favours it.  If the exponents differ, ``m`` changes with
``L*`` and the curves may cross (:func:`crossover`).  Intervals come from a bootstrap over the seeds of
each size.  numpy + scipy only.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Optional

import numpy as np
from scipy.optimize import OptimizeWarning, brentq, curve_fit

from glubench.core.errors import ConfigError

BASELINE = "relu"  # the variant every other one is compared with
SATURATING = "E + A C^-alpha"
LOG_LINEAR = "log-linear"
MIN_SIZES = 3  # fewer leave the log-linear law no degrees of freedom across sizes
MIN_SIZES_E = 4  # the saturating law has three parameters
SEARCH_DECADES = 6  # the crossover is searched this many decades beyond the data on each side


class Undefined(ValueError):
    """A multiplier or crossover that the fits do not define; the message says why."""


@dataclass
class LadderRun:
    """One finished run: training FLOPs, final validation loss (nats/token), size label, seed."""

    flops: float
    loss: float
    size: str
    seed: int = 0


@dataclass
class PowerLawFit:
    """A fit of ``L(C) = E + A·C^(−α)`` (``E = 0`` when ``form`` is ``"log-linear"``).

    ``why`` explains the form or, when ``converged`` is False, why there are no numbers (every numeric
    field is then ``None``).  ``residuals`` are observed − fitted loss per run (nats), in input order;
    ``c_min``/``c_max`` the data's compute range (FLOPs).
    """

    form: str
    why: str
    converged: bool
    n_sizes: int
    E: Optional[float] = None
    A: Optional[float] = None
    alpha: Optional[float] = None
    E_se: Optional[float] = None
    residuals: Optional[list[float]] = None
    rmse: Optional[float] = None
    c_min: Optional[float] = None
    c_max: Optional[float] = None

    def _usable(self) -> None:
        if not self.converged:
            raise Undefined(f"no fit: {self.why}")

    def loss(self, C):
        """Fitted loss (nats/token) at compute ``C`` (FLOPs, scalar or array); :class:`Undefined` if refused."""
        self._usable()
        return self.E + self.A * np.power(C, -self.alpha)

    def compute(self, L: float) -> float:
        """Compute (FLOPs) at which the fit reaches loss ``L``; :class:`Undefined` when ``L <= E``."""
        self._usable()
        if L <= self.E:
            raise Undefined(f"L* = {L:.4g} nats is not above the fit's E = {self.E:.4g}")
        return (self.A / (L - self.E)) ** (1.0 / self.alpha)


def _saturating(C: np.ndarray, L: np.ndarray) -> tuple[float, float, float, float]:
    """Least squares of ``L = E + exp(b − α·u)``, ``u`` = log C centred; returns E, A, α, se(E)."""
    u0 = float(np.mean(np.log(C)))
    u = np.log(C) - u0

    def model(u, E, b, a):
        return E + np.exp(b - a * u)

    def jac(u, E, b, a):
        g = np.exp(b - a * u)
        return np.column_stack([np.ones_like(u), g, -u * g])

    def start(E0):  # given E, log(L - E) is a straight line in u
        slope, b0 = np.polyfit(u, np.log(L - E0), 1)
        return [E0, b0, min(max(-slope, 1e-3), 5.0)]

    starts = [start(E0) for E0 in L.min() * np.linspace(0.0, 0.99, 34)]
    p0 = min(starts, key=lambda p: np.sum((model(u, *p) - L) ** 2))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", OptimizeWarning)  # an infinite covariance becomes se(E) = inf below
        (E, b, a), pcov = curve_fit(model, u, L, p0=p0, jac=jac, bounds=([0, -np.inf, 0], [L.min(), np.inf, 10]),
                                    ftol=1e-15, xtol=1e-15, gtol=1e-15, max_nfev=2000)
    se = math.sqrt(pcov[0, 0]) if np.isfinite(pcov[0, 0]) else math.inf
    return float(E), float(np.exp(b + a * u0)), float(a), se


def fit_power_law(C: Sequence[float], L: Sequence[float], sizes: Optional[Sequence] = None,
                  form: Optional[str] = None) -> PowerLawFit:
    """Fit ``L(C) = E + A·C^(−α)`` to runs with compute ``C`` (training FLOPs) and loss ``L`` (nats/token).

    ``sizes`` labels each run's model size (default: its ``C``); sizes, not runs, constrain the curve.
    Bounds ``0 ≤ E ≤ min L``, ``A > 0``, ``0 < α ≤ 10``.  The log-linear law (``E = 0``, least squares of
    ``log L`` on ``log C``) replaces it when there are fewer than 4 sizes, se(E) > E, or E ends at a bound;
    ``form`` (:data:`SATURATING` or :data:`LOG_LINEAR`) forces one.  Fewer than 3 sizes, a failed
    optimisation or a loss that does not fall give ``converged=False``.  Raises :class:`ConfigError` on
    input of unequal lengths or with values that are not finite and positive.
    """
    C, L = np.asarray(C, float), np.asarray(L, float)
    if C.shape != L.shape or C.ndim != 1 or not np.all(np.isfinite(C) & np.isfinite(L) & (C > 0) & (L > 0)):
        raise ConfigError(f"C = {C.tolist()}, L = {L.tolist()}: need two equal-length lists of finite values > 0")
    n_sizes = len(set(sizes if sizes is not None else C.tolist()))
    if n_sizes < MIN_SIZES:
        why = f"only {n_sizes} distinct size(s); a scaling fit needs at least {MIN_SIZES}"
        return PowerLawFit("refused", why, False, n_sizes)
    why = f"{n_sizes} sizes cannot constrain E (need {MIN_SIZES_E})"
    if form == SATURATING or (form is None and n_sizes >= MIN_SIZES_E):
        try:
            E, A, alpha, se = _saturating(C, L)
        except (RuntimeError, ValueError) as e:
            return PowerLawFit(SATURATING, f"the fit did not converge ({e})", False, n_sizes)
        tol = 1e-4 * L.min()
        if form == SATURATING or (se <= E and tol < E < L.min() - tol):
            why = "form fixed by the caller" if form else "E constrained by the data"
            return _fitted(C, L, SATURATING, why, n_sizes, E, A, alpha, se)
        why = (f"E = {E:.4g} is at a bound (0 or min L = {L.min():.4g})" if not tol < E < L.min() - tol
               else f"E's standard error {se:.3g} exceeds E = {E:.4g}")
    slope, b = np.polyfit(np.log(C), np.log(L), 1)
    if slope >= 0:
        return PowerLawFit(LOG_LINEAR, f"loss does not fall with compute (log-log slope {slope:.3g})", False, n_sizes)
    why = "form fixed by the caller" if form else why
    return _fitted(C, L, LOG_LINEAR, why, n_sizes, 0.0, float(np.exp(b)), float(-slope))


def _fitted(C, L, form, why, n_sizes, E, A, alpha, se=None) -> PowerLawFit:
    res = L - (E + A * C**-alpha)  # in nats for both forms
    return PowerLawFit(form, why, True, n_sizes, E, A, alpha, se, res.tolist(), float(np.sqrt(np.mean(res**2))),
                       float(C.min()), float(C.max()))


def fit_runs(runs: Sequence[LadderRun], form: Optional[str] = None) -> PowerLawFit:
    """:func:`fit_power_law` on :class:`LadderRun` records, sizes from their labels."""
    return fit_power_law([r.flops for r in runs], [r.loss for r in runs], [r.size for r in runs], form)


def target_loss(base_fit: PowerLawFit) -> float:
    """``L*``: the loss (nats/token) the baseline fit reaches at its largest-budget run."""
    return float(base_fit.loss(base_fit.c_max))


def compute_multiplier(base_fit: PowerLawFit, variant_fit: PowerLawFit, target: float) -> float:
    """``C_base(L*) / C_variant(L*)`` at ``target = L*`` (nats/token); > 1: the variant needs less compute.

    Raises :class:`Undefined` when a fit was refused or ``L*`` is not above its ``E``.
    """
    return base_fit.compute(target) / variant_fit.compute(target)


@dataclass
class Crossover:
    """Where ``L_base(C) = L_variant(C)``: ``flops`` (``None``: no crossing in the searched range),
    ``extrapolated`` (outside the compute range both fits cover), ``variant_ahead_above`` (the variant's
    loss is the lower one just above the crossing)."""

    flops: Optional[float]
    extrapolated: Optional[bool] = None
    variant_ahead_above: Optional[bool] = None


def crossover(base_fit: PowerLawFit, variant_fit: PowerLawFit,
              c_range: Optional[tuple[float, float]] = None) -> Crossover:
    """The compute (FLOPs) where the two fitted curves cross, searched over ``c_range`` (default: the data
    widened :data:`SEARCH_DECADES` decades each side): sign changes of their difference on a log grid,
    refined by Brent's method.  Of several crossings, the one nearest the data's log-centre is reported.
    Raises :class:`Undefined` when a fit was refused.
    """
    base_fit._usable()
    variant_fit._usable()
    if c_range is None:
        widen = 10.0**SEARCH_DECADES
        c_range = (min(base_fit.c_min, variant_fit.c_min) / widen, max(base_fit.c_max, variant_fit.c_max) * widen)

    def diff(x):
        return base_fit.loss(np.exp(x)) - variant_fit.loss(np.exp(x))

    x = np.linspace(math.log(c_range[0]), math.log(c_range[1]), 2001)
    d = np.sign(diff(x))
    roots = [math.exp(brentq(diff, x[i], x[i + 1], xtol=1e-12)) for i in np.nonzero(d[:-1] * d[1:] < 0)[0]]
    if not roots:
        return Crossover(None)
    lo, hi = max(base_fit.c_min, variant_fit.c_min), min(base_fit.c_max, variant_fit.c_max)
    c = min(roots, key=lambda r: abs(math.log(r) - 0.5 * math.log(lo * hi)))
    return Crossover(c, not lo <= c <= hi, bool(diff(math.log(c) + 1e-3) > 0))


@dataclass
class Interval:
    """A bootstrap percentile interval: ``estimate`` from the full data (``None``: not defined), ``lo``/``hi``
    from ``n_ok`` resamples; ``n_failed`` resamples whose fits failed and ``n_undefined`` whose statistic
    was not defined (e.g. no crossing) are left out and counted."""

    estimate: Optional[float]
    lo: Optional[float]
    hi: Optional[float]
    n_ok: int
    n_failed: int
    n_undefined: int


def _by_size(runs: Sequence[LadderRun]) -> list[list[LadderRun]]:
    groups: dict[str, list[LadderRun]] = {}
    for r in runs:
        groups.setdefault(r.size, []).append(r)
    return list(groups.values())


def _value(stat: Callable[[PowerLawFit, PowerLawFit], Optional[float]], *fits: PowerLawFit) -> Optional[float]:
    try:
        return stat(*fits)
    except Undefined:
        return None


def bootstrap(base_runs: Sequence[LadderRun], variant_runs: Sequence[LadderRun], n: int = 1000, seed: int = 0,
              confidence: float = 0.95, c_range: Optional[tuple[float, float]] = None,
              fits: Optional[tuple[PowerLawFit, PowerLawFit]] = None) -> dict[str, Interval]:
    """Percentile intervals of ``"multiplier"`` (:func:`compute_multiplier` at the full-data
    :func:`target_loss`) and ``"crossover"`` (:func:`crossover` over ``c_range``, FLOPs; resamples whose
    curves do not cross count as undefined) from ``n`` resamples: runs drawn with replacement within each
    size (every size kept), both curves refitted in the forms of the full-data ``fits`` (base, variant;
    default: :func:`fit_runs` of each).  Raises :class:`Undefined` if a full-data fit is refused."""
    full = fits or (fit_runs(base_runs), fit_runs(variant_runs))
    target = target_loss(full[0])
    full[1]._usable()
    stats = {"multiplier": lambda b, v: compute_multiplier(b, v, target),
             "crossover": lambda b, v: crossover(b, v, c_range).flops}
    groups = (_by_size(base_runs), _by_size(variant_runs))
    rng = np.random.default_rng(seed)
    samples: dict[str, list[Optional[float]]] = {k: [] for k in stats}
    failed = 0
    for _ in range(n):
        fits = [fit_runs([s[i] for s in g for i in rng.integers(0, len(s), len(s))], f.form)
                for g, f in zip(groups, full)]
        if not all(f.converged for f in fits):
            failed += 1
            continue
        for k, stat in stats.items():
            samples[k].append(_value(stat, *fits))
    q = 50 * np.array([1 - confidence, 1 + confidence])
    out = {}
    for k, stat in stats.items():
        ok = [v for v in samples[k] if v is not None]
        lo, hi = np.percentile(ok, q).tolist() if ok else (None, None)
        out[k] = Interval(_value(stat, *full), lo, hi, len(ok), failed, len(samples[k]) - len(ok))
    return out


def bootstrap_multiplier(base_runs: Sequence[LadderRun], variant_runs: Sequence[LadderRun], n: int = 1000,
                         seed: int = 0, confidence: float = 0.95) -> Interval:
    """The ``"multiplier"`` interval of :func:`bootstrap`."""
    return bootstrap(base_runs, variant_runs, n, seed, confidence)["multiplier"]


LADDER_COLUMNS = ("variant", "form", "alpha", "E", "multiplier", "multiplier_lo", "multiplier_hi", "crossover",
                  "crossover_lo", "crossover_hi", "extrapolated", "rmse", "n_sizes", "n_runs", "seed_spread")


def seed_spread(runs: Sequence[LadderRun]) -> Optional[float]:
    """Mean over sizes with two or more seeds of the std (ddof=1) of final loss; ``None`` if there are none."""
    stds = [float(np.std([r.loss for r in g], ddof=1)) for g in _by_size(runs) if len(g) > 1]
    return float(np.mean(stds)) if stds else None


def ladder_table(runs_by_variant: dict[str, Sequence[LadderRun]], baseline: str = BASELINE, n: int = 1000,
                 seed: int = 0, confidence: float = 0.95) -> tuple[list[dict], list[str]]:
    """Rows (dicts keyed by :data:`LADDER_COLUMNS`, plus ``fit``, the row's :class:`PowerLawFit`; baseline
    first) and messages (refused fits, log-linear
    fallbacks, undefined multipliers, failed resamples).  When the variants' forms differ, all are fitted
    log-linear, so that each multiplier compares like with like.  ``multiplier`` (at the baseline's
    :func:`target_loss`) and ``crossover`` (FLOPs) are numbers with bootstrap ``*_lo``/``*_hi``, or strings
    saying why not; ``seed_spread`` is :func:`seed_spread` (nats/token).  Raises :class:`ConfigError` when
    the baseline has no runs."""
    if baseline not in runs_by_variant:
        raise ConfigError(f"baseline = {baseline!r} has no runs; variants with runs: {sorted(runs_by_variant)}")
    fits = {v: fit_runs(r) for v, r in runs_by_variant.items()}
    messages = [f"{v}: fit refused: {f.why}" for v, f in fits.items() if not f.converged]
    messages += [f"{v}: {LOG_LINEAR} fit ({f.why})" for v, f in fits.items() if f.converged and f.form == LOG_LINEAR]
    if len({f.form for f in fits.values() if f.converged}) > 1:
        messages.append(f"every variant is fitted {LOG_LINEAR}, the form the weakest ladder supports")
        fits = {v: fit_runs(r, LOG_LINEAR) if fits[v].converged else fits[v] for v, r in runs_by_variant.items()}
    base = fits[baseline]
    rows = []
    for v in [baseline] + [k for k in runs_by_variant if k != baseline]:
        f, runs = fits[v], runs_by_variant[v]
        row = dict.fromkeys(LADDER_COLUMNS)
        row.update(variant=v, form=f.form, alpha=f.alpha, E=f.E, multiplier="not defined", crossover="not defined",
                   rmse=f.rmse, n_sizes=f.n_sizes, n_runs=len(runs), seed_spread=seed_spread(runs), fit=f)
        rows.append(row)
        if v == baseline:
            row.update(multiplier=1.0 if f.converged else "not defined", crossover="baseline")
        if v == baseline or not (base.converged and f.converged):
            continue
        m, c = bootstrap(runs_by_variant[baseline], runs, n, seed, confidence, fits=(base, f)).values()
        if m.estimate is None:
            messages.append(f"{v}: multiplier not defined: L* = {target_loss(base):.4g} nats is not above E of a fit")
        else:
            row.update(multiplier=m.estimate, multiplier_lo=m.lo, multiplier_hi=m.hi)
        if c.estimate is None:
            row["crossover"] = "none in range"
        else:
            row.update(crossover=c.estimate, crossover_lo=c.lo, crossover_hi=c.hi,
                       extrapolated=crossover(base, f).extrapolated)
        if m.n_failed:
            messages.append(f"{v}: {m.n_failed} of {n} bootstrap resamples failed to fit and were left out")
    return rows, messages
