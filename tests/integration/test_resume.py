"""Preemption and resume: a run killed and resumed equals an uninterrupted one."""

import csv
import json

import pytest
import torch

import glubench.train.callbacks as callbacks
import glubench.train.resume as resume


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


# ---------------------------------------------------------------------------- signals, then the same command


TIMING = ("train/tokens_per_sec", "train/step_time_ms", "train/mfu")  # measured, so never equal across runs
_FULL: dict[int, object] = {}  # accumulate_grad_batches -> the uninterrupted run's folder (shared by both signals)


def _interrupt_run(common, path, ci_run, monkeypatch, sig, batch):
    """Run ``common`` in ``path``, sending ``sig`` to this process just before the backward pass of training
    batch ``batch`` (a micro-batch in the middle of an optimizer step, or the step's only one)."""
    import os
    import signal

    class SignalMidStep(callbacks.ResumeState):
        def on_before_backward(self, trainer, pl_module, loss):
            if trainer.fit_loop.epoch_loop.total_batch_idx == batch:
                os.kill(os.getpid(), getattr(signal, sig))

    monkeypatch.setattr(callbacks, "ResumeState", SignalMidStep)
    with pytest.raises(SystemExit):  # Lightning's SIGTERMException, at the end of the optimizer step
        ci_run(path, *common)
    monkeypatch.setattr(callbacks, "ResumeState", SignalMidStep.__mro__[1])


def _eval_loss(ckpt, compose_cfg, monkeypatch, where):
    from glubench.train.evaluate import evaluate

    where.mkdir()
    monkeypatch.chdir(where)  # eval.json goes to the current dir outside Hydra
    return evaluate(compose_cfg([f"ckpt_path={ckpt}"], config_name="eval"))["loss"]


def _csv_rows(run_dir):
    """metrics.csv's rows without the measured timing columns (and without rows that held only those)."""
    rows = []
    for r in csv.DictReader(open(run_dir / "csv" / "metrics.csv")):
        row = {k: v for k, v in r.items() if v and k not in TIMING}
        if set(row) != {"step"}:
            rows.append(row)
    return rows


@pytest.mark.parametrize("accumulate", [1, 3])
@pytest.mark.parametrize("sig", ["SIGINT", "SIGTERM"])
def test_signal_mid_step_then_resume_equals_uninterrupted(sig, accumulate, tmp_path, monkeypatch, ci_run,
                                                          compose_cfg, recwarn):
    """Ctrl-C or SIGTERM in the middle of optimizer step 6 (before a backward pass; with accumulation in its
    second micro-batch), then the same command: the validations, every checkpoint file and its weights, the CSV
    rows and glubench-eval's score equal the uninterrupted run's; the interrupted results.json names the signal
    and carries the step-4 validation."""
    import math

    from glubench.train.results import RunResult

    common = ["logger=csv", "trainer.max_steps=12", "trainer.val_check_interval=4", "trainer.log_every_n_steps=2",
              f"trainer.accumulate_grad_batches={accumulate}", "optim.warmup_steps=2", "throughput.warmup_steps=1",
              "callbacks.model_checkpoint.save_top_k=-1"]
    dirs = [tmp_path / "run"]
    if accumulate not in _FULL:
        _FULL[accumulate] = tmp_path / "full"
        ci_run(_FULL[accumulate], *common)
        dirs.append(_FULL[accumulate])
    full_dir = _FULL[accumulate]
    full = RunResult.read(full_dir / "results.json")
    assert [h["step"] for h in full.history] == [4, 8, 12]  # optimizer steps, whatever the accumulation

    run_dir = tmp_path / "run"
    _interrupt_run(common, run_dir, ci_run, monkeypatch, sig, batch=5 * accumulate + (accumulate > 1))
    stopped = RunResult.read(run_dir / "results.json")
    name = "SIGINT (Ctrl-C)" if sig == "SIGINT" else sig
    assert stopped.status == "interrupted" and stopped.error == f"interrupted by {name} at step 6"
    assert stopped.steps == 6 and (stopped.val_step, stopped.val_loss) == (4, full.history[0]["val_loss"])
    assert resume.checkpoint_step(run_dir / "checkpoints" / "last.ckpt") == 6  # saved at the end of step 6

    recwarn.clear()
    resumed = ci_run(run_dir, *common)
    resume_warnings = [str(w.message) for w in recwarn if "exists and is not empty" in str(w.message)
                       or "not resumable" in str(w.message)]
    assert resume_warnings == []  # Lightning's warnings on resume (none of them true here)
    assert resumed.status == "completed" and resumed.history == full.history
    assert resumed.val_loss == full.val_loss and resumed.val_step == full.val_step == 12

    files = sorted(p.name for p in (full_dir / "checkpoints").iterdir())
    assert files == ["last.ckpt", "step-12.ckpt", "step-4.ckpt", "step-8.ckpt"]
    assert sorted(p.name for p in (run_dir / "checkpoints").iterdir()) == files
    for name in files:
        a, b = (torch.load(d / "checkpoints" / name, weights_only=True) for d in (full_dir, run_dir))
        assert a["global_step"] == b["global_step"]
        assert all(torch.equal(a["state_dict"][k], b["state_dict"][k]) for k in a["state_dict"])

    full_rows, rows = _csv_rows(full_dir), _csv_rows(run_dir)
    assert rows == full_rows
    lr_steps = [int(r["step"]) for r in rows if "lr-AdamW/pg1" in r]  # LR of step k + 1, labelled k
    assert lr_steps == [1, 3, 5, 7, 9, 11]  # once per logging step, not once per micro-batch

    for d in dirs:  # glubench-eval on last.ckpt gives results.json's val_loss
        score = _eval_loss(d / "checkpoints" / "last.ckpt", compose_cfg, monkeypatch, tmp_path / f"eval-{d.name}")
        assert math.isclose(score, RunResult.read(d / "results.json").val_loss, abs_tol=1e-6)
