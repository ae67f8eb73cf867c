"""Intervals of the compute ladder (glubench.sweep.ladder_stats) against independent computations:
the paired regression of the gap on log C (scipy.stats.linregress), exact laws, refits by numpy.polyfit."""

import math

import numpy as np
import pytest
from scipy import stats

from glubench.sweep.fits import LOG_LINEAR, LadderRun, fit_runs
from glubench.sweep.ladder_stats import compare, holdout_error, ladder_table, loo_multipliers, rung_fit

FLOPS = np.geomspace(1e11, 1e13, 5)  # 5 rungs over 2 decades


def law(A, alpha, offsets=None, seeds=3, seed_noise=None, rung_names=None, flops=FLOPS):
    """Runs of L = A·C^-alpha (+ a per-rung offset, + ``seed_noise(rung, seed)``), rungs named r0, r1, ..."""
    names = rung_names or [f"r{i}" for i in range(len(flops))]
    return [LadderRun(float(c), A * c**-alpha + (offsets[i] if offsets is not None else 0.0)
                      + (seed_noise(i, s) if seed_noise else 0.0), names[i], s)
            for i, c in enumerate(flops) for s in range(seeds)]


def _log_linear(runs):
    return rung_fit(runs, fit_runs(runs, LOG_LINEAR))


def test_dalpha_interval_is_the_paired_t_interval_of_the_gap_regression():
    rng = np.random.default_rng(3)
    base = law(4.5 * 1e13**0.07, 0.07, rng.normal(0, 0.03, 5), seed_noise=lambda i, s: rng.normal(0, 0.03))
    var = law(4.4 * 1e13**0.08, 0.08, rng.normal(0, 0.03, 5), seed_noise=lambda i, s: rng.normal(0, 0.03))
    c = compare(_log_linear(base), _log_linear(var), n_draws=100)
    # by hand: per rung the mean over seeds of log L, the variant's minus the baseline's, regressed on log C
    gap = [np.mean([math.log(v.loss) for v in var if v.size == k]) - np.mean([math.log(b.loss) for b in base
                                                                                if b.size == k])
           for k in (f"r{i}" for i in range(5))]
    reg = stats.linregress(np.log(FLOPS), gap)
    half = stats.t.ppf(0.975, 5 - 2) * reg.stderr
    assert c.df == 3 and c.paired
    assert c.dalpha == pytest.approx(-reg.slope, rel=1e-9)
    assert c.dalpha_ci == pytest.approx((-reg.slope - half, -reg.slope + half), rel=1e-9)


def test_what_the_variants_share_at_a_rung_cancels_when_paired_and_not_when_unpaired():
    """Identical rung offsets for both variants and no seed noise: every difference between them is exact,
    so paired, Δα's interval is a point and the multiplier's comes from the slope alone; with the rungs
    named apart (no pairing) the same data give wide intervals."""
    offsets = [0.05, -0.04, 0.03, -0.06, 0.02]
    A = 4.5 * 1e13**0.07
    base = law(A, 0.07, offsets, seeds=1)
    # the variant: the baseline's losses × 1.4^-0.07, offsets included (the log-linear fits work in log L)
    var = [LadderRun(b.flops, b.loss * 1.4**-0.07, b.size, b.seed) for b in base]
    # both fits have the slope a of the baseline's points and intercepts 0.07·log 1.4 apart, so by hand
    # m = exp(0.07·log 1.4 / a)
    a = -np.polyfit(np.log(FLOPS), np.log([b.loss for b in base]), 1)[0]
    m = math.exp(0.07 * math.log(1.4) / a)
    paired = compare(_log_linear(base), _log_linear(var), n_draws=20000)
    assert paired.multiplier == pytest.approx(m, rel=1e-9) and abs(m - 1.4) > 0.005
    assert paired.dalpha_ci == pytest.approx((0.0, 0.0), abs=1e-9)
    # the gap is exact, so the multiplier's interval is that of the slope alone: log m = 0.07·log 1.4 / α_v
    # over the t interval of α_v (its own regression's standard error, 3 degrees of freedom)
    reg = stats.linregress(np.log(FLOPS), np.log([v.loss for v in var]))
    half = stats.t.ppf(0.975, 3) * reg.stderr
    by_hand = tuple(math.exp(0.07 * math.log(1.4) / (a + d)) for d in (half, -half))
    assert paired.multiplier_ci == pytest.approx(by_hand, rel=3e-3)  # percentiles of 20,000 draws
    apart = [LadderRun(r.flops, r.loss, "x" + r.size, r.seed) for r in var]
    unpaired = compare(_log_linear(base), _log_linear(apart), n_draws=500)
    assert not unpaired.paired and unpaired.multiplier == pytest.approx(m, rel=1e-9)
    assert unpaired.multiplier_ci[1] / unpaired.multiplier_ci[0] > 1.5
    assert unpaired.dalpha_ci[1] - unpaired.dalpha_ci[0] > 0.005


