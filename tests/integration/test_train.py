import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from glubench.train.results import RunResult


def test_end_to_end_writes_results(tmp_path, monkeypatch, ci_run):
    result = ci_run(tmp_path, "model.ffn=swiglu")
    data = json.loads((tmp_path / "results.json").read_text())
    assert data["status"] == "completed" and data["ffn"] == "swiglu"
    for key in ("val_loss", "val_ppl", "val_bpb", "train_tokens_per_sec", "wall_time_s"):
        assert math.isfinite(data[key]) and data[key] > 0, key
    assert data["val_ppl"] == pytest.approx(math.exp(data["val_loss"]))
    # Byte tokenizer: one byte per token, so bpb = loss / ln 2 exactly.
    assert data["val_bpb"] == pytest.approx(data["val_loss"] / math.log(2))
    assert data["ffn_hidden"] == round(2 / 3 * 4 * 32)
    assert data["tokens_seen"] == 20 * 8 * 32
    assert data["mfu"] is None  # CPU, no peak given
    assert data["config"]["model"]["ffn"] == "swiglu"
    assert [h["step"] for h in data["history"]] == [10, 20]
    assert len(data["corpus_fingerprint"]) == 64
    assert RunResult.read(tmp_path / "results.json").val_loss == result.val_loss


def test_llama_block_trains(tmp_path, ci_run):
    """model=llama_tiny (RMSNorm, rotary positions, no biases) at nano's sizes trains end to end."""
    result = ci_run(tmp_path, "model=llama_tiny", "model.d_model=32", "model.n_layers=2", "model.n_heads=2",
                    "model.seq_len=32", "trainer.max_steps=4", "trainer.val_check_interval=4", "optim.warmup_steps=1")
    assert result.status == "completed" and math.isfinite(result.val_loss)
    model = json.loads((tmp_path / "results.json").read_text())["config"]["model"]
    assert (model["norm"], model["pos"], model["bias"], model["d_model"]) == ("rmsnorm", "rope", False, 32)


def test_same_seed_same_losses(tmp_path, monkeypatch, ci_run):
    a = ci_run(tmp_path / "a", "trainer.max_steps=10", "trainer.deterministic=true")
    b = ci_run(tmp_path / "b", "trainer.max_steps=10", "trainer.deterministic=true")
    c = ci_run(tmp_path / "c", "trainer.max_steps=10", "seed=1")
    assert a.train_loss == b.train_loss and a.val_loss == b.val_loss
    assert a.history == b.history  # every validation loss, bit for bit
    assert c.val_loss != a.val_loss
    assert set(a.versions) == {"python", "torch", "lightning"} and a.device.startswith(("cpu", "NVIDIA"))


def _wandb_model_config(run_dir: Path) -> dict:
    """The ``model`` section of an offline W&B run's config.

    wandb >= 0.19 keeps an offline run's config only inside its ``.wandb`` record log, whose
    reader is not public; the config values are JSON strings in that log, so decode the one
    that starts with the model schema's first key.
    """
    raw = next(run_dir.glob("*.wandb")).read_bytes().decode("utf-8", errors="replace")
    start = raw.index('{"vocab_size"')
    model, _ = json.JSONDecoder().raw_decode(raw[start:])
    return model


def test_multirun_gives_one_wandb_run_per_job(tmp_path):
    env = {**os.environ, "WANDB_MODE": "offline"}
    cmd = [sys.executable, "-m", "glubench", "--multirun", "experiment=ci", "model.ffn=relu,swiglu",
           "trainer.max_steps=6", "trainer.val_check_interval=6", f"hydra.sweep.dir={tmp_path}/sweep"]
    proc = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = sorted((tmp_path / "sweep").glob("*/results.json"))
    assert [json.loads(p.read_text())["ffn"] for p in results] == ["relu", "swiglu"]
    runs = sorted((tmp_path / "sweep").glob("*/wandb/offline-run-*"))
    assert len(runs) == 2
    assert sorted(_wandb_model_config(r)["ffn"] for r in runs) == ["relu", "swiglu"]
    assert not list(tmp_path.glob("outputs")) and not list(tmp_path.glob("wandb"))  # nothing in cwd


