"""The ``## Compute ladder`` section of summary.md: per series one table of the fits and their comparisons
with the baseline (:mod:`glubench.sweep.ladder`), the learning rates that won, and the notes."""

from __future__ import annotations

from glubench.sweep.fits import SEARCH_DECADES
from glubench.sweep.ladder import BASELINE, CONVENTIONS, SeriesResult
from glubench.sweep.tables import fmt, markdown_table

HEADER = ["variant", "fit", "α", "Δα vs relu [95% CI]", "compute multiplier [95% CI]",
          "multiplier, 6·N·D [95% CI]", "held-out rung error (nats)", "multiplier, each rung left out",
          "crossover (FLOPs) [95% CI]", "draws crossing", "rungs", "seeds", "seed spread (nats)"]


def by_label(results: list[SeriesResult]) -> dict[str, dict[str, SeriesResult]]:
    """``{series label: {convention: result}}`` in first-seen order."""
    out: dict[str, dict[str, SeriesResult]] = {}
    for r in results:
        out.setdefault(r.label, {})[r.convention] = r
    return out


def _interval(value, ci, spec: str) -> str:
    if value is None:
        return "not defined"
    return fmt(value, spec) + (f" [{fmt(ci[0], spec)}, {fmt(ci[1], spec)}]" if ci else "")


MULTIPLIER_SHOWN = 100.0  # a multiplier interval beyond [1/100, 100] is shown as "<0.01" / ">100"


def _multiplier_interval(value, ci) -> str:
    """The multiplier and its interval; a bound beyond ``MULTIPLIER_SHOWN`` either way is shown as such.

    A draw whose variant never reaches L* counts as multiplier 0 (infinite compute), and a 3-parameter fit on
    few rungs gives draws of 10^5 and more: such a bound says "unbounded", and printing its digits would
    suggest a measurement.  ``ladder.json`` keeps the numbers."""
    if value is None or not ci:
        return _interval(value, ci, ".3f")
    lo = f"<{1 / MULTIPLIER_SHOWN:g}" if ci[0] < 1 / MULTIPLIER_SHOWN else fmt(ci[0], ".3f")
    hi = f">{MULTIPLIER_SHOWN:g}" if ci[1] > MULTIPLIER_SHOWN else fmt(ci[1], ".3f")
    return f"{fmt(value, '.3f')} [{lo}, {hi}]"


def _crossover(row: dict) -> str:
    if row["variant"] == BASELINE:
        return "baseline"
    if row["crossover"] is not None:
        fit = row["fit"]
        inside = fit.c_min <= row["crossover"] <= fit.c_max
        return _interval(row["crossover"], row["crossover_ci"], ".2e") + ("" if inside else " (extrapolated)")
    if row["crossover_estimate"] is not None:
        return f"not established (the fits cross at {row['crossover_estimate']:.2e})"
    return "none in range" if row["fit"].converged else "not defined"


def _row(row: dict, other: dict | None) -> list[str]:
    sig = " ≠ 0" if row["dalpha_ci"] and (row["dalpha_ci"][0] > 0 or row["dalpha_ci"][1] < 0) else ""
    base = row["variant"] == BASELINE
    loo = row["loo_multiplier_range"]
    return [row["variant"], str(row["form"]), fmt(row["alpha"], ".4f"),
            "—" if base else _interval(row["dalpha"], row["dalpha_ci"], "+.4f") + sig,
            _multiplier_interval(row["multiplier"], row["multiplier_ci"]),
            _multiplier_interval(other["multiplier"], other["multiplier_ci"]) if other else "—",
            fmt(row["holdout_error"], "+.3f"), "—" if base or not loo else f"{loo[0]:.3f}–{loo[1]:.3f}",
            _crossover(row), "—" if row["crossover_share"] is None else f"{row['crossover_share']:.0%}",
            str(row["n_rungs"]), str(row["n_seeds"]), fmt(row["seed_spread"], ".4f")]


