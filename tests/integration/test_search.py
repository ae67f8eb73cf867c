import json
import os
import subprocess
import sys

import pytest

optuna = pytest.importorskip("optuna", reason="the [search] extra is not installed (.ci/run installs it)")


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
