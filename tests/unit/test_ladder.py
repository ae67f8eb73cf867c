"""The ladder of a report (glubench.sweep.ladder): the LR grid as a selection, the test split, ladder.json,
``glubench-report --table``, and the figures' axes; expectations by hand or by numpy.polyfit."""

import csv
import json
import math

import numpy as np
import pytest
from matplotlib.figure import Figure

from glubench.sweep import ladder, ladder_figures
from glubench.sweep.ladder import Point, analyse, select_lr, series_label
from glubench.sweep.report import main

RUNGS = {f"r{i}": c for i, c in enumerate(np.geomspace(1e11, 1e13, 5))}
PENALTY = {"×0.5": 0.10, "×1": 0.0, "×2": 0.05}  # val loss above the law for each LR of the grid
KEYS = ("multiplier", "multiplier_ci", "alpha", "dalpha", "dalpha_ci", "holdout_error", "loo_multiplier_range",
        "crossover", "crossover_ci", "crossover_share", "n_rungs", "n_seeds")


def law(variant, c):
    return 40.0 * (c * (1.3 if variant == "swiglu" else 1.0)) ** -0.1


def grid_points(test=True, best_at_edge="r4"):
    """relu and swiglu × 5 rungs × LR ×0.5/×1/×2 × 3 seeds; ×1 wins everywhere but at ``best_at_edge``,
    where ×2 does; the test loss is the law × 1.05 × (1 + 1e-3·(seed − 1)), the val loss the law + the LR's
    penalty + 1e-3·seed."""
    pts = []
    for v in ("relu", "swiglu"):
        for rung, c in RUNGS.items():
            for lr, scale in (("×0.5", 0.5), ("×1", 1.0), ("×2", 2.0)):
                pen = -0.01 if (rung == best_at_edge and lr == "×2") else PENALTY[lr]
                for s in range(3):
                    pts.append(Point("", v, rung, s, law(v, c) + pen + 1e-3 * s,
                                     law(v, c) * 1.05 * (1 + 1e-3 * (s - 1)) if test else None,
                                     {"flops": c, "6ND": 0.5 * c}, lr, scale))
    return pts


def test_lr_grid_is_a_selection_not_extra_seeds():
    chosen, choices = select_lr(grid_points())
    assert len(chosen) == 2 * 5 * 3  # one LR per variant and rung, its 3 seeds
    assert {(c["variant"], c["rung"]): (c["chosen"], c["edge"]) for c in choices} == {
        (v, r): (("×2", True) if r == "r4" else ("×1", False)) for v in ("relu", "swiglu") for r in RUNGS}
    assert all(c["grid"] == ["×0.5", "×1", "×2"] for c in choices)
    assert choices[0]["means"]["×0.5"] == pytest.approx(law(choices[0]["variant"], RUNGS[choices[0]["rung"]])
                                                       + 0.10 + 1e-3)  # mean over seeds 0, 1, 2


def test_fits_use_the_test_loss_of_the_chosen_runs():
    (flops, sixnd) = analyse(grid_points(), n_draws=200)
    assert (flops.convention, sixnd.convention) == ("flops", "6ND") and flops.loss_source == "test"
    relu, swiglu = flops.rows
    assert relu["n_runs"] == 15 and relu["n_seeds"] == 3 and relu["n_rungs"] == 5
    # the test losses are the 1.3× law times factors shared by both variants: the multiplier is 1.3 exactly,
    # and L* is relu's law × 1.05 at the largest rung (× the seeds' mean factor, here within 1e-6)
    assert swiglu["multiplier"] == pytest.approx(1.3, rel=1e-6)
    assert flops.target_loss == pytest.approx(law("relu", RUNGS["r4"]) * 1.05, rel=1e-5)
    # the chosen runs' val losses (law + 0, or − 0.01 at r4, + 1e-3·seed) would give another multiplier
    val = analyse([Point(p.series, p.variant, p.rung, p.seed, p.val_loss, None, p.compute, p.lr, p.lr_value)
                   for p in grid_points()], n_draws=50)[0]
    assert val.loss_source == "val" and abs(val.rows[1]["multiplier"] - 1.3) > 1e-3
    # 6·N·D = FLOPs / 2 here: the same multiplier (a constant factor cancels)
    assert sixnd.rows[1]["multiplier"] == pytest.approx(flops.rows[1]["multiplier"], rel=1e-9)


