"""Intervals for a compute ladder that include the rungs' misfit, paired between variants.

**The problem.**  A ladder's rung means miss any smooth fit by more than seed noise (each rung changes
several things at once: width, depth, steps, epochs of data), so rung-level deviations, not seeds, are the
unit of independent error.  A bootstrap over the seeds of each rung sees only seed noise (54–56% coverage
of a nominal 95% interval on synthetic ladders with rung offsets, issue 23), and a bootstrap over 5 rungs
has 32 sign patterns and under-covers with so few clusters (Cameron & Miller 2015, "A practitioner's
guide to cluster-robust inference", J. Human Resources 50(2), §VI: with few clusters use t critical
values with df = clusters − parameters).

**The method: rung-level residuals, paired, with Student-t scaling.**  Each variant's curve
(:mod:`glubench.sweep.fits`) is linearised at the rung level: ``θ̂ − θ ≈ H·e`` with ``θ = (E, b, α)``,
``L(C) = E + exp(b − α·(log C − u₀))`` (``E`` fixed at 0 and fitted on log L for the log-linear form),
``H = (JᵀWJ)⁻¹JᵀW`` (``J`` the rung-level Jacobian, ``W`` the seeds per rung) and ``e`` the rung means'
errors.  For a balanced design (equal seeds) fitting the runs equals fitting the rung means, and the rung
means carry both the rung offsets and the seed noise: inference on terms that vary only between rungs uses
the rung means with the between-rung degrees of freedom (Murtaugh 2007, "Simplicity and complexity in
ecological data analysis", Ecology 88(1); Searle, Casella & McCulloch 1992, *Variance Components*, §3),
here ``df = rungs − parameters`` (3 for 5 rungs and the log-linear law).  The baseline's and a variant's
rung residuals form a 2×2 covariance ``Σ̂ = RᵀR / df``: its off-diagonal term is the pairing (seed s of
both variants shares the data order, and a rung's shape, steps and learning-rate rule are shared, so
their deviations correlate; what they share cancels from every difference between them).  Draws
``θ* = θ̂ + H·e*·√(df/χ²_df)`` with ``e*`` ~ N(0, Σ̂) per rung are the multivariate-t sampling
distribution of the two fits (for a linear model the reference posterior, Gelman et al. 2013, *Bayesian
Data Analysis* 3rd ed., §14.2); a statistic's interval is the percentile interval of its draws
(Krinsky & Robb 1986, "On approximating the statistical properties of elasticities", Rev. Econ. Stat.
68(4)).  For anything linear in ``θ`` (Δα, the gap at a given compute) this is exactly the paired t
interval with ``df`` degrees of freedom, computed here in closed form for Δα.  A crossover is reported
only when the fitted curves cross within :data:`glubench.sweep.fits.SEARCH_DECADES` of the data *and* at
least ``confidence`` of the draws cross there too; otherwise "no crossover in range" (an answer).

Calibration (``tests/unit/test_ladder_calibration.py``, BENCHMARKS.md): on synthetic ladders of 5 rungs
× 3 seeds with seed sd 0.03 and rung offsets sd 0.03 nats, the 95% multiplier interval covers the truth
in ~95% of ladders, whether the rung offsets are independent per variant or shared by the variants.
numpy + scipy only.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Optional

import numpy as np

from glubench.core.errors import FitError, Undefined
from glubench.sweep.fits import (
    LOG_LINEAR,
    MIN_SIZES,
    MIN_SIZES_E,
    SATURATING,
    LadderRun,
    PowerLawFit,
    by_size,
    compute_multiplier,
    crossover,
    fit_runs,
    search_range,
)

N_DRAWS = 4000
CONFIDENCE = 0.95
GRID = 301  # log-compute points of the crossover search in the draws


@dataclass
class RungFit:
    """One variant's fit at the rung level: rungs in order of compute; ``c`` compute (FLOPs), ``mean`` mean
    loss (nats/token) and ``n`` seeds per rung; ``theta`` = (E, b, α) around ``u0`` (mean log C);
    ``H`` (3 × rungs) the linearised influence of the rung errors on ``theta``; ``resid`` the rung-level
    residuals in the fit's space (log L for the log-linear form, L otherwise); ``p`` free parameters."""

    fit: PowerLawFit
    rungs: list[str]
    c: np.ndarray
    mean: np.ndarray
    n: np.ndarray
    theta: np.ndarray
    u0: float
    H: np.ndarray
    resid: np.ndarray
    p: int

    @property
    def df(self) -> int:
        """Rung-level residual degrees of freedom: rungs − free parameters."""
        return len(self.rungs) - self.p


