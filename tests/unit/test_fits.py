"""Scaling fits (glubench.sweep.fits) on synthetic ladders drawn from known laws; expectations by hand."""

import math

import numpy as np
import pytest

from glubench.core.errors import FitError, Undefined
from glubench.sweep.fits import (
    LOG_LINEAR,
    SATURATING,
    LadderRun,
    compute_multiplier,
    crossover,
    fit_power_law,
    fit_runs,
    target_loss,
)
from glubench.sweep.ladder_stats import compare, ladder_table, rung_fit

E, A, ALPHA = 1.8, 40.0, 0.12
FLOPS = np.geomspace(1e15, 1e19, 5)  # 5 sizes, one decade apart


def ladder(E=E, A=A, alpha=ALPHA, mult=1.0, flops=FLOPS, seeds=3, noise=None):
    """Runs of the law L = E + A·(mult·C)^-alpha; ``noise(size, seed)`` is added to each loss."""
    return [LadderRun(float(c), E + A * (mult * c) ** -alpha + (noise(i, s) if noise else 0.0), f"s{i}", s)
            for i, c in enumerate(flops) for s in range(seeds)]


def test_noise_free_recovers_the_law():
    fit = fit_runs(ladder(seeds=1))
    assert fit.converged and fit.form == SATURATING and fit.n_sizes == 5
    assert fit.E == pytest.approx(E, rel=1e-6)
    assert fit.A == pytest.approx(A, rel=1e-6)
    assert fit.alpha == pytest.approx(ALPHA, rel=1e-6)
    assert fit.rmse < 1e-9 and len(fit.residuals) == 5
    L_star = E + A * 1e19**-ALPHA  # the base law at its largest budget
    assert target_loss(fit) == pytest.approx(L_star, rel=1e-9)
    variant = fit_runs(ladder(mult=1.3, seeds=1))
    assert compute_multiplier(fit, variant, L_star) == pytest.approx(1.3, rel=1e-6)


def test_noisy_ladder_recovers_alpha_and_multiplier_and_the_interval_covers_it():
    rng = np.random.default_rng(0)
    base = ladder(noise=lambda i, s: rng.normal(0, 2e-4))
    variant = ladder(mult=1.3, noise=lambda i, s: rng.normal(0, 2e-4))
    fb, fv = fit_runs(base), fit_runs(variant)
    assert fb.form == fv.form == SATURATING
    assert fb.alpha == pytest.approx(ALPHA, rel=0.02) and fv.alpha == pytest.approx(ALPHA, rel=0.02)
    assert compute_multiplier(fb, fv, target_loss(fb)) == pytest.approx(1.3, rel=0.02)
    c = compare(rung_fit(base, fb), rung_fit(variant, fv), n_draws=2000)
    assert c.n_draws == 2000 and c.paired and c.df == 5 - 3
    assert c.multiplier_ci[0] < 1.3 < c.multiplier_ci[1] and c.multiplier_ci[0] < c.multiplier < c.multiplier_ci[1]
    assert c.dalpha_ci[0] < 0 < c.dalpha_ci[1]  # equal slopes: the interval of the difference contains 0


def test_fewer_than_three_sizes_is_refused_without_numbers():
    fit = fit_runs(ladder(flops=FLOPS[:2]))
    assert not fit.converged and fit.n_sizes == 2
    assert "only 2 distinct size(s); a scaling fit needs at least 3" in fit.why
    assert (fit.E, fit.A, fit.alpha, fit.rmse, fit.residuals) == (None, None, None, None, None)
    good = fit_runs(ladder())
    with pytest.raises(Undefined, match="no fit: only 2"):
        compute_multiplier(good, fit, 2.0)
    with pytest.raises(Undefined):
        target_loss(fit)