def test_fits_fall_back_to_the_val_loss_when_a_chosen_run_has_no_test_loss_and_say_so():
    pts = grid_points()
    pts[1].test_loss = None  # relu r0 ×0.5 seed 1: not chosen, changes nothing
    assert analyse(pts, n_draws=50)[0].loss_source == "test"
    pts[4].test_loss = None  # relu r0 ×1 seed 1: chosen
    res = analyse(pts, n_draws=50)[0]
    assert res.loss_source == "val"
    from glubench.sweep.ladder_tables import markdown

    md = markdown("x", analyse(pts, n_draws=50))
    assert "**Fitted on the validation loss**" in md and "chosen on that same split" in md
    assert "**2 of 10 choices sit at the edge of the grid tried**" in md


def test_ladder_json_has_every_key_with_and_without_grid_and_test_split(tmp_path):
    plain = [p for p in grid_points(test=False) if p.lr == "×1"]  # one LR, no test split
    for pts, source, grid in ((grid_points(), "test", True), (plain, "val", False)):
        path = ladder.write_json(tmp_path / "ladder.json", analyse(pts, n_draws=100))
        doc = json.loads(path.read_text())
        assert [s["compute"] for s in doc["series"]] == ["flops", "6ND"]
        for s in doc["series"]:
            assert s["loss"] == source and set(s) >= {"block", "corpus", "tokenizer", "init", "compute"}
            for v in ("relu", "swiglu"):
                assert set(KEYS) <= set(s["variants"][v])
                assert bool(s["variants"][v]["lr"]) is grid
            sw = s["variants"]["swiglu"]
            assert len(sw["multiplier_ci"]) == 2 and len(sw["dalpha_ci"]) == 2 and len(sw["loo_multiplier_range"]) == 2
            assert sw["crossover"] is None and sw["n_rungs"] == 5 and sw["n_seeds"] == 3
        if grid:
            assert doc["series"][0]["variants"]["relu"]["lr"]["r4"] == {"chosen": "×2", "grid": ["×0.5", "×1", "×2"],
                                                                        "edge": True}
        assert "NaN" not in path.read_text()  # strict JSON


def test_series_label_ignores_rung_and_lr_keys():
    assert series_label({"optim.lr": 1e-3, "ladder.lr_scale": 2.0, "ladder.size": "d32", "model.norm": "rmsnorm",
                         "data.name": "text"}) == "norm=rmsnorm name=text"
    assert ladder._lr({"optim.lr": 0.0123}) == ("0.0123", 0.0123)
    assert ladder._lr({"optim.lr": 0.0123, "ladder.lr_scale": 0.5}) == ("×0.5", 0.5)


def _write_csv(path, rows, header=("variant", "rung", "seed", "compute", "loss")):
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(header)
        w.writerows(rows)
    return path


def test_report_from_a_table_of_runs(tmp_path, capsys, glubench_console_logging):
    rows = [(v, r, s, c, law(v, c) * (1 + 1e-3 * (s - 1)), c * 1.5) for v in ("relu", "swiglu")
            for r, c in RUNGS.items() for s in range(3)]
    table = _write_csv(tmp_path / "runs.csv", rows, ("variant", "rung", "seed", "compute", "loss", "compute_6nd"))
    assert main(["--table", str(table), "--out", str(tmp_path / "out")]) == 0
    assert "## Compute ladder" in capsys.readouterr().out
    doc = json.loads((tmp_path / "out" / "ladder.json").read_text())
    assert [(s["compute"], s["loss"]) for s in doc["series"]] == [("flops", "val"), ("6ND", "val")]
    for s in doc["series"]:
        assert s["variants"]["swiglu"]["multiplier"] == pytest.approx(1.3, rel=1e-3)
    md = (tmp_path / "out" / "summary.md").read_text()
    assert "| swiglu | log-linear |" in md or "| swiglu | E + A C^-alpha |" in md
    for name in ("val_loss_vs_flops", "compute_multiplier", "multiplier_vs_loss"):
        assert (tmp_path / "out" / f"{name}.png").stat().st_size > 1000
    assert not (tmp_path / "out" / "val_loss_vs_params.png").exists()  # a table has no parameter counts