def loss_at(theta: np.ndarray, u0: float, C) -> np.ndarray:
    """``E + exp(b − α·(log C − u₀))`` for ``theta`` (..., 3) and compute ``C`` (FLOPs; broadcast)."""
    E, b, a = (np.asarray(theta)[..., k] for k in range(3))
    with np.errstate(over="ignore"):  # a far-out draw may overflow to inf: a curve that never gets there
        return E + np.exp(b - a * (np.log(C) - u0))


def compute_at(theta: np.ndarray, u0: float, L) -> np.ndarray:
    """Compute (FLOPs) at which the curve reaches loss ``L``; ``inf`` where ``L <= E`` (never)."""
    E, b, a = (np.asarray(theta)[..., k] for k in range(3))
    gap = np.asarray(L) - E
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        c = np.exp(u0 + (b - np.log(np.where(gap > 0, gap, 1.0))) / a)
    return np.where(gap > 0, c, np.inf)


def rung_fit(runs: Sequence[LadderRun], fit: PowerLawFit) -> RungFit:
    """The rung-level linearisation of ``fit`` (fitted to ``runs``); raises :class:`Undefined` if refused."""
    fit._usable()
    groups = sorted(by_size(runs).items(), key=lambda kv: np.mean([r.flops for r in kv[1]]))
    rungs = [k for k, _ in groups]
    u = np.array([np.mean([math.log(r.flops) for r in g]) for _, g in groups])
    n = np.array([len(g) for _, g in groups], float)
    u0 = float(np.mean(u))
    theta = np.array([fit.E, math.log(fit.A) - fit.alpha * u0, fit.alpha])
    log_linear = fit.form == LOG_LINEAR
    resid = []
    for _, g in groups:
        lr, L = np.log([r.flops for r in g]), np.array([r.loss for r in g])
        pred = loss_at(theta, u0, np.exp(lr))
        resid.append(np.mean(np.log(L) - np.log(pred)) if log_linear else np.mean(L - pred))
    g_u = np.exp(theta[1] - theta[2] * (u - u0))
    if log_linear:  # log L = b − α(u − u0): E is not free
        J, free = np.column_stack([np.ones_like(u), -(u - u0)]), [1, 2]
    else:
        J, free = np.column_stack([np.ones_like(u), g_u, -(u - u0) * g_u]), [0, 1, 2]
    JW = J.T * n
    H = np.zeros((3, len(u)))
    H[free] = np.linalg.solve(JW @ J, JW)
    mean = np.array([np.mean([r.loss for r in g]) for _, g in groups])
    return RungFit(fit, rungs, np.exp(u), mean, n, theta, u0, H, np.array(resid), len(free))


@dataclass
class Comparison:
    """A variant against the baseline.  ``multiplier`` (at the baseline's L*) and its ``multiplier_ci``;
    ``dalpha`` = α_variant − α_baseline with a t interval; ``crossover`` (FLOPs; ``None``: none established
    in the searched range ``search``), ``crossover_estimate`` (where the fitted curves cross in range, even
    if not established), ``crossover_ci`` and ``crossover_share`` (share of draws that cross in range);
    ``curve``: m(L) over the baseline's measured loss range with a pointwise band; ``notes`` say why a
    number is missing."""

    multiplier: Optional[float]
    multiplier_ci: Optional[tuple[float, float]]
    dalpha: float
    dalpha_ci: Optional[tuple[float, float]]
    crossover: Optional[float]
    crossover_estimate: Optional[float]
    crossover_ci: Optional[tuple[float, float]]
    crossover_share: Optional[float]
    search: tuple[float, float]
    df: int
    paired: bool
    n_draws: int
    curve: dict[str, list[float]] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    @property
    def dalpha_significant(self) -> Optional[bool]:
        """Whether the Δα interval excludes 0 (``None`` without an interval)."""
        return None if self.dalpha_ci is None else self.dalpha_ci[0] > 0 or self.dalpha_ci[1] < 0


def _covariance(base: RungFit, var: RungFit, var_idx: Optional[np.ndarray], df: int) -> np.ndarray:
    """Σ̂ of the rung errors (2 × 2: baseline, variant); off-diagonal 0 when the rungs are not the same."""
    sb, sv = base.resid @ base.resid / base.df, var.resid @ var.resid / var.df
    sbv = base.resid @ var.resid[var_idx] / df if var_idx is not None else 0.0
    return np.array([[sb, sbv], [sbv, sv]])


