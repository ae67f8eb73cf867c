"""Experiment sweeps end to end: one-word multiruns, the automatic report, failures as results."""

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
from hydra import initialize_config_dir
from omegaconf import OmegaConf

from glubench.core.paths import CONF_DIR
from glubench.sweep.callbacks import SweepReport
from glubench.train.results import RunResult

PNG = b"\x89PNG\r\n\x1a\n"


def _glubench(args, cwd):
    env = {**os.environ, "WANDB_MODE": "offline"}
    return subprocess.run([sys.executable, "-m", "glubench", *args], cwd=cwd, env=env, capture_output=True,
                           text=True, timeout=1800)  # generous: CI machines may be shared


@pytest.mark.parametrize("name,variants,seeds", [
    ("glu_variants_cpu", ["relu", "gelu", "swish", "glu", "bilinear", "reglu", "geglu", "swiglu"], [0, 1, 2]),
    ("glu_variants_gpu", ["relu", "gelu", "swish", "glu", "bilinear", "reglu", "geglu", "swiglu"], [0, 1, 2]),
    ("ci_variants", ["relu", "gelu", "swiglu"], [0, 1]),
])
def test_experiments_are_one_word_sweeps(name, variants, seeds, compose_cfg):
    cfg = compose_cfg([f"experiment={name}"], hydra=True)
    assert str(cfg.hydra.mode) == "RunMode.MULTIRUN"
    params = cfg.hydra.sweeper.params
    assert params["model.ffn"].split(",") == variants
    assert [int(s) for s in str(params.seed).split(",")] == seeds
    assert cfg.experiment_name == name


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


def test_callback_reports_and_exits_1_on_failure(tmp_path, capsys):
    for i, (status, loss) in enumerate([("completed", 2.0), ("completed", 2.5), ("failed", None)]):
        d = tmp_path / str(i)
        d.mkdir()
        RunResult(status=status, ffn=["relu", "swiglu", "gelu"][i], seed=0, val_loss=loss,
                  error="ValueError: boom" if loss is None else None,
                  config={"model": {"ffn": ["relu", "swiglu", "gelu"][i]}, "seed": 0}).write(d)
    config = OmegaConf.create({"hydra": {"sweep": {"dir": str(tmp_path)}}})
    with pytest.raises(SystemExit) as e:
        SweepReport(plots=False, wandb="off").on_multirun_end(config)
    assert e.value.code == 1
    out = capsys.readouterr().out
    assert "| ★ | relu |" in out and "ValueError: boom" in out
    assert (tmp_path / "summary.md").exists()


def test_cpu_estimate_counts_tokens_and_validations(monkeypatch, compose_cfg):
    """The estimate is Σ tokens·fpt/rate + n_val·val_tokens·fpt/3/rate + overhead; with the rates
    fixed, check it against the formula by hand."""
    import glubench.sweep.callbacks as sweep
    import glubench.train.validate as validate
    from glubench.nn.flops import flops_per_token

    monkeypatch.setattr(sweep, "_measure_cpu_flops", lambda cfg, mc: (1e9, 2e9))
    monkeypatch.setattr(sweep, "_val_tokens", lambda cfg: 1000)
    cfgs = [compose_cfg(["experiment=ci", f"model.ffn={f}", "trainer.accelerator=cpu"]) for f in ("relu", "swiglu")]
    model_cfgs = [validate.validate_config(c) for c in cfgs]

    def no_second_validation(cfg):
        raise AssertionError("estimate_seconds validated a config again")

    monkeypatch.setattr(validate, "validate_config", no_second_validation)
    seconds, how = SweepReport(job_overhead_s=2.0).estimate_seconds(cfgs, model_cfgs)
    # nano: d=32, L=2, T=32, vocab 256, d_ff 128 (swiglu: hidden 85, 3 matrices).
    attn, head = 4 * 32 * 32, 256 * 32
    expected = 0.0
    for ffn in (2 * 32 * 128, 3 * 32 * 85):
        fpt = flops_per_token(2 * (attn + ffn) + head, 2, 32, 32)
        assert fpt == 6 * (2 * (attn + ffn) + head) + 12 * 2 * 32 * 32
        expected += 20 * 8 * 32 * fpt / 1e9 + 2 * 1000 * fpt / 3 / 2e9 + 2.0
    assert seconds == pytest.approx(expected)
    assert "measured" in how and not math.isnan(seconds)


