"""Preemption and resume: a run killed and resumed equals an uninterrupted one."""

import csv
import json
import random

import numpy as np
import pytest
import torch

import glubench.train.callbacks as callbacks
import glubench.train.resume as resume
from glubench.data.windows import TrainBatches


class Killed(Exception):
    pass


def test_kill_and_resume_equals_uninterrupted(tmp_path, monkeypatch, ci_run, wandb_history):
    # 8 steps, validation and checkpoints every 4, logs every 2; the kill comes in step 5,
    # after the step-4 checkpoint and before anything else is logged.
    common = ["logger=both", "trainer.max_steps=8", "trainer.val_check_interval=4", "trainer.log_every_n_steps=2",
              "optim.warmup_steps=2", "throughput.warmup_steps=1", "trainer.deterministic=true"]
    full = ci_run(tmp_path / "full", *common)

    class KillAtStep5(callbacks.ResumeState):
        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            if trainer.global_step == 5:
                raise Killed()

    monkeypatch.setattr(callbacks, "ResumeState", KillAtStep5)  # conf/callbacks builds it by its path
    with pytest.raises(Killed):
        ci_run(tmp_path / "resumed", *common)
    monkeypatch.setattr(callbacks, "ResumeState", KillAtStep5.__mro__[1])
    ckpts = tmp_path / "resumed" / "checkpoints"
    assert resume.checkpoint_step(ckpts / "last.ckpt") == 4
    assert json.loads((tmp_path / "resumed" / "results.json").read_text())["status"] == "failed"

    resumed = ci_run(tmp_path / "resumed", *common)
    assert resumed.status == "completed" and resumed.steps == 8
    assert abs(resumed.val_loss - full.val_loss) <= 1e-6
    assert resumed.tokens_seen == full.tokens_seen == 8 * 8 * 32  # steps × batch × seq_len
    assert resumed.history == full.history and [h["step"] for h in full.history] == [4, 8]

    def csv_rows(d):
        return [{k: v for k, v in r.items() if v} for r in csv.DictReader(open(d / "csv" / "metrics.csv"))]

    def loss_rows(rows):
        return [(int(r["step"]), r.get("train/loss"), r.get("val/loss")) for r in rows
                if "train/loss" in r or "val/loss" in r]

    assert loss_rows(csv_rows(tmp_path / "resumed")) == loss_rows(csv_rows(tmp_path / "full"))

    # W&B: both attempts log to the same run id; together they hold each step exactly once.
    runs = sorted((tmp_path / "resumed" / "wandb").glob("offline-run-*"))
    # (the id from the run-<id>.wandb file: W&B suffixes the folder name when two runs start in one second)
    assert len(runs) == 2 and len({next(r.glob("run-*.wandb")).stem.removeprefix("run-") for r in runs}) == 1
    (full_run,) = (tmp_path / "full" / "wandb").glob("offline-run-*")

    def loss_steps(rows):
        return [(r["trainer/global_step"], r.get("train/loss"), r.get("val/loss")) for r in rows
                if "train/loss" in r or "val/loss" in r]

    both = loss_steps(wandb_history(runs[0]) + wandb_history(runs[1]))
    assert both == loss_steps(wandb_history(full_run))
    # logged every 2 steps, labelled with the optimizer steps done, none twice
    assert [s for s, tl, _ in both if tl is not None] == [2, 4, 6, 8]
    assert [s for s, _, vl in both if vl is not None] == [4, 8]  # as results.json's history


def test_keep_csv_history_keeps_rows_up_to_the_resume_step(tmp_path):
    from lightning.pytorch.loggers import CSVLogger

    path = tmp_path / "csv" / "metrics.csv"
    path.parent.mkdir(parents=True)
    # Rows carry the optimizer steps done; LearningRateMonitor labels the LR of step k+1 with k and
    # logs it when step k+1 starts, i.e. after checkpoint k.
    path.write_text("lr-AdamW,step,train/loss,val/loss\n0.1,4,,\n,5,2.5,\n,10,2.0,\n,10,,2.1\n0.2,10,,\n"
                    ",15,1.5,\n")
    logger = CSVLogger(save_dir=str(tmp_path), name="csv", version="")
    # Resuming from the step-10 checkpoint keeps rows 4, 5, 10 (loss and val) and drops the LR row
    # at 10 and the loss at 15: the resumed run logs both again.
    assert resume.keep_csv_history(logger, resume_step=10) == 4
    logger.log_metrics({"lr-AdamW": 0.2}, step=10)
    logger.log_metrics({"train/loss": 1.4}, step=15)
    logger.save()
    rows = list(csv.DictReader(open(path)))
    assert [(r["step"], r["lr-AdamW"], r["train/loss"], r["val/loss"]) for r in rows] == [
        ("4", "0.1", "", ""), ("5", "", "2.5", ""), ("10", "", "2.0", ""), ("10", "", "", "2.1"),
        ("10", "0.2", "", ""), ("15", "", "1.4", "")]


def test_find_checkpoint(tmp_path):
    assert resume.find_checkpoint(None, tmp_path) is None  # a first start finds nothing
    last = resume.last_checkpoint(tmp_path)
    last.parent.mkdir()
    last.write_bytes(b"x")
    for value in (None, "auto", "last"):
        assert resume.find_checkpoint(value, tmp_path) == last
    assert resume.find_checkpoint("never", tmp_path) is None
    assert resume.find_checkpoint(str(last), tmp_path / "elsewhere") == last
    with pytest.raises(FileNotFoundError, match="ckpt_path='nope.ckpt'"):
        resume.find_checkpoint("nope.ckpt", tmp_path)


def test_rng_states_round_trip_through_weights_only_load(tmp_path):
    torch.manual_seed(1), np.random.seed(2), random.seed(3)
    torch.randn(3), np.random.randn(3), random.random()
    torch.save({"rng": resume.collect_rng_states()}, tmp_path / "s.pt")
    expected = (torch.randn(4), np.random.randn(4), random.random())
    torch.manual_seed(9), np.random.seed(9), random.seed(9)
    resume.set_rng_states(torch.load(tmp_path / "s.pt", weights_only=True)["rng"])
    got = (torch.randn(4), np.random.randn(4), random.random())
    assert torch.equal(got[0], expected[0]) and np.array_equal(got[1], expected[1]) and got[2] == expected[2]


def test_wandb_run_id_is_kept_only_when_resuming(tmp_path):
    first = resume.wandb_run_id(tmp_path, resuming=False)
    assert resume.wandb_run_id(tmp_path, resuming=True) == first
    assert resume.wandb_run_id(tmp_path, resuming=False) != first


def test_ranks_split_the_global_batch():
    tokens = np.arange(1000, dtype=np.uint16)
    whole = TrainBatches(tokens, seq_len=8, batch_size=6, num_batches=3, seed=5)[2]
    parts = [TrainBatches(tokens, seq_len=8, batch_size=3, num_batches=3, seed=5, rank=r, world_size=2)[2]
             for r in (0, 1)]
    assert torch.equal(torch.cat([p[0] for p in parts]), whole[0])
    assert torch.equal(torch.cat([p[1] for p in parts]), whole[1])
    assert torch.equal(whole[1][:, :-1], whole[0][:, 1:])  # targets are the inputs shifted by one
