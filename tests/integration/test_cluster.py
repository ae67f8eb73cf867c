"""Cluster jobs run: a multirun on the local submitit launcher, DDP on 2 CPU processes (the configs and the
launcher rule: tests/unit/test_cluster_parts.py)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from glubench.train.task import run

pytest.importorskip("hydra_plugins.hydra_submitit_launcher",
                    reason='needs the [cluster] extra: pip install -e ".[cluster]"')

# Few steps and a small validation split: every process of these tests imports torch and
# Lightning and validates, so they are kept to the minimum that still checks each claim.
SHORT = ["experiment=ci", "trainer.max_steps=4", "trainer.val_check_interval=4", "optim.warmup_steps=2",
         "throughput.warmup_steps=1", "data.val_percent=0.5"]


def _env():
    return {**os.environ, "WANDB_MODE": "offline", "PYTHONPATH": str(Path(__file__).resolve().parents[2])}


@pytest.mark.heavy
def test_local_launcher_multirun_runs_both_variants(tmp_path):
    cmd = [sys.executable, "-m", "glubench", "--multirun", "hydra/launcher=local", *SHORT, "logger=none",
           "model.ffn=relu,swiglu", f"hydra.sweep.dir={tmp_path}/sweep"]
    proc = subprocess.run(cmd, cwd=tmp_path, env=_env(), capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = [json.loads(p.read_text()) for p in sorted((tmp_path / "sweep").glob("*/results.json"))]
    assert [(r["ffn"], r["status"], r["steps"]) for r in results] == [("relu", "completed", 4),
                                                                     ("swiglu", "completed", 4)]


@pytest.mark.heavy
def test_ddp_on_two_cpu_processes_matches_one_process(tmp_path, monkeypatch, compose_cfg):
    # Global batch 8 either way: 2 processes × 4 windows, the same windows (TrainBatches slices
    # one global batch by rank), gradients averaged by DDP; validation shards the windows and
    # CorpusNLL sums NLL and token counts over ranks.  Only float summation order differs.
    run_dir = tmp_path / "ddp"
    cmd = [sys.executable, "-m", "glubench", *SHORT, "trainer=ddp", "trainer.accelerator=cpu",
           "trainer.precision=32-true", "trainer.devices=2", "data.batch_size=4", f"hydra.run.dir={run_dir}"]
    proc = subprocess.run(cmd, cwd=tmp_path, env=_env(), capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]

    monkeypatch.chdir(tmp_path)
    (tmp_path / "single").mkdir()
    monkeypatch.chdir(tmp_path / "single")
    single = run(compose_cfg([*SHORT, "data.batch_size=8", "logger=none"]))

    assert [p.relative_to(tmp_path) for p in tmp_path.rglob("results.json")] == [Path("ddp/results.json"),
                                                                                  Path("single/results.json")]
    assert len(list((run_dir / "wandb").glob("offline-run-*"))) == 1
    assert not list(tmp_path.glob("outputs")) and not list(tmp_path.glob("multirun"))  # no stray run dirs
    ddp = json.loads((run_dir / "results.json").read_text())
    assert ddp["status"] == "completed" and ddp["config"]["trainer"]["devices"] == 2
    assert ddp["tokens_seen"] == single.tokens_seen == 4 * 8 * 32  # all ranks' tokens
    assert ddp["val_tokens"] == single.val_tokens
    assert abs(ddp["val_ppl"] - single.val_ppl) <= 1e-4