def test_collects_job_failures_only_in_a_multirun_with_the_callback():
    from glubench.sweep.callbacks import collects_job_failures

    assert collects_job_failures() is False  # no Hydra job here
    cfg = OmegaConf.load(Path(str(CONF_DIR)) / "config.yaml")
    assert cfg.hydra.callbacks.glubench_report._target_ == "glubench.sweep.callbacks.SweepReport"


def test_job_overrides_are_the_jobs_of_the_sweep_written_out_by_hand(compose_cfg):
    """``glubench experiment=ci_variants model.ffn=relu,swiglu optim.lr=1e-3,3e-3``: the experiment sweeps
    model.ffn over relu,gelu,swiglu and seed over 0,1; the command line's model.ffn replaces the experiment's,
    the experiment= choice is in every job, and the keys vary in that order, the first slowest."""
    from omegaconf import open_dict

    from glubench.sweep.callbacks import job_overrides

    cfg = compose_cfg(["experiment=ci_variants"], hydra=True)
    with open_dict(cfg):
        cfg.hydra.overrides.task = ["experiment=ci_variants", "model.ffn=relu,swiglu", "optim.lr=1e-3,3e-3"]
    e = "experiment=ci_variants"
    assert job_overrides(cfg) == [
        ["model.ffn=relu", "seed=0", e, "optim.lr=0.001"],
        ["model.ffn=relu", "seed=0", e, "optim.lr=0.003"],
        ["model.ffn=relu", "seed=1", e, "optim.lr=0.001"],
        ["model.ffn=relu", "seed=1", e, "optim.lr=0.003"],
        ["model.ffn=swiglu", "seed=0", e, "optim.lr=0.001"],
        ["model.ffn=swiglu", "seed=0", e, "optim.lr=0.003"],
        ["model.ffn=swiglu", "seed=1", e, "optim.lr=0.001"],
        ["model.ffn=swiglu", "seed=1", e, "optim.lr=0.003"],
    ]


def test_job_overrides_other_sweepers_and_bad_sweeps(compose_cfg):
    """Another sweeper enumerates its own jobs (None); an interval sweep is one line naming the override."""
    from omegaconf import open_dict

    from glubench.core.errors import ConfigError
    from glubench.sweep.callbacks import job_overrides

    optuna = OmegaConf.create({"hydra": {"sweeper": {"_target_": "hydra_plugins.optuna.OptunaSweeper"},
                                         "overrides": {"task": ["seed=0,1"]}}})
    assert job_overrides(optuna) is None
    cfg = compose_cfg(["experiment=ci"], hydra=True)
    with open_dict(cfg):
        cfg.hydra.overrides.task = ["optim.lr=interval(0.1, 1)"]
    with pytest.raises(ConfigError, match=r"^optim.lr=interval\(0.1, 1\): the basic sweeper runs only choice and "
                                          r"range sweeps, not INTERVAL_SWEEP \(use a search sweeper\)$"):
        job_overrides(cfg)


def test_multirun_start_validates_each_job_once_and_logs_the_estimate(monkeypatch, caplog, compose_cfg):
    """experiment=ci_variants is 3 variants x 2 seeds: six jobs, six validations, none repeated
    for the time estimate; the messages go through logging."""
    import logging

    import glubench.sweep.callbacks as sweep
    import glubench.train.validate as validate

    monkeypatch.setattr(sweep, "_measure_cpu_flops", lambda cfg, mc: (1e9, 2e9))
    monkeypatch.setattr(sweep, "_val_tokens", lambda cfg: 1000)
    seen = []
    real = validate.validate_config

    def counting(cfg):
        seen.append((cfg.model.ffn, cfg.seed))
        return real(cfg)

    monkeypatch.setattr(validate, "validate_config", counting)
    caplog.set_level(logging.INFO, logger="glubench")
    cfg = compose_cfg(["experiment=ci_variants", "trainer.accelerator=cpu", "hydra.sweep.dir=/nowhere/sweep"],
                      hydra=True)
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):  # the callback composes each job
        SweepReport().on_multirun_start(cfg, config_name="config")
    assert sorted(seen) == [(f, s) for f in ("gelu", "relu", "swiglu") for s in (0, 1)]
    messages = [r.getMessage() for r in caplog.records if r.name == "glubench.sweep.callbacks"]
    assert "glubench: sweep of 6 jobs -> /nowhere/sweep" in messages
    assert any(m.startswith("glubench: estimated total time: ~") and "for 6 jobs" in m for m in messages)


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
