"""Calibration of the compute ladder's statistics (issue 23) on synthetic ladders with a known truth.

Two scenarios, 5 rungs × 3 seeds over 2 decades of compute (the CPU ladder spans 1.9), L = A·C^−α in nats
with relu's loss 4.5 at its largest rung (the measured ladders: 4.1–4.6), seed noise sd 0.03 and rung
offsets sd 0.03 nats (what the measured rung means show):

- (a) equal slopes 0.07, the variant needs 1/1.4 of relu's compute everywhere (multiplier 1.4);
- (b) slopes 0.07 (relu) and 0.08, the curves crossing at the log-centre of the range (multiplier 1.33 at
  relu's largest rung).

Two readings of "rung-level offsets": independent per variant and rung (``shared=False``: the variants
respond differently to a rung's depth or learning rate; the harder one for Δα) or one offset per rung
shared by the variants (``shared=True``).  Targets: the 95% multiplier interval covers the truth in ≥ 90% of
ladders in both scenarios, "Δα ≠ 0" is declared in ≤ 10% of (a) and ≥ 50% of (b), a crossover is
reported in ≤ 10% of (a).  The default run checks 120 ladders per scenario under the independent
reading (a 95% coverage falls below 90% with probability < 1%; an 80% one passes with probability
< 0.1%); ``-m slow`` runs 1,000 per scenario under both readings, and at 1.5 decades of compute.
Measured figures: BENCHMARKS.md, "Calibration of the compute-ladder statistics".
"""

import math

import numpy as np
import pytest

from glubench.sweep.fits import LadderRun
from glubench.sweep.ladder_stats import ladder_table

RUNGS, SEEDS, SEED_SD, RUNG_SD = 5, 3, 0.03, 0.03
L_TOP = 4.5  # relu's loss at its largest rung (nats/token)


def scenario(name: str, decades: float):
    """Rung compute (FLOPs), (A, α) of relu and of the variant, and the true multiplier at relu's L*."""
    C = np.geomspace(1e11, 1e11 * 10**decades, RUNGS)
    a_b = 0.07
    A_b = L_TOP * C[-1] ** a_b
    if name == "a":
        a_v, A_v = 0.07, A_b * 1.4**-0.07
    else:  # A_v·C^-0.08 = A_b·C^-0.07 at the log-centre
        a_v, A_v = 0.08, A_b * math.sqrt(C[0] * C[-1]) ** 0.01
    truth = C[-1] / (A_v / L_TOP) ** (1 / a_v)  # C_relu(L*) / C_variant(L*)
    return C, (A_b, a_b), (A_v, a_v), truth


def simulate(name: str, shared: bool, rng: np.random.Generator, decades: float):
    """One synthetic ladder: ``{"relu": runs, "variant": runs}`` and the true multiplier."""
    C, base, variant, truth = scenario(name, decades)
    offsets_b = rng.normal(0, RUNG_SD, RUNGS)
    offsets_v = offsets_b if shared else rng.normal(0, RUNG_SD, RUNGS)
    runs = {}
    for v, (A, a), offsets in (("relu", base, offsets_b), ("variant", variant, offsets_v)):
        runs[v] = [LadderRun(float(c), float(A * c**-a + offsets[i] + rng.normal(0, SEED_SD)), f"r{i}", s)
                   for i, c in enumerate(C) for s in range(SEEDS)]
    return runs, truth


def calibrate(name: str, shared: bool, n: int, decades: float = 2.0, seed: int = 0) -> dict[str, float]:
    """Over ``n`` ladders: the share whose 95% multiplier interval covers the truth, that declare Δα ≠ 0
    and that report a crossover, by the report's own :func:`ladder_table`."""
    rng = np.random.default_rng(seed)
    covered = declared = crossed = 0
    for _ in range(n):
        runs, truth = simulate(name, shared, rng, decades)
        row = ladder_table(runs, "relu", n_draws=2000, seed=int(rng.integers(1 << 30)), extras=False)[0][1]
        lo, hi = row["multiplier_ci"]
        covered += lo <= truth <= hi
        declared += row["dalpha_ci"][0] > 0 or row["dalpha_ci"][1] < 0
        crossed += row["crossover"] is not None
    out = {"coverage": covered / n, "dalpha": declared / n, "crossover": crossed / n}
    print(f"calibration scenario ({name}) offsets {'shared' if shared else 'independent'} {decades:g} decades, "
          f"{n} ladders: " + ", ".join(f"{k} {v:.3f}" for k, v in out.items()))
    return out


def _check(a: dict, b: dict) -> None:
    assert a["coverage"] >= 0.90 and b["coverage"] >= 0.90
    assert a["dalpha"] <= 0.10 and b["dalpha"] >= 0.50
    assert a["crossover"] <= 0.10


def test_scenarios_hold_their_truth():
    """The generator itself: noise-free, (a) has multiplier 1.4 and (b) crosses at 1e12 (by hand)."""
    for name, m in (("a", 1.4), ("b", None)):
        C, (A_b, a_b), (A_v, a_v), truth = scenario(name, 2.0)
        assert A_b * C[-1] ** -a_b == pytest.approx(L_TOP)
        if m is not None:
            assert truth == pytest.approx(m, rel=1e-12)
        else:
            assert A_b * 1e12**-a_b == pytest.approx(A_v * 1e12**-a_v, rel=1e-12)
            # at L* = 4.5 the variant's compute: (A_v / 4.5)^(1/0.08) = 1e13 · 10^(-0.01/0.08)
            assert truth == pytest.approx(10 ** (0.01 / 0.08), rel=1e-9)


def test_calibration_reduced():
    _check(calibrate("a", False, 120), calibrate("b", False, 120))


@pytest.mark.slow
@pytest.mark.parametrize("shared", [False, True], ids=["independent offsets", "shared offsets"])
def test_calibration_full(shared):
    _check(calibrate("a", shared, 1000, seed=1), calibrate("b", shared, 1000, seed=2))


@pytest.mark.slow
@pytest.mark.parametrize("shared", [False, True], ids=["independent offsets", "shared offsets"])
def test_calibration_at_one_and_a_half_decades(shared):
    """Coverage and false alarms hold over 1.5 decades too; the power for Δα is printed, not asserted:
    with independent offsets it falls below 50% there (BENCHMARKS.md)."""
    a, b = calibrate("a", shared, 1000, decades=1.5, seed=3), calibrate("b", shared, 1000, decades=1.5, seed=4)
    assert a["coverage"] >= 0.90 and b["coverage"] >= 0.90
    assert a["dalpha"] <= 0.10 and a["crossover"] <= 0.10
