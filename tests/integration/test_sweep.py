"""Experiment sweeps end to end: one-word multiruns, the automatic report, failures as results."""

import json
import os
import subprocess
import sys

import pytest

from glubench.train.results import RunResult

PNG = b"\x89PNG\r\n\x1a\n"


def _glubench(args, cwd):
    env = {**os.environ, "WANDB_MODE": "offline"}
    return subprocess.run([sys.executable, "-m", "glubench", *args], cwd=cwd, env=env, capture_output=True,
                           text=True, timeout=1800)  # generous: CI machines may be shared


def test_ci_sweep_end_to_end(tmp_path, markdown_table):
    """``glubench experiment=ci_variants``: 3 variants x 2 seeds, then the report, automatically."""
    proc = _glubench(["experiment=ci_variants", "trainer.max_steps=6", "trainer.val_check_interval=6",
                      "optim.warmup_steps=2", f"hydra.sweep.dir={tmp_path}/sweep"], tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "glubench: sweep of 6 jobs" in proc.stdout and "estimated total time" in proc.stdout
    sweep = tmp_path / "sweep"
    # Job folders sort in job order (zero-padded numbers), and each job prints at most 3 lines: Hydra's
    # launch line, what it trains, its result (the rest is in its train.log); no warnings.
    assert sorted(p.parent.name for p in sweep.glob("*/results.json")) == [
        "000_relu_s0", "001_relu_s1", "002_gelu_s0", "003_gelu_s1", "004_swiglu_s0", "005_swiglu_s1"]
    assert proc.stderr == ""
    lines = proc.stdout.splitlines()
    starts = [i for i, line in enumerate(lines) if "[HYDRA] \t#" in line]
    ends = [*starts[1:], lines.index("", starts[-1])]
    assert len(starts) == 6 and all(b - a <= 3 for a, b in zip(starts, ends)), proc.stdout
    assert "glubench: params total=" in (sweep / "000_relu_s0" / "train.log").read_text()
    rows = markdown_table((sweep / "summary.md").read_text())
    assert sorted(r[1] for r in rows) == ["gelu", "relu", "swiglu"]
    assert [r[8] for r in rows] == ["2", "2", "2"]  # n seeds
    losses = [float(r[5].split(" ± ")[0]) for r in rows]
    assert losses == sorted(losses) and rows[0][0] == "★"
    # The table printed at the end is the one in summary.md.
    assert rows[0][5] in proc.stdout
    # Means in the table are the means of the runs' own results.json.
    by_ffn = {}
    for p in sweep.glob("*/results.json"):
        r = RunResult.read(p)
        by_ffn.setdefault(r.ffn, []).append(r.val_loss)
    for r in rows:
        assert float(r[5].split(" ± ")[0]) == pytest.approx(sum(by_ffn[r[1]]) / 2, abs=1e-4)
    import matplotlib.image

    for name in ("val_loss_curves.png", "val_loss_bar.png", "tokens_per_sec.png"):
        data = (sweep / name).read_bytes()
        assert data[:8] == PNG
        img = matplotlib.image.imread(sweep / name)
        assert img.ndim == 3 and img.shape[0] > 100 and img.shape[1] > 100
    import csv

    with open(sweep / "results.csv", newline="") as f:
        assert sorted(r["ffn"] for r in csv.DictReader(f)) == ["gelu", "gelu", "relu", "relu", "swiglu", "swiglu"]


def test_failed_job_is_a_result_and_flips_the_exit_status(tmp_path, markdown_table):
    """One job raises at run time (a validation split with no document in it): the other job still
    runs, the report lists the failure, and the multirun exits 1."""
    proc = _glubench(["--multirun", "experiment=ci", "logger=none", "data.val_percent=5,0.001", "trainer.max_steps=4",
                      "trainer.val_check_interval=4", "optim.warmup_steps=1", f"hydra.sweep.dir={tmp_path}/sweep"],
                     tmp_path)
    assert proc.returncode == 1, proc.stderr[-3000:]
    sweep = tmp_path / "sweep"
    statuses = sorted(RunResult.read(p).status for p in sweep.glob("*/results.json"))
    assert statuses == ["completed", "failed"]
    md = (sweep / "summary.md").read_text()
    assert "## Runs that did not complete" in md and "validation split has 0 tokens" in md
    assert len(markdown_table(md)) == 1
    assert "1 run(s) did not complete" in proc.stdout and "1 job(s) failed" in proc.stderr


def test_bad_job_config_stops_the_sweep_before_any_job(tmp_path):
    proc = _glubench(["--multirun", "experiment=ci", "logger=none", "optim.lr=1e-3,-1",
                      f"hydra.sweep.dir={tmp_path}/sweep"], tmp_path)
    assert proc.returncode == 2
    assert "job #1" in proc.stderr and "optim.lr=-1" in proc.stderr
    assert not list(tmp_path.rglob("results.json"))


@pytest.mark.heavy
def test_ladder_ci_end_to_end(tmp_path):
    """``glubench experiment=ladder_ci``: 48 short jobs (2 variants x 4 rungs x the LR grid x 2 seeds), each
    scored on a test split, then the report with the compute-multiplier table, ladder.json (fitted on the test
    loss of the LR that won on validation) and the five ladder figures."""
    proc = _glubench(["experiment=ladder_ci", f"hydra.sweep.dir={tmp_path}/sweep"], tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    sweep = tmp_path / "sweep"
    results = [RunResult.read(p) for p in sweep.glob("*/results.json")]
    assert len(results) == 48 and all(r.status == "completed" for r in results)
    # one shape rule: 2 layers and head_dim 8 at every rung, only the width changes
    assert sorted({r.config["model"]["d_model"] for r in results}) == [8, 16, 24, 32]
    assert {(r.config["model"]["n_layers"], r.config["model"]["d_model"] // r.config["model"]["n_heads"])
            for r in results} == {(2, 8)}
    rung_lr = {"d8": 4.0e-2, "d16": 2.4e-2, "d24": 1.6e-2, "d32": 1.2e-2}
    for r in results:
        assert r.budget["mode"] == "tokens_per_param" and r.budget["target"] == 2 * r.params_nonembedding
        assert r.tokens_seen <= r.budget["target"] < r.tokens_seen + 8 * 32  # rounded down to whole steps
        lad = r.config["ladder"]
        assert r.config["optim"]["lr"] == pytest.approx(rung_lr[lad["size"]] * lad["lr_scale"])
        assert r.test_tokens > 0 and r.test_loss is not None and r.test_loss != r.val_loss
    assert sorted({r.config["ladder"]["lr_scale"] for r in results}) == [0.5, 1.0, 2.0]
    for r in results:  # the machine's CPUs and load at the start and end of each job
        assert r.machine["cpu_count"] == os.cpu_count()
        assert len(r.machine["load_start"]) == 3 and len(r.machine["load_end"]) == 3
    md = (sweep / "summary.md").read_text()
    assert "## Compute ladder" in md and "| swiglu | log-linear |" in md and "compute multiplier [95% CI]" in md
    for name in ("val_loss_vs_flops", "val_loss_vs_params", "val_loss_vs_seconds", "compute_multiplier",
                 "multiplier_vs_loss"):
        assert (sweep / f"{name}.png").read_bytes()[:8] == PNG and (sweep / f"{name}.svg").stat().st_size > 1000
    # ladder.json beside summary.md: per series and compute convention, every key of issue 23 per variant
    doc = json.loads((sweep / "ladder.json").read_text())
    assert [s["compute"] for s in doc["series"]] == ["flops", "6ND"]
    for s in doc["series"]:
        assert s["block"] == "GPT-2-style block" and s["loss"] == "test"
        swiglu = s["variants"]["swiglu"]
        assert set(swiglu) >= {"multiplier", "multiplier_ci", "alpha", "dalpha", "dalpha_ci", "holdout_error",
                               "loo_multiplier_range", "crossover", "crossover_ci", "crossover_share", "n_rungs",
                               "n_seeds"}
        assert swiglu["n_rungs"] == 4 and swiglu["n_seeds"] == 2 and len(swiglu["multiplier_ci"]) == 2
        # the LR grid is a selection: one winner per rung (2 seeds each), never 6 runs pooled as seeds
        assert sorted(swiglu["lr"]) == ["d16", "d24", "d32", "d8"]
        assert all(c["grid"] == ["×0.5", "×1", "×2"] and c["chosen"] in c["grid"] for c in swiglu["lr"].values())