def test_log_linear_fallback_when_E_is_not_constrained():
    # 3 sizes of the pure power law L = 40·C^-0.12: too few for E, and the log-linear form is exact
    fit = fit_runs(ladder(E=0.0, flops=FLOPS[:3]))
    assert fit.converged and fit.form == LOG_LINEAR and fit.E == 0.0
    assert "3 sizes cannot constrain E (need 4)" in fit.why
    assert fit.alpha == pytest.approx(ALPHA, rel=1e-9) and fit.A == pytest.approx(A, rel=1e-9)
    # 5 sizes of the same law, with noise: the saturating fit puts E on its bound 0, so it falls back too
    rng = np.random.default_rng(1)
    fit5 = fit_runs(ladder(E=0.0, noise=lambda i, s: rng.normal(0, 1e-3)))
    assert fit5.form == LOG_LINEAR and fit5.why.startswith(("E = ", "E's standard error"))
    assert fit5.alpha == pytest.approx(ALPHA, rel=0.02)


@pytest.mark.parametrize("decade, inside", [(17, True), (19.8, False), (21, None)])
def test_crossover_where_the_laws_cross(decade, inside):
    """Inside the data (1e15..1e19), 0.8 decade beyond it (an extrapolation), and 2 decades beyond it: no
    crossover in the searched range (at most one decade beyond the data)."""
    # base 40·C^-0.12 and variant A_v·C^-0.15 (same E) meet where C^0.03 = A_v/40, i.e. at 10^decade
    A_v = A * 10 ** (0.03 * decade)
    base, variant = fit_runs(ladder(seeds=1)), fit_runs(ladder(A=A_v, alpha=0.15, seeds=1))
    cross = crossover(base, variant)
    if inside is None:
        assert cross.flops is None and cross.extrapolated is None
        assert crossover(base, variant, (1e14, 1e22)).flops == pytest.approx(1e21, rel=1e-6)  # a wider search finds it
    else:
        assert cross.flops == pytest.approx(10.0**decade, rel=1e-6)
        assert cross.extrapolated is (not inside)
        assert cross.variant_ahead_above is True  # the steeper law is lower beyond the crossing
    # the multiplier at L* = L_base(1e19): A_v·C_v^-0.15 = 40·1e19^-0.12
    C_v = (A_v / (A * 1e19**-ALPHA)) ** (1 / 0.15)
    assert compute_multiplier(base, variant, target_loss(base)) == pytest.approx(1e19 / C_v, rel=1e-6)


def test_crossover_absent_and_multiplier_undefined_below_E():
    base = fit_runs(ladder(seeds=1))
    assert crossover(base, fit_runs(ladder(mult=1.3, seeds=1))).flops is None  # parallel curves
    high_E = fit_runs(ladder(E=2.2, seeds=1))  # its E exceeds the base's L* ≈ 2.01
    with pytest.raises(Undefined, match="not above the fit's E = 2.2"):
        compute_multiplier(base, high_E, target_loss(base))


def test_ladder_table_rows_and_messages():
    delta = 0.003  # seeds at L - δ, L, L + δ: std across seeds (ddof=1) is exactly δ at every size
    def offsets(i, s):
        return (s - 1) * delta
    runs = {"relu": ladder(noise=offsets), "swiglu": ladder(mult=1.3, noise=offsets),
            "gelu": ladder(flops=FLOPS[:2], noise=offsets)}
    rows, messages = ladder_table(runs, "relu", n_draws=200)
    assert [r["variant"] for r in rows] == ["relu", "swiglu", "gelu"]
    relu, swiglu, gelu = rows
    assert relu["multiplier"] == 1.0 and relu["dalpha"] == 0.0 and relu["crossover"] is None
    assert swiglu["form"] == SATURATING and swiglu["alpha"] == pytest.approx(ALPHA, rel=1e-6)
    assert swiglu["multiplier"] == pytest.approx(1.3, rel=1e-6)
    # the seeds' offsets cancel in the rung means: the curves fit them exactly, so the interval is a point
    assert swiglu["multiplier_ci"] == pytest.approx((1.3, 1.3), rel=1e-6)
    assert swiglu["dalpha"] == pytest.approx(0.0, abs=1e-9)
    assert swiglu["crossover"] is None and swiglu["crossover_ci"] is None and swiglu["crossover_share"] == 0.0
    assert swiglu["holdout_error"] == pytest.approx(0.0, abs=1e-6)  # an exact law predicts its largest rung
    assert swiglu["loo_multiplier_range"] == pytest.approx([1.3, 1.3], rel=1e-6)
    assert (swiglu["n_rungs"], swiglu["n_runs"], swiglu["n_seeds"]) == (5, 15, 3)
    assert swiglu["seed_spread"] == pytest.approx(delta, rel=1e-9)
    assert gelu["multiplier"] is None and gelu["alpha"] is None and gelu["n_runs"] == 6
    assert messages == ["gelu: fit refused: only 2 distinct size(s); a scaling fit needs at least 3"]