def _lr_table(result: SeriesResult) -> list[str]:
    if not result.choices:
        return []
    compute: dict[str, list[float]] = {}
    for p in result.points:
        compute.setdefault(p.rung, []).append(p.compute[result.convention])
    rungs = sorted({c["rung"] for c in result.choices}, key=lambda k: min(compute.get(k, [0.0])))
    cell = {(c["variant"], c["rung"]): c["chosen"] + (" (edge)" if c["edge"] else "") for c in result.choices}
    chosen = {c["variant"] for c in result.choices}
    variants = [r["variant"] for r in result.rows if r["variant"] in chosen]
    grids = {" … ".join((c["grid"][0], c["grid"][-1])) for c in result.choices}
    rows = [[v, *(cell.get((v, k), "—") for k in rungs)] for v in variants]
    edges = sum(c["edge"] for c in result.choices)
    return ["Learning rate chosen per variant and rung (lowest mean validation loss over seeds, grid "
            f"{', '.join(sorted(grids))}):", markdown_table(["variant", *rungs], rows)] + (
        [f"**{edges} of {len(result.choices)} choices sit at the edge of the grid tried**: the best learning "
         "rate may lie outside it; widen the grid there."] if edges else [])


def _source(result: SeriesResult) -> str:
    if result.loss_source == "test":
        return "Fitted on the **test** loss of the chosen runs (a split that played no part in choosing them)."
    grid = " and the learning rate was chosen on that same split, so the fits are optimistic" if result.choices else ""
    return (f"**Fitted on the validation loss** (not every chosen run has a test loss: no `data.test_percent`)"
            f"{grid}.")


def _notes(confidence: float = 0.95) -> str:
    return (
        "Each variant's final loss L (nats/token) is fitted against its training compute C with L = E + A·C^−α "
        "(Kaplan et al. 2020; Hoffmann et al. 2022) or the pure power law (E = 0, `log-linear`) when the ladder "
        f"cannot pin E down.  Compute multiplier = C_{BASELINE}(L*) / C_variant(L*) at L* = {BASELINE}'s fitted "
        "loss at its largest compute (> 1: the variant needs less compute), under glubench's FLOPs (with the tied "
        "head) and under 6·N·D (non-embedding parameters × tokens); an interval bound beyond 100× either way "
        "reads <0.01 or >100 (unbounded: ladder.json has the number).  Intervals: "
        f"{confidence:.0%}, from the rung-level residuals of both fits, paired rung by rung, with Student-t "
        "degrees of freedom = rungs − parameters (they include how far the rungs miss the curves, not only seed "
        "noise; `glubench.sweep.ladder_stats`).  Δα = the variant's α minus the baseline's (≠ 0: its interval "
        "excludes 0).  Held-out rung error: fit without the largest rung, observed minus predicted loss there.  "
        f"A crossover is searched at most {SEARCH_DECADES:g} decade beyond the runs and reported only when the "
        f"fits cross there and at least {confidence:.0%} of the draws do; `draws crossing` is that share.  "
        "Seed spread: mean over rungs of the std across seeds.")


def markdown(experiment: str, results: list[SeriesResult]) -> str:
    """The ``## Compute ladder`` section: per series the table (:data:`HEADER`), the LR choices, the fitted
    loss, the messages; then the notes."""
    parts = [f"## Compute ladder: compute-equivalent gain over {BASELINE}"]
    for label, convs in by_label(results).items():
        main = convs.get("flops") or next(iter(convs.values()))
        other = {r["variant"]: r for r in convs["6ND"].rows} if "6ND" in convs and main.convention == "flops" else {}
        title = label or ", ".join(str(v) for v in main.setting.values() if v) or experiment
        parts += [f"### {title}", markdown_table(HEADER, [_row(r, other.get(r["variant"])) for r in main.rows]),
                  _source(main) + (f"  L* = {main.target_loss:.4f} nats." if main.target_loss else "")]
        parts += _lr_table(main)
        notes = [f"- {m}" for m in main.messages]
        if other:  # the 6·N·D fits' own news: not their forms, which the table already shows
            notes += [f"- 6·N·D: {m}" for m in convs["6ND"].messages if "fit (" not in m and m not in main.messages]
        parts += ["\n".join(notes)] if notes else []
    parts.append(_notes() + "  Compute conventions: " + "; ".join(f"{k}: {v}" for k, v in CONVENTIONS.items()) + ".")
    return "\n\n".join(parts)