def _draws(base: RungFit, var: RungFit, var_idx, S: np.ndarray, df: int, n: int, seed: int):
    """``n`` draws of both θ (n × 3 each): rung errors from N(0, Σ̂), one t scale per draw."""
    rng = np.random.default_rng(seed)
    w, V = np.linalg.eigh(S)
    root = V * np.sqrt(np.clip(w, 0, None))  # Σ̂ = root rootᵀ; eigh tolerates a singular Σ̂
    scale = np.sqrt(df / rng.chisquare(df, n))[:, None]
    if var_idx is not None:  # paired: one 2-vector per rung
        e = rng.standard_normal((n, len(base.rungs), 2)) @ root.T
        eb, ev = e[..., 0], np.empty_like(e[..., 1])
        ev[:, var_idx] = e[..., 1]
    else:
        eb = rng.standard_normal((n, len(base.rungs))) * math.sqrt(S[0, 0])
        ev = rng.standard_normal((n, len(var.rungs))) * math.sqrt(S[1, 1])
    return base.theta + scale * (eb @ base.H.T), var.theta + scale * (ev @ var.H.T)


def _crossings(tb, tv, base: RungFit, var: RungFit, search: tuple[float, float]) -> np.ndarray:
    """Per draw: the crossing (log FLOPs) in ``search`` nearest the data's log-centre; NaN if none."""
    x = np.linspace(math.log(search[0]), math.log(search[1]), GRID)
    with np.errstate(invalid="ignore"):  # inf − inf: NaN, which is no sign change
        d = loss_at(tb[:, None, :], base.u0, np.exp(x)) - loss_at(tv[:, None, :], var.u0, np.exp(x))
    change = np.sign(d[:, :-1]) * np.sign(d[:, 1:]) < 0
    with np.errstate(divide="ignore", invalid="ignore"):
        at = x[:-1] - d[:, :-1] * (x[1] - x[0]) / (d[:, 1:] - d[:, :-1])
    at = np.where(change, at, np.nan)
    centre = 0.5 * (math.log(max(base.c[0], var.c[0])) + math.log(min(base.c[-1], var.c[-1])))
    out = np.full(len(tb), np.nan)
    rows = change.any(axis=1)
    pick = np.nanargmin(np.abs(at[rows] - centre), axis=1)
    out[rows] = at[rows, pick]
    return out


def _percentiles(x: np.ndarray, confidence: float) -> tuple[float, float]:
    lo, hi = np.percentile(x, [50 * (1 - confidence), 50 * (1 + confidence)])
    return float(lo), float(hi)


def _multiplier_curve(tb, tv, base: RungFit, var: RungFit, confidence: float) -> dict[str, list[float]]:
    """m(L) = C_base(L) / C_variant(L) over the baseline's fitted loss range, with a pointwise band."""
    ends = loss_at(base.theta, base.u0, np.array([base.c[-1], base.c[0]]))
    L = np.linspace(ends[0], ends[1], 40)
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        est = compute_at(base.theta, base.u0, L) / compute_at(var.theta, var.u0, L)
        draws = compute_at(tb[:, None, :], base.u0, L) / compute_at(tv[:, None, :], var.u0, L)
    draws = np.where(np.isfinite(draws), draws, 0.0)
    lo, hi = np.percentile(draws, [50 * (1 - confidence), 50 * (1 + confidence)], axis=0)
    return {"loss": L.tolist(), "multiplier": np.where(np.isfinite(est), est, np.nan).tolist(),
            "lo": lo.tolist(), "hi": hi.tolist()}


