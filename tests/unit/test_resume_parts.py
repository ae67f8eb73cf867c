"""The parts of preemption and resume: the checkpoint to resume from, the CSV history and RNG states it keeps,
the W&B run id, the ranks' batches, the progress bar after a resume, and the command that resumes.  The runs
killed and resumed are in tests/integration/test_resume.py."""

import csv
import json
import random

import numpy as np
import pytest
import torch

import glubench.train.monitors as monitors
import glubench.train.resume as resume
from glubench.cli.main import main
from glubench.data.windows import TrainBatches


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


def test_progress_bar_counts_optimizer_steps_after_a_resume():
    """Resumed at step 120 of 300 with 4 micro-batches per step (Lightning then skips on_train_epoch_start, where
    it sets the total): the bar reads 120/300 at once and 121/300 after the next step, where Lightning's showed
    ``Training: 481/?``."""
    from types import SimpleNamespace

    bar = monitors.GlubenchProgressBar(refresh_rate=1)
    bar.enable()  # the bar as on a terminal (under pytest stdout is not one, and the bar disables itself)
    trainer = SimpleNamespace(max_steps=300, global_step=120, current_epoch=0, loggers=[], progress_bar_metrics={},
                              training=True, num_training_batches=1200, max_epochs=-1)
    bar._trainer = trainer
    bar.on_train_start(trainer, None)
    assert (bar.train_progress_bar.n, bar.train_progress_bar.total) == (120, 300)
    assert bar.train_progress_bar.desc.startswith("Epoch 0")
    module = SimpleNamespace(step_finished=False, last_loss=torch.tensor(2.5))
    bar.on_train_batch_end(trainer, module, None, None, 480)  # a micro-batch inside step 121: no move
    assert bar.train_progress_bar.n == 120
    trainer.global_step, module.step_finished = 121, True
    bar.on_train_batch_end(trainer, module, None, None, 483)  # the step's last micro-batch
    assert (bar.train_progress_bar.n, bar.train_progress_bar.total) == (121, 300)
    trainer.max_steps = 10**9  # budget=time: the step cap is not a total
    assert bar.total_train_batches == float("inf")


def test_resume_hint_names_the_run_dir_or_the_sweep(tmp_path, compose_cfg):
    """The interrupt message's command: a single run's overrides plus its run dir (the default one is
    timestamped, so the same command would start afresh); a multirun job's sweep, from multirun.yaml.  A
    resubmitted sweep keeps its completed jobs (their val_loss, no training, no error)."""
    from hydra.core.hydra_config import HydraConfig
    from omegaconf import OmegaConf, open_dict

    from glubench.cli.main import resume_hint

    def hydra_job(overrides, mode, out):
        cfg = compose_cfg(overrides, hydra=True)
        with open_dict(cfg):
            cfg.hydra.mode, cfg.hydra.runtime.output_dir = mode, str(out)
        HydraConfig.instance().set_config(cfg)
        return cfg

    try:
        hydra_job(["experiment=ci", "logger.wandb.tags=[a,b]"], "RUN", tmp_path / "run")
        assert resume_hint() == (f"to resume: glubench experiment=ci 'logger.wandb.tags=[a,b]' "
                                 f"hydra.run.dir={tmp_path}/run")
        sweep = tmp_path / "sweep"
        (sweep / "1_relu_s0").mkdir(parents=True)
        OmegaConf.save({"hydra": {"overrides": {"task": ["experiment=ci", "optim.lr=1e-3,3e-3"]}}},
                       sweep / "multirun.yaml")
        cfg = hydra_job(["experiment=ci", "optim.lr=3e-3"], "MULTIRUN", sweep / "1_relu_s0")
        assert resume_hint() == ("to resume the sweep (its completed jobs are kept): glubench --multirun "
                                 f"experiment=ci optim.lr=1e-3,3e-3 hydra.sweep.dir={sweep}")
        (sweep / "1_relu_s0" / "results.json").write_text(json.dumps({"status": "completed", "ffn": "relu",
                                                                       "seed": 0, "val_loss": 4.25}))
        assert main(cfg) == 4.25 and not (sweep / "1_relu_s0" / "checkpoints").exists()
    finally:
        HydraConfig.instance().cfg = None
