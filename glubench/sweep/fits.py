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
``L*`` and the curves may cross (:func:`crossover`).  Point estimates only: the intervals, which must
include the rungs' misfit, are :mod:`glubench.sweep.ladder_stats`'s.  numpy + scipy only.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Optional

import numpy as np
from scipy.optimize import OptimizeWarning, brentq, curve_fit

from glubench.core.errors import FitError, Undefined

BASELINE = "relu"  # the variant every other one is compared with
SATURATING = "E + A C^-alpha"
LOG_LINEAR = "log-linear"
MIN_SIZES = 3  # fewer leave the log-linear law no degrees of freedom across sizes
MIN_SIZES_E = 4  # the saturating law has three parameters
SEARCH_DECADES = 1.0
"""The crossover is searched at most this many decades beyond the data on each side: further out a power
law fitted to a few rungs is not evidence (6 decades reported crossings for 33–58% of synthetic ladders
whose true curves never cross)."""


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
    optimisation or a loss that does not fall give ``converged=False``.  Raises :class:`FitError` on
    input of unequal lengths or with values that are not finite and positive.
    """
    C, L = np.asarray(C, float), np.asarray(L, float)
    if C.shape != L.shape or C.ndim != 1 or not np.all(np.isfinite(C) & np.isfinite(L) & (C > 0) & (L > 0)):
        raise FitError(f"C = {C.tolist()}, L = {L.tolist()}: need two equal-length lists of finite values > 0")
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
    """The compute (FLOPs) where the two fitted curves cross, searched over ``c_range`` (default: the data of
    both fits widened :data:`SEARCH_DECADES` decade each side): sign changes of their difference on a log grid,
    refined by Brent's method.  Of several crossings, the one nearest the data's log-centre is reported.
    Raises :class:`Undefined` when a fit was refused.
    """
    base_fit._usable()
    variant_fit._usable()
    c_range = c_range or search_range(base_fit, variant_fit)

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


def search_range(*fits: PowerLawFit, decades: float = SEARCH_DECADES) -> tuple[float, float]:
    """The compute range (FLOPs) a crossover is searched in: the fits' data widened ``decades`` each side."""
    widen = 10.0**decades
    return min(f.c_min for f in fits) / widen, max(f.c_max for f in fits) * widen


def by_size(runs: Sequence[LadderRun]) -> dict[str, list[LadderRun]]:
    """``{size label: runs}`` in first-seen order."""
    groups: dict[str, list[LadderRun]] = {}
    for r in runs:
        groups.setdefault(r.size, []).append(r)
    return groups