def compare(base: RungFit, var: RungFit, n_draws: int = N_DRAWS, seed: int = 0, confidence: float = CONFIDENCE,
            decades: Optional[float] = None) -> Comparison:
    """The variant ``var`` against ``base`` (both fitted in one form), by the method of this module.

    The multiplier's estimand is ``c_max / C_variant(L_base(c_max))`` (``c_max``: the baseline's largest
    compute), so each draw moves ``L*`` with the baseline's curve; a draw whose variant never reaches it
    (``L* <= E``) counts as multiplier 0.  ``decades``: how far beyond the data a crossover is searched
    (default :data:`glubench.sweep.fits.SEARCH_DECADES`).  Without residual degrees of freedom (rungs <=
    parameters) there are estimates but no intervals.
    """
    search = search_range(base.fit, var.fit, **({} if decades is None else {"decades": decades}))
    cross = crossover(base.fit, var.fit, search).flops
    try:
        m = compute_multiplier(base.fit, var.fit, float(loss_at(base.theta, base.u0, base.c[-1])))
    except Undefined:
        m = None
    paired = sorted(base.rungs) == sorted(var.rungs)
    var_idx = np.array([var.rungs.index(k) for k in base.rungs]) if paired else None
    df = min(base.df, var.df)
    dalpha = float(var.theta[2] - base.theta[2])
    out = Comparison(m, None, dalpha, None, None, cross, None, None, search, df, paired, n_draws)
    if df < 1:
        out.notes.append(f"no intervals: {min(len(base.rungs), len(var.rungs))} rungs leave no residual degrees "
                         f"of freedom for {max(base.p, var.p)} parameters")
        return out
    if not paired:
        out.notes.append("the baseline and the variant have different rungs: intervals unpaired")
    from scipy import stats  # scipy.stats takes ~0.3 s: not for glubench-report --help

    S = _covariance(base, var, var_idx, df)
    hb, hv = base.H[2], (var.H[2][var_idx] if paired else var.H[2])
    v_da = S[0, 0] * hb @ hb + S[1, 1] * var.H[2] @ var.H[2] - (2 * S[0, 1] * hb @ hv if paired else 0.0)
    half = float(stats.t.ppf(0.5 + confidence / 2, df)) * math.sqrt(max(v_da, 0.0))
    out.dalpha_ci = (dalpha - half, dalpha + half)
    tb, tv = _draws(base, var, var_idx, S, df, n_draws, seed)
    l_star = loss_at(tb, base.u0, base.c[-1])
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        m_draws = base.c[-1] / compute_at(tv, var.u0, l_star)
    out.multiplier_ci = _percentiles(np.where(np.isfinite(m_draws), m_draws, 0.0), confidence)
    x = _crossings(tb, tv, base, var, search)
    out.crossover_share = float(np.mean(np.isfinite(x)))
    if cross is not None and out.crossover_share >= confidence:
        out.crossover = cross
        out.crossover_ci = tuple(math.exp(v) for v in _percentiles(x[np.isfinite(x)], confidence))
    out.curve = _multiplier_curve(tb, tv, base, var, confidence)
    return out


def _form_for(form: str, n_sizes: int) -> Optional[str]:
    """The form a reduced ladder of ``n_sizes`` can take (the saturating law needs 4), or ``None``."""
    if n_sizes < MIN_SIZES:
        return None
    return LOG_LINEAR if form == SATURATING and n_sizes < MIN_SIZES_E else form


def holdout_error(runs: Sequence[LadderRun], form: str) -> Optional[float]:
    """Fit without the largest-compute rung (in ``form`` where the rest allows it) and predict it: observed
    mean loss there minus predicted (nats/token; < 0: the rung did better than the trend).  ``None`` when
    the rest is too short to fit (fewer than 3 rungs) or the fit fails."""
    groups = by_size(runs)
    last = max(groups, key=lambda k: np.mean([r.flops for r in groups[k]]))
    rest = [r for r in runs if r.size != last]
    reduced = _form_for(form, len(groups) - 1)
    if reduced is None:
        return None
    fit = fit_runs(rest, reduced)
    if not fit.converged:
        return None
    held = groups[last]
    return float(np.mean([r.loss for r in held]) - np.mean([fit.loss(r.flops) for r in held]))


def loo_multipliers(base_runs: Sequence[LadderRun], var_runs: Sequence[LadderRun], form: str,
                    target: float) -> list[float]:
    """The multiplier at the full ladder's ``target`` L* (nats/token) with each rung (of either variant)
    left out in turn, both curves refitted in ``form`` where the rest allows it; undefined ones skipped."""
    out = []
    for rung in dict.fromkeys(r.size for r in (*base_runs, *var_runs)):
        rb, rv = [r for r in base_runs if r.size != rung], [r for r in var_runs if r.size != rung]
        reduced = _form_for(form, min(len(by_size(rb)), len(by_size(rv))))
        if reduced is None:
            continue
        fb, fv = fit_runs(rb, reduced), fit_runs(rv, reduced)
        try:
            out.append(compute_multiplier(fb, fv, target))
        except Undefined:
            continue
    return out


ROW_KEYS = ("variant", "form", "alpha", "E", "A", "dalpha", "dalpha_ci", "multiplier", "multiplier_ci",
            "holdout_error", "loo_multiplier_range", "crossover", "crossover_ci", "crossover_share",
            "crossover_estimate", "rmse", "seed_spread", "n_rungs", "n_seeds", "n_runs", "df", "paired")
"""The keys of a :func:`ladder_table` row that go into ``ladder.json`` (rows also hold ``fit`` and ``curve``)."""


