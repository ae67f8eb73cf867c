"""glubench-report on synthetic results.json files whose statistics are worked out by hand below."""

import csv
import json
import math
from pathlib import Path

import pytest

from glubench.sweep import ladder_figures
from glubench.sweep.report import main, report_sweep, welch
from glubench.train.results import RunResult

FFN_PARAMS = {"relu": 1000, "swiglu": 996, "bilinear": 996, "gelu": 1000}


def _write_run(folder, ffn, seed, loss, status="completed", lr=1e-3, error=None):
    cfg = {"model": {"ffn": ffn, "d_model": 32}, "seed": seed, "optim": {"lr": lr},
           "experiment_name": "synthetic", "logger": {"wandb": False}}
    done = status == "completed"
    RunResult(
        status=status, ffn=ffn, seed=seed, params_ffn=FFN_PARAMS.get(ffn), ffn_hidden=16,
        val_loss=loss if done else None, val_ppl=math.exp(loss) if done else None,
        val_bpb=loss / math.log(2) if done else None, train_tokens_per_sec=1000.0 + 10 * seed if done else None,
        history=[{"step": 10, "tokens_seen": 100, "val_loss": loss + 1}, {"step": 20, "tokens_seen": 200,
                                                                         "val_loss": loss}] if done else [],
        error=error, config=cfg,
    ).write(folder)


@pytest.fixture
def sweep(tmp_path, sweep_losses):
    i = 0
    for ffn, losses in sweep_losses.items():
        for seed, loss in enumerate(losses):
            d = tmp_path / f"{i}_{ffn}_s{seed}"
            d.mkdir()
            _write_run(d, ffn, seed, loss)
            i += 1
    return tmp_path


def _t4_two_sided_p(t):
    """Two-sided p-value of Student's t with 4 degrees of freedom, from its closed-form CDF
    F(t) = 1/2 + (3/8) x (1 - t^2 / (12 u)) with u = 1 + t^2/4 and x = t / sqrt(u)."""
    u = 1 + t * t / 4
    cdf = 0.5 + 3 / 8 * (abs(t) / math.sqrt(u)) * (1 - t * t / (12 * u))
    return 2 * (1 - cdf)


def test_welch_by_hand(sweep_losses, t_975_df4):
    # Equal variances: se = sqrt(0.04/3 + 0.04/3), df = 4.
    w = welch(sweep_losses["bilinear"], sweep_losses["relu"])
    se = math.sqrt(0.04 / 3 * 2)
    assert w.diff == pytest.approx(-0.2)
    assert w.df == pytest.approx(4.0)
    assert (w.low, w.high) == pytest.approx((-0.2 - t_975_df4 * se, -0.2 + t_975_df4 * se))
    assert w.p == pytest.approx(_t4_two_sided_p(-0.2 / se))  # 0.2879
    assert w.significant is False  # [-0.653, 0.253] contains 0
    # Unequal variances: df = (0.05/3)^2 / ((0.04/3)^2/2 + (0.01/3)^2/2) = 0.005/0.0017.
    w = welch(sweep_losses["gelu"], sweep_losses["relu"])
    assert w.diff == pytest.approx(0.8)
    assert w.df == pytest.approx(0.005 / 0.0017)
    from scipy import stats

    # Reference from the t distribution itself (not ttest_ind, which the code uses): t = diff / se.
    se = math.sqrt(0.05 / 3)
    df = 0.005 / 0.0017
    assert w.p == pytest.approx(2 * stats.t.sf(0.8 / se, df))
    half = stats.t.ppf(0.975, df) * se
    assert (w.low, w.high) == pytest.approx((0.8 - half, 0.8 + half))
    assert w.significant is True
    # Another confidence level: the t quantile changes, the centre does not (t_{0.95, 4} = 2.1318 from a table).
    w = welch(sweep_losses["bilinear"], sweep_losses["relu"], confidence=0.90)
    assert (w.low, w.high) == pytest.approx((-0.2 - 2.131846786 * math.sqrt(0.08 / 3),
                                             -0.2 + 2.131846786 * math.sqrt(0.08 / 3)))
    # n < 2: no interval, and the note says why.
    w = welch([1.0], [2.0, 2.1])
    assert w.diff == pytest.approx(-1.05) and w.low is None and w.significant is None and "n=1" in w.note
    # No variance on either side: no interval either.
    w = welch([1.0, 1.0], [2.0, 2.0])
    assert w.diff == pytest.approx(-1.0) and w.low is None and w.p is None
    assert w.note == "n/a: zero variance on both sides"
    assert welch([0.1] * 3, [0.7] * 2).note == "n/a: zero variance on both sides"  # 0.1 is inexact in binary
    # Zero variance on one side only: se and df come from the other side (df = n - 1 = 1).
    w = welch([1.0, 1.0], [2.0, 2.1])
    half = 12.706204736 * math.sqrt(0.005 / 2)  # t_{0.975, 1} from a table
    assert w.df == pytest.approx(1.0) and (w.low, w.high) == pytest.approx((-1.05 - half, -1.05 + half))
    with pytest.raises(ValueError, match="both samples need values"):
        welch([], [1.0])