def test_bpe_on_a_local_file_trains_and_sizes_the_model(shared_data, tmp_path, monkeypatch, ci_run, compose_cfg):
    from glubench.nn.config import ModelConfig
    from glubench.nn.transformer import Transformer, count_params

    path = shared_data / "wikitext-2-tokenized" / "valid.txt"
    result = ci_run(tmp_path, "data=text", f"data.files={path}", "data.tokenizer=bpe",
                     "data.vocab_size=512", "trainer.max_steps=10", "trainer.val_check_interval=10")
    assert result.status == "completed" and math.isfinite(result.val_bpb)
    m = compose_cfg(["experiment=ci"]).model
    byte_vocab = count_params(Transformer(ModelConfig(**OmegaConf.to_container(m)))).total  # vocab_size 256
    # The tokenizer's 512 tokens reached the model: the tied embedding/head gains 256 rows of d_model.
    assert result.params_total - byte_vocab == (512 - 256) * m.d_model


def test_flops_budget_gives_cheaper_variant_more_steps(tmp_path, monkeypatch, ci_run):
    """relu vs swiglu with ffn_multiple_of=64 (hidden 85 -> 64: FFN 3·32·64 vs 2·32·128 weights)."""
    common = ["budget=flops", "trainer.max_steps=10", "trainer.val_check_interval=10", "optim.warmup_steps=2"]
    a = ci_run(tmp_path / "a", "model.ffn=relu", *common)
    b = ci_run(tmp_path / "b", "model.ffn=swiglu", "model.ffn_multiple_of=64", *common)
    assert b.ffn_hidden == 64
    # FLOPs per token = 6 x matmul weights + 12 L d T; the two differ only in the FFN, in 2 layers.
    assert a.flops_per_token - b.flops_per_token == 6 * 2 * (2 * 32 * 128 - 3 * 32 * 64)
    tokens_per_step = 8 * 32
    # null value: the relu baseline's 10 steps are the budget, so relu trains exactly 10 steps.
    assert a.steps == 10 and a.budget["target"] == pytest.approx(10 * tokens_per_step * a.flops_per_token)
    assert b.steps == math.floor(a.budget["target"] / (tokens_per_step * b.flops_per_token)) > 10
    for r in (a, b):
        assert r.budget["mode"] == "flops" and r.budget["tokens"] == r.steps * tokens_per_step == r.tokens_seen
        assert r.budget["flops"] == pytest.approx(r.tokens_seen * r.flops_per_token)
        assert r.budget["seconds"] > 0
    one_step = tokens_per_step * max(a.flops_per_token, b.flops_per_token)
    assert abs(a.budget["flops"] - b.budget["flops"]) <= one_step
    # The LR schedule's horizon, saved in the checkpoint, is the budget's step count, not trainer.max_steps.
    ckpt = torch.load(tmp_path / "b" / "checkpoints" / "last.ckpt", weights_only=True)
    assert ckpt["hyper_parameters"]["max_steps"] == b.steps > 10


def test_time_budget_stops_within_one_step_of_the_limit(tmp_path, monkeypatch, ci_run):
    r = ci_run(tmp_path, "budget=time", "budget.value=1.5", "trainer.val_check_interval=1000")
    b = r.budget
    assert r.status == "completed" and b["mode"] == "time" and b["max_steps"] is None
    assert r.steps == b["steps"] >= 1 and b["tokens"] == r.steps * 8 * 32
    assert 0 <= b["stopped_at"] - 1.5 < b["last_step_seconds"]
    assert b["seconds"] >= b["stopped_at"]
    assert r.history[-1]["step"] == r.steps  # the final validation still ran


