"""Searches end to end: an Optuna LR sweep, and the per-variant LR tuning driver (glubench.sweep.tune)."""

import json
import os
import subprocess
import sys

import pytest

optuna = pytest.importorskip("optuna", reason="the [search] extra is not installed (.ci/run installs it)")


@pytest.mark.heavy
def test_optuna_lr_sweep_leaves_a_study_whose_best_is_the_lowest_val_loss(tmp_path):
    sweep = tmp_path / "sweep"
    cmd = [sys.executable, "-m", "glubench", "--multirun", "experiment=ci", "logger=none", "hparams_search=lr_optuna",
           "hydra.sweeper.n_trials=3", "trainer.max_steps=6", "trainer.val_check_interval=6",
           "optim.warmup_steps=2", f"hydra.sweep.dir={sweep}"]
    env = {**os.environ, "WANDB_MODE": "offline"}
    proc = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = [json.loads(p.read_text()) for p in sorted(sweep.glob("trial_*/results.json"))]
    assert len(results) == 3 and all(r["status"] == "completed" for r in results)

    study = optuna.load_study(study_name="lr_ci_relu_s0", storage=f"sqlite:///{sweep}/optuna.db")
    trials = study.get_trials()
    assert [t.state for t in trials] == [optuna.trial.TrialState.COMPLETE] * 3
    assert study.best_value == min(r["val_loss"] for r in results)
    # Each trial trained with the LR Optuna sampled, inside the log-uniform search range.
    assert sorted(t.params["optim.lr"] for t in trials) == sorted(r["config"]["optim"]["lr"] for r in results)
    assert all(1e-4 <= r["config"]["optim"]["lr"] <= 3e-2 for r in results)
    assert len({r["config"]["optim"]["lr"] for r in results}) == 3


@pytest.mark.slow
def test_tuned_variants_driver_end_to_end(tmp_path):
    """2 variants x (2 Optuna trials + 1 seed at the tuned LR + 1 at the shared LR), ci size."""
    cmd = [sys.executable, "-m", "glubench", "experiment=tuned_variants_cpu", "tune.variants=[relu,swiglu]",
           "tune.n_trials=2", "tune.seeds=[0]", "trainer.max_steps=6", "trainer.val_check_interval=6",
           "optim.warmup_steps=2", f"tune.dir={tmp_path / 'run'}"]
    proc = subprocess.run(cmd, cwd=tmp_path, env={**os.environ, "WANDB_MODE": "offline"}, capture_output=True,
                          text=True, timeout=1200)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    record = json.loads((tmp_path / "run" / "tuned.json").read_text())
    assert set(record["variants"]) == {"relu", "swiglu"}

    def by_mean(folder):  # variants by mean val loss over their seeds' results.json, best first
        means = {v: [json.loads(p.read_text())["val_loss"] for p in (folder / v).glob("*/results.json")]
                 for v in ("relu", "swiglu")}
        return sorted(means, key=lambda v: sum(means[v]) / len(means[v]))

    assert record["ranking_tuned"] == by_mean(tmp_path / "run" / "tuned")
    assert record["ranking_shared"] == by_mean(tmp_path / "run" / "shared")
    assert record["ranking_changed"] is (by_mean(tmp_path / "run" / "tuned") != by_mean(tmp_path / "run" / "shared"))
    for v, d in record["variants"].items():
        trials = [json.loads(p.read_text()) for p in (tmp_path / "run" / "search" / v).glob("trial_*/results.json")]
        assert len(trials) == 2 and d["search_best_val_loss"] == min(t["val_loss"] for t in trials)
        best = min(trials, key=lambda t: t["val_loss"])["config"]["optim"]["lr"]
        assert d["tuned_lr"] == pytest.approx(best)
        tuned = json.loads(next((tmp_path / "run" / "tuned" / v).glob("*/results.json")).read_text())
        assert tuned["config"]["optim"]["lr"] == pytest.approx(best)
    md = (tmp_path / "run" / "tuned" / "summary.md").read_text()
    assert "optim.lr (tuned)" in md