def test_holdout_error_is_the_offset_of_the_largest_rung_from_the_trend_of_the_others():
    runs = law(40.0, 0.1, offsets=[0, 0, 0, 0, -0.07])  # an exact law, the largest rung 0.07 nats below it
    assert holdout_error(runs, LOG_LINEAR) == pytest.approx(-0.07, abs=1e-9)
    assert holdout_error(law(40.0, 0.1, flops=FLOPS[:3]), LOG_LINEAR) is None  # 2 rungs left: no fit


def test_loo_multipliers_match_refits_by_polyfit():
    base = law(40.0, 0.1, seeds=1)
    var = law(40.0 * 1.4**-0.1, 0.1, offsets=[0, 0, 0.03, 0, 0], seeds=1)  # one rung off the 1.4× law
    target = 40.0 * FLOPS[-1] ** -0.1
    expected = []
    for k in range(5):  # by hand: log-linear refits without rung k, then C_base(L*) / C_variant(L*)
        keep = [i for i in range(5) if i != k]
        (sb, ib), (sv, iv) = (np.polyfit(np.log(FLOPS[keep]), np.log([runs[i].loss for i in keep]), 1)
                              for runs in (base, var))
        expected.append(math.exp((math.log(target) - ib) / sb - (math.log(target) - iv) / sv))
    got = loo_multipliers(base, var, LOG_LINEAR, target)
    assert got == pytest.approx(expected, rel=1e-9)
    assert expected[2] == pytest.approx(1.4, rel=1e-9)  # without the odd rung the law is exact


def test_a_crossover_is_reported_only_when_the_draws_agree():
    A = 4.5 * 1e13**0.07
    crossing = 1e12  # variant A_v·C^-0.08 meets the baseline at 1e12, inside the data
    strong = compare(_log_linear(law(A, 0.07)), _log_linear(law(A * crossing**0.01, 0.08, [0.001, 0, 0, 0, 0])))
    assert strong.crossover == pytest.approx(crossing, rel=0.05) and strong.crossover_share == 1.0
    assert strong.crossover_ci[0] <= strong.crossover <= strong.crossover_ci[1]
    # slopes 0.070 vs 0.071 (crossing at 1e12) under rung offsets and seed noise of 0.03 nats: the fitted
    # curves cross in the searched range, but too few draws do for the crossover to be established
    rng = np.random.default_rng(0)

    def noisy(A, alpha):
        return law(A, alpha, rng.normal(0, 0.03, 5), seed_noise=lambda i, s: rng.normal(0, 0.03))

    weak = compare(_log_linear(noisy(A, 0.07)), _log_linear(noisy(A * crossing**0.001, 0.071)), n_draws=2000)
    assert weak.search[0] < weak.crossover_estimate < weak.search[1] and weak.crossover_share < 0.95
    assert weak.crossover is None and weak.crossover_ci is None


def test_ladder_table_rows_hold_every_ladder_json_key():
    from glubench.sweep.ladder_stats import ROW_KEYS

    rng = np.random.default_rng(0)
    runs = {"relu": law(40.0, 0.1, seed_noise=lambda i, s: rng.normal(0, 0.01)),
            "swiglu": law(40.0 * 1.3**-0.1, 0.1, seed_noise=lambda i, s: rng.normal(0, 0.01))}
    rows, _ = ladder_table(runs, "relu", n_draws=300)
    for key in ("multiplier", "multiplier_ci", "alpha", "dalpha", "dalpha_ci", "holdout_error",
                "loo_multiplier_range", "crossover", "crossover_ci", "crossover_share", "n_rungs", "n_seeds"):
        assert key in ROW_KEYS and all(key in r for r in rows)
    swiglu = rows[1]  # (coverage of the truth is the calibration tests' job)
    assert swiglu["multiplier_ci"][0] < swiglu["multiplier"] < swiglu["multiplier_ci"][1]
    assert swiglu["multiplier"] == pytest.approx(1.3, rel=0.1)
    lo, hi = swiglu["loo_multiplier_range"]
    assert lo <= hi and swiglu["n_rungs"] == 5 and swiglu["n_seeds"] == 3
    relu = rows[0]["fit"]  # m(L) runs over relu's fitted losses, from its largest rung to its smallest
    assert swiglu["curve"]["loss"][0] == pytest.approx(relu.loss(FLOPS[-1]), rel=1e-9)
    assert swiglu["curve"]["loss"][-1] == pytest.approx(relu.loss(FLOPS[0]), rel=1e-9)
    assert swiglu["curve"]["multiplier"][0] == pytest.approx(swiglu["multiplier"], rel=1e-9)