def test_callback_in_a_training_run(tmp_path, monkeypatch, ci_run):

    result = ci_run(tmp_path, "model.ffn=reglu", "logger=csv", "diagnostics.dead_units=true",
                     "diagnostics.every_n_steps=5", "trainer.max_steps=10")
    d = json.loads((tmp_path / "results.json").read_text())["diagnostics"]["dead_units"]
    assert [h["step"] for h in d["history"]] == [0, 5, 10]
    assert len(d["final"]["dead_frac"]) == 2 and len(d["max"]["gate_sat_frac"]) == 2
    assert d["dead_frac_max"] == max(sum(h["dead_frac"]) / 2 for h in d["history"])
    assert 0 <= d["dead_frac"] <= 1 and 0 < d["active_frac"] <= 1 and d["probe_ms"] > 0
    assert math.isfinite(d["overhead_frac"])
    assert result.diagnostics["dead_units"]["every_n_steps"] == 5
    header = (tmp_path / "csv" / "metrics.csv").read_text().splitlines()[0].split(",")
    assert {"act/layer0/dead_frac", "act/layer1/gate_sat_frac", "act/dead_frac"} <= set(header)


def test_checkpoint_writes_are_outside_the_training_clock(tmp_path, monkeypatch, ci_run):
    """A fake clock ticks 1 ms per reading and jumps 1000 s during each checkpoint write: the training seconds
    (budget, tokens/s) must not contain a single jump.  Checkpoints every 3 steps between validations are
    written between training batches, where the clock runs."""
    import glubench.train.faults as faults
    import glubench.train.module as module
    from glubench.core.clock import Stopwatch

    now, writes = [0.0], []

    def clock():
        now[0] += 1e-3
        return now[0]

    real_save = faults.AtomicCheckpointIO.save_checkpoint

    def slow_save(self, checkpoint, path, storage_options=None):
        now[0] += 1000.0
        writes.append(checkpoint["global_step"])
        real_save(self, checkpoint, path, storage_options)

    monkeypatch.setattr(module, "Stopwatch", lambda: Stopwatch(clock=clock))
    monkeypatch.setattr(faults.AtomicCheckpointIO, "save_checkpoint", slow_save)
    r = ci_run(tmp_path, "trainer.max_steps=12", "trainer.val_check_interval=12",
               "callbacks.model_checkpoint.every_n_train_steps=3")
    assert writes == [3, 6, 9, 12] and now[0] > 4000
    assert 0 < r.budget["seconds"] < 1000  # each reading adds 1 ms; one write would add 1000 s
    assert r.train_tokens_per_sec > 10 * 8 * 32 / 1000  # (10 measured steps of 256 tokens in under 1000 s)


def test_short_run_validates_at_its_end(tmp_path, ci_run, compose_cfg, monkeypatch, caplog):
    """trainer.max_steps=6 below val_check_interval=10 (experiment=ci): clamped with one info line, not refused;
    the run validates at step 6 and glubench-eval on its last.ckpt gives results.json's val_loss."""
    import logging

    from glubench.train.evaluate import evaluate

    with caplog.at_level(logging.INFO, logger="glubench"):
        r = ci_run(tmp_path / "run", "trainer.max_steps=6", "optim.warmup_steps=2")
    assert r.status == "completed" and [h["step"] for h in r.history] == [6] and r.val_step == 6
    clamped = [m for m in caplog.messages if "val_check_interval" in m]
    assert clamped == ["glubench: trainer.val_check_interval=10 > the run's 6 optimizer steps: "
                       "validating at step 6 only"]
    (tmp_path / "eval").mkdir()
    monkeypatch.chdir(tmp_path / "eval")
    score = evaluate(compose_cfg([f"ckpt_path={tmp_path}/run/checkpoints/last.ckpt"], config_name="eval"))["loss"]
    assert abs(score - r.val_loss) <= 1e-6