@pytest.mark.parametrize("header, rows, message", [
    (("variant", "rung", "compute", "loss"), [("relu", "r0", 1e11, 3.0)], "runs.csv: missing column 'seed'"),
    (None, [("relu", "r0", 0, 1e11, 3.0), ("relu", "r1", 0, "lots", 3.0)],
     "runs.csv line 3: compute = 'lots' is not a finite number > 0"),
    (None, [("relu", "r0", "first", 1e11, 3.0)], "runs.csv line 2: seed = 'first' is not an integer"),
    (None, [("relu", "r0", 0, 1e11, -1)], "runs.csv line 2: loss = '-1' is not a finite number > 0"),
    (None, [], "runs.csv: no rows under the header"),
    (None, [("gelu", "r0", 0, 1e11, 3.0)], "runs.csv: no runs of the baseline 'relu'"),
])
def test_bad_table_is_one_line_and_exit_2(tmp_path, capsys, glubench_console_logging, header, rows, message):
    table = _write_csv(tmp_path / "runs.csv", rows, *(() if header is None else (header,)))
    assert main(["--table", str(table)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"glubench-report: error: {message}")
    assert not (tmp_path / "ladder.json").exists()


def test_table_and_paths_together_are_refused(tmp_path, capsys, glubench_console_logging):
    assert main([str(tmp_path), "--table", str(tmp_path / "runs.csv")]) == 2
    assert "not both" in capsys.readouterr().err


def test_ladder_figures_are_log_log_name_the_rungs_and_show_points_and_lines(monkeypatch):
    figs = {}
    monkeypatch.setattr(ladder_figures, "save_figures", lambda f, out: figs.update(f) or [])
    ladder_figures.write_plots("x", analyse([p for p in grid_points() if p.lr == "×1"], n_draws=100), None)
    assert set(figs) == {"val_loss_vs_flops", "compute_multiplier", "multiplier_vs_loss"}  # no params or seconds
    ax = figs["val_loss_vs_flops"].axes[0]
    assert (ax.get_xscale(), ax.get_yscale()) == ("log", "log")
    assert {t.get_text() for t in ax.texts} == set(RUNGS)  # every rung named
    handles = ax.get_legend().legend_handles
    assert [h.get_label() for h in handles] == ["relu", "swiglu"]
    assert all(h.get_marker() == "o" and h.get_linestyle() == "-" for h in handles)  # a point and a line
    assert min(t.get_fontsize() for t in ax.get_legend().get_texts()) >= 9
    mult = figs["compute_multiplier"].axes[0]
    assert all(t.get_rotation() == 0 for t in mult.get_yticklabels())
    assert [t.get_text() for t in mult.get_yticklabels()] == ["swiglu"]
    assert math.isclose(mult.get_xlim()[0] < 1.3 < mult.get_xlim()[1], True)


def test_multiplier_axis_stops_just_beyond_a_factor_100_either_way():
    assert ladder_figures.shown_range(1e-12, 1e9) == pytest.approx((0.008, 125.0))  # an unbounded interval
    assert ladder_figures.shown_range(0.62, 1.4) == (0.62, 1.4)  # a bounded one keeps its own limits


@pytest.mark.parametrize("lo, hi, ticks", [
    (0.6, 1.48, [0.6, 0.7, 0.8, 0.9, 1.0, 1.1, 1.2, 1.3, 1.4]),  # near 1: steps of 0.1
    (0.55, 1.9, [0.7, 1.0, 1.5]),  # 0.1-steps would give 12 ticks
    (0.008, 125.0, [0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0, 20.0, 50.0, 100.0]),  # the widest axis
    (0.97, 1.16, [1.0, 1.1]),  # too narrow for 3: the fullest set
])
def test_multiplier_axis_ticks_are_plain_numbers_3_to_10_where_possible(lo, hi, ticks):
    fig = Figure()
    ax = fig.add_subplot()
    ax.set_xscale("log")
    ax.set_xlim(lo, hi)
    ladder_figures._plain_log_ticks(ax.xaxis, lo, hi)
    assert list(ax.get_xticks()) == pytest.approx(ticks)
    assert [t.get_text() for t in ax.get_xticklabels()] == [f"{t:g}" for t in ticks]


def test_multiplier_interval_beyond_a_factor_100_reads_as_unbounded():
    from glubench.sweep.ladder_tables import _multiplier_interval

    assert _multiplier_interval(0.88, (0.0, 108231.7)) == "0.880 [<0.01, >100]"
    assert _multiplier_interval(1.062, (0.9861, 1.154)) == "1.062 [0.986, 1.154]"
    assert _multiplier_interval(1.0, None) == "1.000"