def seed_spread(runs: Sequence[LadderRun]) -> Optional[float]:
    """Mean over rungs with two or more seeds of the std (ddof=1) of final loss; ``None`` if there are none."""
    stds = [float(np.std([r.loss for r in g], ddof=1)) for g in by_size(runs).values() if len(g) > 1]
    return float(np.mean(stds)) if stds else None


def _row(variant: str, fit: PowerLawFit, runs: Sequence[LadderRun]) -> dict:
    row = dict.fromkeys(ROW_KEYS)
    sizes = by_size(runs)
    row.update(variant=variant, form=fit.form, alpha=fit.alpha, E=fit.E, A=fit.A, rmse=fit.rmse,
               seed_spread=seed_spread(runs), n_rungs=fit.n_sizes, n_runs=len(runs),
               n_seeds=min(len({r.seed for r in g}) for g in sizes.values()) if sizes else 0, fit=fit, curve=None)
    return row


def _fill(row: dict, c: Comparison) -> None:
    row.update(multiplier=c.multiplier, multiplier_ci=c.multiplier_ci, dalpha=c.dalpha, dalpha_ci=c.dalpha_ci,
               crossover=c.crossover, crossover_ci=c.crossover_ci, crossover_share=c.crossover_share,
               crossover_estimate=c.crossover_estimate, df=c.df, paired=c.paired, curve=c.curve)


def _fits(runs_by_variant: dict[str, Sequence[LadderRun]]) -> tuple[dict[str, PowerLawFit], list[str]]:
    """Each variant's fit, all in one form (log-linear when the forms differ), and messages about them."""
    fits = {v: fit_runs(r) for v, r in runs_by_variant.items()}
    messages = [f"{v}: fit refused: {f.why}" for v, f in fits.items() if not f.converged]
    messages += [f"{v}: {LOG_LINEAR} fit ({f.why})" for v, f in fits.items() if f.converged and f.form == LOG_LINEAR]
    if len({f.form for f in fits.values() if f.converged}) > 1:
        messages.append(f"every variant is fitted {LOG_LINEAR}, the form the weakest ladder supports")
        fits = {v: fit_runs(r, LOG_LINEAR) if fits[v].converged else fits[v] for v, r in runs_by_variant.items()}
    return fits, messages


def ladder_table(runs_by_variant: dict[str, Sequence[LadderRun]], baseline: str, n_draws: int = N_DRAWS,
                 seed: int = 0, confidence: float = CONFIDENCE, extras: bool = True) -> tuple[list[dict], list[str]]:
    """Rows (dicts keyed by :data:`ROW_KEYS` plus ``fit``, the row's :class:`PowerLawFit`, and ``curve``,
    m(L); baseline first) and messages.  Per variant: its fit (α, E, A, RMSE in nats), Δα, the multiplier
    at the baseline's L* (:func:`compare`), the crossover; with ``extras`` also the held-out-rung error
    (:func:`holdout_error`, nats) and the range of the multiplier with each rung left out
    (:func:`loo_multipliers`).  Numbers a fit cannot give are ``None`` and a message says why.

    Raises:
        FitError: the baseline has no runs.
    """
    if baseline not in runs_by_variant:
        raise FitError(f"baseline = {baseline!r} has no runs; variants with runs: {sorted(runs_by_variant)}")
    fits, messages = _fits(runs_by_variant)
    base = fits[baseline]
    base_rf = rung_fit(runs_by_variant[baseline], base) if base.converged else None
    rows = []
    for v in [baseline] + [k for k in runs_by_variant if k != baseline]:
        f, runs = fits[v], runs_by_variant[v]
        row = _row(v, f, runs)
        rows.append(row)
        if extras and f.converged:
            row["holdout_error"] = holdout_error(runs, f.form)
        if v == baseline:
            row.update(multiplier=1.0 if f.converged else None, dalpha=0.0 if f.converged else None)
            continue
        if base_rf is None or not f.converged:
            continue
        c = compare(base_rf, rung_fit(runs, f), n_draws, seed, confidence)
        _fill(row, c)
        messages += [f"{v}: {n}" for n in c.notes]
        if c.multiplier is None:
            messages.append(f"{v}: multiplier not defined: L* = {base.loss(base.c_max):.4g} nats is not above the "
                            f"variant's E = {f.E:.4g}")
        if extras:
            loo = loo_multipliers(runs_by_variant[baseline], runs, f.form, float(base.loss(base.c_max)))
            row["loo_multiplier_range"] = [min(loo), max(loo)] if loo else None
    return rows, messages