def test_ladder_table_fits_every_variant_in_one_form_when_forms_differ():
    runs = {"relu": ladder(seeds=1), "swiglu": ladder(mult=1.3, flops=FLOPS[:3], seeds=1)}
    rows, messages = ladder_table(runs, "relu", n_draws=50)
    assert [r["form"] for r in rows] == [LOG_LINEAR, LOG_LINEAR]
    assert messages == ["swiglu: log-linear fit (3 sizes cannot constrain E (need 4))",
                        "every variant is fitted log-linear, the form the weakest ladder supports",
                        "swiglu: the baseline and the variant have different rungs: intervals unpaired"]
    # the relu row is now the least-squares line of log L on log C over its 5 runs
    slope = np.polyfit(np.log(FLOPS), np.log(E + A * FLOPS**-ALPHA), 1)[0]
    assert rows[0]["alpha"] == pytest.approx(-slope, rel=1e-9)


def test_crossover_interval_brackets_the_crossing_and_every_draw_crosses():
    A_v = A * 10 ** (0.03 * 17)
    rng = np.random.default_rng(2)
    base = ladder(noise=lambda i, s: rng.normal(0, 2e-4))
    variant = ladder(A=A_v, alpha=0.15, noise=lambda i, s: rng.normal(0, 2e-4))
    c = compare(rung_fit(base, fit_runs(base)), rung_fit(variant, fit_runs(variant)), n_draws=400)
    assert c.crossover == pytest.approx(1e17, rel=0.2) and c.crossover_share == 1.0
    assert c.crossover_ci[0] < 1e17 < c.crossover_ci[1]
    assert math.log10(c.crossover_ci[1] / c.crossover_ci[0]) < 2  # a few decades' accuracy from 15 runs
    assert c.search == pytest.approx((1e14, 1e20))  # the data widened by one decade each side


def test_bad_input_is_one_clear_error():
    with pytest.raises(FitError, match="finite values > 0"):
        fit_power_law([1e15, -1.0, 1e17], [3.0, 2.9, 2.8])
    with pytest.raises(FitError, match="baseline = 'relu' has no runs"):
        ladder_table({"gelu": ladder()}, "relu")


def test_figure_titles_name_block_corpus_and_tokenizer():
    from types import SimpleNamespace

    from glubench.sweep.ladder import setting

    def runs(**flat):
        return [SimpleNamespace(flat=flat)]

    assert setting(runs(**{"model.norm": "layernorm", "model.pos": "learned", "data.name": "pydocs",
                           "data.tokenizer": "bpe", "data.vocab_size": 2048})) == "GPT-2-style block, pydocs, bpe 2048"
    assert setting(runs(**{"model.norm": "rmsnorm", "model.pos": "rope", "data.name": "text",
                           "data.files": ["/x/wikitext-2-tokenized/valid.txt"], "data.tokenizer": "byte"})) == (
        "Llama-style block, wikitext-2-tokenized/valid.txt, byte")
    assert setting(runs(**{"model.norm": "rmsnorm", "model.pos": "learned", "data.name": "pydocs"})) == (
        "rmsnorm + learned block, pydocs")
    assert setting([]) == "" and setting(runs()) == ""