def test_report_table_statistics_and_order(sweep, markdown_table, sweep_losses, t_975_df4):
    report = report_sweep([sweep], wandb_choice="off")
    assert report.exit_code == 0 and report.keys == ["model.ffn"]
    md = (sweep / "summary.md").read_text()
    rows = markdown_table(md)
    # Sorted by mean loss: swiglu (2.0) and bilinear (2.0) tie and are ordered by name, then relu, gelu.
    assert [r[1] for r in rows] == ["bilinear", "swiglu", "relu", "gelu"]
    assert rows[0][0] == "★" and all(r[0] == "" for r in rows[1:])
    by = {r[1]: r for r in rows}
    header = ["", "variant", "FFN hidden", "FFN params", "params vs baseline", "val loss (mean ± std)", "val ppl",
              "val bpb", "n seeds", "tokens/s", "MFU"]
    col = {h: i for i, h in enumerate(header)}
    assert by["relu"][col["val loss (mean ± std)"]] == "2.2000 ± 0.2000"
    assert by["swiglu"][col["val loss (mean ± std)"]] == "2.0000 ± 0.1000"
    assert by["gelu"][col["val loss (mean ± std)"]] == "3.0000 ± 0.1000"
    assert by["relu"][col["val ppl"]] == f"{math.exp(2.2):.3f}"
    assert by["gelu"][col["val bpb"]] == f"{3.0 / math.log(2):.4f}"
    assert by["swiglu"][col["params vs baseline"]] == "-0.40%"  # (996 - 1000) / 1000
    assert by["relu"][col["params vs baseline"]] == "+0.00%"
    assert all(r[col["n seeds"]] == "3" for r in rows)
    assert by["relu"][col["tokens/s"]] == "1,010"  # mean of 1000, 1010, 1020
    assert by["relu"][col["MFU"]] == "—"
    # Comparison table: bilinear's interval by hand (df = 4).
    cmp = {r[0]: r for r in markdown_table(md, "| variant")}
    assert set(cmp) == {"swiglu", "bilinear", "gelu"}
    half = t_975_df4 * math.sqrt(0.04 / 3 * 2)
    assert cmp["bilinear"][1] == "-0.2000"
    assert cmp["bilinear"][2] == f"[{-0.2 - half:+.4f}, {-0.2 + half:+.4f}]"
    assert cmp["bilinear"][4] == "no" and cmp["gelu"][4] == "yes: worse"
    # One CSV row per run, with the flattened config.
    with open(sweep / "results.csv") as f:
        csv_rows = list(csv.DictReader(f))
    assert len(csv_rows) == 12
    assert sorted(float(r["val_loss"]) for r in csv_rows if r["ffn"] == "relu") == sweep_losses["relu"]
    assert {r["config.model.ffn"] for r in csv_rows} == set(sweep_losses)
    for name in ("val_loss_curves.png", "val_loss_bar.png", "tokens_per_sec.png"):
        assert (sweep / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def _hydra_job(folder, ffn, seed, log=None):
    """A Hydra job folder with its config and no results.json; ``log``: the job log's text (None: no log)."""
    (folder / ".hydra").mkdir(parents=True)
    (folder / ".hydra" / "config.yaml").write_text(f"model:\n  ffn: {ffn}\nseed: {seed}\n")
    if log is not None:
        (folder / "glubench.log").write_text(log)


def test_failed_and_missing_runs_are_listed_and_flip_the_exit_status(sweep, capsys, markdown_table,
                                                                      glubench_console_logging):
    d = sweep / "99_swiglu_s3"
    d.mkdir()
    _write_run(d, "swiglu", 3, 0.0, status="failed", error="RuntimeError: boom")
    # Killed: the job began (its log has lines) but never wrote results.json.
    _hydra_job(sweep / "100_gelu_s3", "gelu", 3, log="[2024-01-01 00:00:00][glubench][INFO] - step 10\n")
    assert main([str(sweep), "--wandb", "off", "--no-plots"]) == 1
    out = capsys.readouterr().out
    assert "2 run(s) did not complete" in out and "RuntimeError: boom" in out
    assert f"glubench-report: wrote results.csv, summary.md and plots to {sweep}" in out
    md = (sweep / "summary.md").read_text()
    problems = markdown_table(md, "| run")
    assert sorted((r[1], r[2], r[3]) for r in problems) == [("gelu", "3", "missing"), ("swiglu", "3", "failed")]
    assert "never started" not in md
    # The failed run does not change the statistics of the completed ones.
    rows = {r[1]: r for r in markdown_table(md)}
    assert rows["swiglu"][5] == "2.0000 ± 0.1000" and rows["swiglu"][8] == "3"
    with open(sweep / "results.csv") as f:
        assert sum(1 for r in csv.DictReader(f) if r["status"] == "failed") == 1


def test_never_started_jobs_are_listed_but_are_not_failures(sweep, capsys, markdown_table,
                                                            glubench_console_logging):
    # Two rejected configs: a folder with no job log at all, and one whose log Hydra opened but
    # the job never wrote to.
    _hydra_job(sweep / "101_gelu_s4", "gelu", 4)
    _hydra_job(sweep / "102_relu_s4", "relu", 4, log="")
    assert main([str(sweep), "--wandb", "off", "--no-plots"]) == 0
    out = capsys.readouterr().out
    assert "2 run(s) never started (not failures)" in out and "did not complete:" not in out
    md = (sweep / "summary.md").read_text()
    assert "## Runs that did not complete" not in md and "## Runs that never started" in md
    assert "14 runs under" in md and "12 completed, 0 did not complete, 2 never started" in md
    rows = markdown_table(md, "| run")
    assert sorted((Path(r[0]).name, r[1], r[2], r[3]) for r in rows) == [
        ("101_gelu_s4", "gelu", "4", "not_started"), ("102_relu_s4", "relu", "4", "not_started")]
    assert all("never started" in r[4] for r in rows)
    # The completed runs' table is unchanged: 4 variants, 3 seeds each.
    assert sorted((r[1], r[8]) for r in markdown_table(md)) == [
        ("bilinear", "3"), ("gelu", "3"), ("relu", "3"), ("swiglu", "3")]
    with open(sweep / "results.csv") as f:
        assert sorted(r["status"] for r in csv.DictReader(f) if r["status"] != "completed") == ["not_started"] * 2
    # A killed job beside them still fails the report.
    _hydra_job(sweep / "103_gelu_s5", "gelu", 5, log="started\n")
    assert main([str(sweep), "--wandb", "off", "--no-plots"]) == 1
    out = capsys.readouterr().out
    assert "1 run(s) did not complete" in out and "2 run(s) never started" in out


def test_groups_by_every_swept_key_but_seed(tmp_path):
    for i, (ffn, lr, seed, loss) in enumerate([("relu", 1e-3, 0, 2.0), ("relu", 1e-3, 1, 2.2),
                                               ("relu", 3e-3, 0, 1.9), ("swiglu", 3e-3, 0, 1.7),
                                               ("swiglu", 3e-3, 1, 1.8)]):
        d = tmp_path / str(i)
        d.mkdir()
        _write_run(d, ffn, seed, loss, lr=lr)
    report = report_sweep([tmp_path], wandb_choice="off", plots=False)
    assert report.keys == ["model.ffn", "optim.lr"]
    assert [(g.ffn, g.values["optim.lr"], g.n) for g in report.groups] == [
        ("swiglu", 3e-3, 2), ("relu", 3e-3, 1), ("relu", 1e-3, 2)]
    swiglu = report.groups[0]
    assert swiglu.vs_baseline.diff == pytest.approx(1.75 - 1.9)  # vs relu at the same lr
    assert swiglu.vs_baseline.significant is None  # relu at lr=3e-3 has one seed
    assert "n/a: needs >= 2 seeds" in (tmp_path / "summary.md").read_text()


def test_bad_paths_exit_2(tmp_path, capsys, glubench_console_logging):
    assert main([str(tmp_path / "nope")]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert main([str(tmp_path)]) == 2
    assert "no results.json" in capsys.readouterr().err


def test_wandb_summary_run_offline(sweep, monkeypatch):
    from glubench.sweep.report import build_report, log_wandb, write_plots

    monkeypatch.setenv("WANDB_MODE", "offline")
    report = build_report([sweep])
    plots = write_plots(report, sweep)
    folder = log_wandb(report, sweep, plots)
    assert folder.name.startswith("offline-run-") and any(folder.glob("*.wandb"))
    media = list(folder.rglob("*.png"))
    assert len(media) == 3
    tables = [json.loads(p.read_text()) for p in folder.rglob("*.table.json")]
    summary = next(t for t in tables if "val ppl" in t["columns"])
    assert [row[1] for row in summary["data"]] == ["bilinear", "swiglu", "relu", "gelu"]


def test_wandb_summary_run_lists_the_runs_that_did_not_complete(sweep, monkeypatch):
    """A failed run is a row of the W&B ``not_completed`` table (its columns first, then its data)."""
    from glubench.sweep.report import build_report, log_wandb

    d = sweep / "99_swiglu_s3"
    d.mkdir()
    _write_run(d, "swiglu", 3, 0.0, status="failed", error="RuntimeError: boom")
    monkeypatch.setenv("WANDB_MODE", "offline")
    folder = log_wandb(build_report([sweep]), sweep, [])
    tables = [json.loads(p.read_text()) for p in folder.rglob("*.table.json")]
    problems = [t for t in tables if t["columns"] == ["run", "variant", "seed", "status", "error"]]
    assert [t["data"] for t in problems] == [[[str(d), "swiglu", "3", "failed", "RuntimeError: boom"]]]


def test_repeated_reports_of_a_sweep_reuse_one_wandb_run_and_two_sweeps_get_two(sweep, tmp_path_factory,
                                                                                 monkeypatch):
    """Two reports of the same folder: two offline run folders ``offline-run-<time>-<id>`` (W&B adds
    ``-1`` when both start in the same second), one run id, and that id is ``summary-`` + the first 12 hex
    digits of sha256("glubench" NUL "synthetic" NUL <the sweep folder, resolved> NUL).  Another sweep of the
    same project and group gets another id (issue 24: two sweeps must not write into one summary run)."""
    import hashlib
    import re
    import shutil

    monkeypatch.setenv("WANDB_MODE", "offline")
    report_sweep([sweep], plots=False, wandb_choice="on")
    report_sweep([sweep], plots=False, wandb_choice="on")
    runs = sorted((sweep / "wandb").glob("offline-run-*"))
    assert len(runs) == 2
    # project "glubench" (no logger.project), group = experiment_name "synthetic" (no logger.group)
    key = b"glubench\0synthetic\0" + str(sweep.resolve()).encode() + b"\0"
    expected = "summary-" + hashlib.sha256(key).hexdigest()[:12]
    ids = {re.fullmatch(r"offline-run-\d{8}_\d{6}-(summary-[0-9a-f]{12})(-\d+)?", p.name).group(1) for p in runs}
    assert ids == {expected}
    # The run's own record inside each folder carries the same id.
    assert sorted(f.name for r in runs for f in r.glob("*.wandb")) == [f"run-{expected}.wandb"] * 2
    # A second sweep of the same group (a copy of the runs in another folder): a different summary run.
    other = tmp_path_factory.mktemp("second_sweep")
    for d in sweep.iterdir():
        if (d / "results.json").exists():
            shutil.copytree(d, other / d.name)
    report_sweep([other], plots=False, wandb_choice="on")
    (second,) = (other / "wandb").glob("offline-run-*")
    assert second.name.split("-", 3)[-1].startswith("summary-") and expected not in second.name
    assert re.fullmatch(r"offline-run-\d{8}_\d{6}-summary-[0-9a-f]{12}", second.name)


def test_console_script_runs(monkeypatch, capsys, glubench_console_logging):
    """pyproject's glubench-report entry point, wherever it points, loads and answers --help."""
    from importlib.metadata import EntryPoint

    import tomllib

    scripts = tomllib.loads((Path(__file__).resolve().parents[2] / "pyproject.toml").read_text())["project"]["scripts"]
    ep = EntryPoint("glubench-report", scripts["glubench-report"], "console_scripts")
    monkeypatch.setattr("sys.argv", ["glubench-report", "--help"])
    with pytest.raises(SystemExit) as e:
        ep.load()()
    assert e.value.code == 0
    assert "usage: glubench-report" in capsys.readouterr().out


def _ladder_run(folder, ffn, norm, d_model, seed, loss, flops):
    cfg = {"model": {"ffn": ffn, "d_model": d_model, "norm": norm}, "seed": seed, "ladder": {"size": f"d{d_model}"},
           "experiment_name": "ladder", "logger": {"wandb": False}}
    RunResult(status="completed", ffn=ffn, seed=seed, val_loss=loss, params_nonembedding=12 * d_model ** 2,
              budget={"flops": flops, "tokens": flops / 6, "seconds": flops / 1e9}, config=cfg).write(folder)


def test_ladder_fits_each_block_apart_and_single_size_sweeps_are_unchanged(tmp_path_factory, sweep):
    """Two blocks x two variants x 4 sizes x 2 seeds from known laws: one fit per block, never mixed;
    the multiplier under both compute conventions in ladder.json; a single-size sweep's summary gets no
    ladder section."""
    from glubench.sweep import ladder

    # L = A·C^-α with α = 0.1: swiglu needs 1/1.25 of relu's compute in the rmsnorm block, 1/1.1 in the other
    tmp_path = tmp_path_factory.mktemp("ladder_sweep")
    gain = {"layernorm": 1.1, "rmsnorm": 1.25}
    for norm, m in gain.items():
        for ffn in ("relu", "swiglu"):
            for d in (16, 24, 32, 48):
                for seed in (0, 1):
                    c = 1e9 * (d / 16) ** 3
                    loss = 40 * (c * (m if ffn == "swiglu" else 1.0)) ** -0.1 * (1 + 1e-4 * (seed - 0.5))
                    folder = tmp_path / "ladder" / f"{norm}_{ffn}_{d}_{seed}"
                    folder.mkdir(parents=True)
                    _ladder_run(folder, ffn, norm, d, seed, loss, c)
    report = report_sweep([tmp_path / "ladder"], plots=True, wandb_choice="off", n_draws=400)
    assert ladder.is_ladder(ladder.points_from_report(report))
    by_label = {(r.label, r.convention): {row["variant"]: row for row in r.rows} for r in report.ladder}
    assert set(by_label) == {(f"norm={n}", c) for n in gain for c in ("flops", "6ND")}  # one series per block
    for norm, m in gain.items():
        swiglu = by_label[(f"norm={norm}", "flops")]["swiglu"]
        assert swiglu["multiplier"] == pytest.approx(m, rel=0.01)
        assert swiglu["n_runs"] == 8 and swiglu["n_rungs"] == 4 and swiglu["n_seeds"] == 2  # this block only
        # 6·N·D = 6 · 12d² · C/6 ∝ C^(5/3) here, so L ∝ (6ND)^-0.06 and that multiplier is m^(0.1/0.06)
        assert by_label[(f"norm={norm}", "6ND")]["swiglu"]["multiplier"] == pytest.approx(m ** (5 / 3), rel=0.01)
    md = (tmp_path / "ladder" / "summary.md").read_text()
    assert "## Compute ladder" in md and "### norm=rmsnorm" in md
    assert "**Fitted on the validation loss**" in md  # no test split in these runs
    doc = json.loads((tmp_path / "ladder" / "ladder.json").read_text())
    assert [(s["label"], s["compute"], s["block"]) for s in doc["series"]] == [
        ("norm=layernorm", "flops", "GPT-2-style block"), ("norm=layernorm", "6ND", "GPT-2-style block"),
        ("norm=rmsnorm", "flops", "rmsnorm + learned block"), ("norm=rmsnorm", "6ND", "rmsnorm + learned block")]
    assert doc["series"][2]["variants"]["swiglu"]["multiplier"] == pytest.approx(1.25, rel=0.01)
    for name in ladder_figures.PLOTS:
        for ext in ("png", "svg"):
            assert (tmp_path / "ladder" / f"{name}.{ext}").stat().st_size > 1000, (name, ext)
    single = report_sweep([sweep], plots=False, wandb_choice="off")
    assert not ladder.is_ladder(ladder.points_from_report(single)) and single.ladder == []
    assert "Compute ladder" not in (sweep / "summary.md").read_text() and not (sweep / "ladder.json").exists()


def test_busy_machine_and_spread_throughput_are_marked_not_ranked(tmp_path, markdown_table):
    """Load 5.0 on 2 CPUs at the start of one relu seed (> 1.5 per CPU), and swiglu seeds 1,000 vs 1,600
    tokens/s (1.6× > 1.5×): both groups' tokens/s are marked, the others' are not (issue 24)."""
    from glubench.sweep.stats import busy_machine, throughput_problem

    idle, busy = {"cpu_count": 2, "load_start": [1.0, 1, 1], "load_end": [2.0, 2, 2]}, \
        {"cpu_count": 2, "load_start": [5.0, 3, 1], "load_end": [2.0, 2, 2]}
    speeds = {"relu": [1000.0, 1010.0], "swiglu": [1000.0, 1600.0], "gelu": [1000.0, 1300.0]}
    for i, (ffn, tps) in enumerate(speeds.items()):
        for seed, x in enumerate(tps):
            d = tmp_path / f"{i}_{ffn}_s{seed}"
            d.mkdir()
            RunResult(status="completed", ffn=ffn, seed=seed, val_loss=2.0 + i / 10 + seed / 100,
                      train_tokens_per_sec=x, config={"model": {"ffn": ffn}, "seed": seed},
                      machine=busy if (ffn, seed) == ("relu", 1) else idle).write(d)
    assert busy_machine(RunResult("completed", "relu", 0, machine=busy)) == "load 5.0 on 2 CPUs"
    assert busy_machine(RunResult("completed", "relu", 0, machine=idle)) is None
    assert busy_machine(RunResult("completed", "relu", 0)) is None  # an older results.json: nothing recorded
    assert throughput_problem([], [1000.0, 1600.0]) == "seeds differ 1.6× in tokens/s"
    assert throughput_problem([], [1000.0, 1300.0]) is None
    report_sweep([tmp_path], wandb_choice="off", plots=False)
    md = (tmp_path / "summary.md").read_text()
    tps = {r[1]: r[9] for r in markdown_table(md)}  # the tokens/s column
    assert tps == {"relu": "1,005 ⚠", "swiglu": "1,300 ⚠", "gelu": "1,150"}
    assert ("⚠ tokens/s not comparable (not a property of the FFN, do not rank by it): relu: busy machine (load 5.0 "
            "on 2 CPUs); swiglu: seeds differ 1.6× in tokens/s.") in md


def test_val_loss_figure_is_a_dot_plot_with_every_seed_and_the_t_interval(sweep, monkeypatch, sweep_losses):
    from glubench.sweep import figures
    from glubench.sweep.report import build_report

    figs = {}
    monkeypatch.setattr(figures, "save_figures", lambda f, out: figs.update(f) or [])
    figures.write_plots(build_report([sweep]), sweep)
    ax = figs["val_loss_bar"].axes[0]
    points = sorted(x for c in ax.collections for x, _ in c.get_offsets() if len(c.get_offsets()) == 3)
    assert points == pytest.approx(sorted(x for v in sweep_losses.values() for x in v))  # 12 seeds, 4 variants
    assert all(t.get_rotation() == 0 for t in ax.get_yticklabels())
    assert not any("axis starts" in t.get_text() for t in (*ax.texts, ax.yaxis.label, ax.xaxis.label))
    # relu: mean 2.2, sd 0.2, n 3: the interval 2.2 ± t(0.975, 2)·0.2/√3 (t = 4.302653 from a table)
    half = 4.302652730 * 0.2 / math.sqrt(3)
    from matplotlib.collections import LineCollection

    bars = [seg for c in ax.collections if isinstance(c, LineCollection) for seg in c.get_segments()]
    assert any(seg[0][0] == pytest.approx(2.2 - half) and seg[1][0] == pytest.approx(2.2 + half) for seg in bars)


def test_a_ladder_sweep_with_an_lr_grid_and_a_test_split_is_one_series_fitted_on_the_chosen_test_losses(tmp_path):
    """results.json files of relu and swiglu x 4 rungs x ladder.lr_scale 0.5/1/2 x 2 seeds: optim.lr and
    ladder.lr_scale differ between runs but split neither the series nor the fits; ×1 wins on validation
    everywhere, and the fits use its test losses (relu's law and swiglu's 1.25× law, × 1.1)."""
    rungs = {"d8": 1e9, "d16": 8e9, "d24": 2.7e10, "d32": 6.4e10}
    for ffn, m in (("relu", 1.0), ("swiglu", 1.25)):
        for rung, c in rungs.items():
            for scale, pen in ((0.5, 0.2), (1.0, 0.0), (2.0, 0.1)):
                for seed in (0, 1):
                    law = 40 * (c * m) ** -0.1
                    cfg = {"model": {"ffn": ffn}, "seed": seed, "ladder": {"size": rung, "lr_scale": scale},
                           "optim": {"lr": 0.01 * scale * 8 / int(rung[1:])}, "experiment_name": "ladder_ci"}
                    d = tmp_path / f"{ffn}_{rung}_{scale}_{seed}"
                    d.mkdir()
                    RunResult(status="completed", ffn=ffn, seed=seed, val_loss=law + pen + 1e-3 * seed,
                              test_loss=law * 1.1 * (1 + 1e-3 * (seed - 0.5)), params_nonembedding=int(c / 1e5),
                              budget={"flops": c, "tokens": c / 6e5}, config=cfg).write(d)
    report = report_sweep([tmp_path], plots=False, wandb_choice="off", n_draws=200)
    assert [(r.label, r.convention, r.loss_source) for r in report.ladder] == [("", "flops", "test"),
                                                                                ("", "6ND", "test")]
    relu, swiglu = report.ladder[0].rows
    assert (swiglu["n_runs"], swiglu["n_rungs"], swiglu["n_seeds"]) == (8, 4, 2)
    assert swiglu["multiplier"] == pytest.approx(1.25, rel=1e-4)
    assert report.ladder[0].target_loss == pytest.approx(40 * 6.4e10**-0.1 * 1.1, rel=1e-5)
    assert {(c["variant"], c["rung"], c["chosen"], c["edge"]) for c in report.ladder[0].choices} == {
        (v, r, "×1", False) for v in ("relu", "swiglu") for r in rungs}
    md = (tmp_path / "summary.md").read_text()
    assert "Fitted on the **test** loss of the chosen runs" in md and "| relu | ×1 | ×1 | ×1 | ×1 |" in md
