"""Preemption and resume: a run killed and resumed equals an uninterrupted one."""

import csv
import json
import random
import struct
from pathlib import Path

import numpy as np
import pytest
import torch
from hydra import compose, initialize_config_dir

import glubench.train.resume as resume
from glubench.core.paths import CONF_DIR
from glubench.data.windows import TrainBatches
from glubench.train.task import run


def _compose(overrides):
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return compose(config_name="config", overrides=overrides)


def wandb_records(path: Path):
    """Records of an offline W&B ``.wandb`` file.

    The file is a LevelDB-style log (a 7-byte ``:W&B`` header, then 32 KiB blocks of chunks
    with a 7-byte ``crc32, length, type`` header; types FULL=1, FIRST=2, MIDDLE=3, LAST=4)
    whose payloads are ``wandb_internal_pb2.Record`` protobufs.  wandb ships no public reader.
    """
    from wandb.proto import wandb_internal_pb2 as pb

    data = path.read_bytes()
    assert data[:4] == b":W&B"
    pos, block, buf = 7, 32768, b""
    while pos + 7 <= len(data):
        left = block - pos % block
        if left < 7:
            pos += left
            continue
        _crc, length, kind = struct.unpack("<IHB", data[pos : pos + 7])
        if kind == 0 and length == 0:  # zero padding to the end of the block
            pos += left
            continue
        chunk = data[pos + 7 : pos + 7 + length]
        pos += 7 + length
        if kind == 1:
            yield pb.Record.FromString(chunk)
        elif kind == 2:
            buf = chunk
        elif kind == 3:
            buf += chunk
        elif kind == 4:
            yield pb.Record.FromString(buf + chunk)


def wandb_history(run_dir: Path) -> list[dict]:
    """The logged rows (``{key: value}``) of one offline W&B run folder."""
    rows = []
    for rec in wandb_records(next(run_dir.glob("*.wandb"))):
        if rec.WhichOneof("record_type") == "history":
            rows.append({(i.key or "/".join(i.nested_key)): json.loads(i.value_json) for i in rec.history.item})
    return rows


class Killed(Exception):
    pass


def _run_in(path: Path, monkeypatch, overrides):
    path.mkdir(parents=True, exist_ok=True)
    monkeypatch.chdir(path)  # outside Hydra the run dir is the current dir
    return run(_compose(["experiment=ci", *overrides]))


def test_kill_and_resume_equals_uninterrupted(tmp_path, monkeypatch):
    # 8 steps, validation and checkpoints every 4, logs every 2; the kill comes in step 5,
    # after the step-4 checkpoint and before anything else is logged.
    common = ["trainer.max_steps=8", "trainer.val_check_interval=4", "trainer.log_every_n_steps=2",
              "optim.warmup_steps=2", "throughput.warmup_steps=1", "trainer.deterministic=true"]
    full = _run_in(tmp_path / "full", monkeypatch, common)

    class KillAtStep5(resume.ResumeState):
        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            if trainer.global_step == 5:
                raise Killed()

    monkeypatch.setattr(resume, "ResumeState", KillAtStep5)
    with pytest.raises(Killed):
        _run_in(tmp_path / "resumed", monkeypatch, common)
    monkeypatch.undo()
    ckpts = tmp_path / "resumed" / "checkpoints"
    assert resume.checkpoint_step(ckpts / "last.ckpt") == 4
    assert json.loads((tmp_path / "resumed" / "results.json").read_text())["status"] == "failed"

    resumed = _run_in(tmp_path / "resumed", monkeypatch, common)
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
    assert len(runs) == 2 and len({r.name.rsplit("-", 1)[1] for r in runs}) == 1
    (full_run,) = (tmp_path / "full" / "wandb").glob("offline-run-*")

    def loss_steps(rows):
        return [(r["trainer/global_step"], r.get("train/loss"), r.get("val/loss")) for r in rows
                if "train/loss" in r or "val/loss" in r]

    both = loss_steps(wandb_history(runs[0]) + wandb_history(runs[1]))
    assert both == loss_steps(wandb_history(full_run))
    assert [s for s, tl, _ in both if tl is not None] == [1, 3, 5, 7]  # logged every 2 steps, none twice


def test_keep_csv_history_drops_rows_from_the_resume_step_on(tmp_path):
    from lightning.pytorch.loggers import CSVLogger

    path = tmp_path / "csv" / "metrics.csv"
    path.parent.mkdir(parents=True)
    path.write_text("epoch,step,train/loss,val/loss\n0,4,2.5,\n0,9,2.0,\n0,9,,2.1\n0,14,1.5,\n")
    logger = CSVLogger(save_dir=str(tmp_path), name="csv", version="")
    # Lightning logs global step k as row step k-1: resuming at 10 keeps rows 4 and 9.
    assert resume.keep_csv_history(logger, resume_step=10) == 3
    logger.log_metrics({"train/loss": 1.4}, step=14)
    logger.save()
    rows = list(csv.DictReader(open(path)))
    assert [(r["step"], r["train/loss"], r["val/loss"]) for r in rows] == [
        ("4", "2.5", ""), ("9", "2.0", ""), ("9", "", "2.1"), ("14", "1.4", "")]


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
