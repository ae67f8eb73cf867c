"""The throughput benchmark end to end (glubench.bench, its command glubench.cli.bench), the command's
import cost, torch.compile without recompiles, and the hot path's host syncs."""

import json
import subprocess
import sys

import lightning.pytorch as pl
import torch

import glubench.cli.bench as command
import glubench.train.module as gmodule
from glubench.nn.config import ModelConfig


def test_benchmark_end_to_end_writes_json_and_table(tmp_path):
    out = tmp_path / "bench"
    rc = command.main(["--ffn", "swiglu", "--contenders", "lightning", "plain", "--split-gated", "--d-model", "16",
                     "--n-layers", "1", "--n-heads", "2", "--seq-len", "8", "--batch-size", "2", "--warmup", "1",
                     "--steps", "2", "--repeats", "1", "--out", str(out)])
    assert rc == 0
    data = json.loads((out / "bench.json").read_text())
    assert {(r["ffn"], r["contender"]) for r in data["runs"]} == {
        ("swiglu", "lightning"), ("swiglu", "plain"), ("swiglu", "plain-split")}
    for r in data["runs"]:
        assert r["measured_steps"] == 2 and r["tokens_per_sec"] > 0 and r["peak_mem_mib"] > 0
    assert data["meta"]["precision"] == "32-true"
    assert {k: data["meta"]["config"][k] for k in ("d_model", "n_layers", "n_heads", "seq_len", "vocab_size")} == {
        "d_model": 16, "n_layers": 1, "n_heads": 2, "seq_len": 8, "vocab_size": 256}  # flat, one key per flag
    assert "lightning / plain" in (out / "bench.md").read_text()


def test_command_loads_no_torch_until_the_flags_pass():
    """--help and a bad flag answer without importing torch (the engine loads after the check)."""
    code = ("import sys, glubench.cli.bench as c; c.parser().format_help(); rc = c.main(['--steps', '0']); "
            "print(rc, 'torch' in sys.modules, 'lightning' in sys.modules)")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert proc.stdout.split() == ["2", "False", "False"] and "--steps=0" in proc.stderr


def test_compile_has_no_recompiles_after_warmup(monkeypatch):
    """model.compile=true: one graph for training, one per validation shape, none added after warmup."""
    from torch._dynamo.utils import counters

    # Dynamo decides graphs and recompiles; the 'eager' backend skips codegen so the test stays fast.
    monkeypatch.setattr(gmodule, "COMPILE_OPTIONS", {**gmodule.COMPILE_OPTIONS, "backend": "eager"})
    torch._dynamo.reset()
    counters.clear()
    torch.manual_seed(0)
    cfg = ModelConfig(vocab_size=32, d_model=16, n_layers=1, n_heads=2, seq_len=8, ffn="swiglu", compile=True)
    module = gmodule.LanguageModel(cfg, {"warmup_steps": 1}, max_steps=8)
    assert list(module.state_dict())[0] == "model.tok_emb.weight"  # compiled in place: names unchanged
    g = torch.Generator().manual_seed(0)
    train = [(torch.randint(0, 32, (4, 8), generator=g),) * 2 for _ in range(8)]
    val = [(torch.randint(0, 32, (8,), generator=g),) * 2 for _ in range(5)]  # batches of 3 then 2: two shapes
    seen = []

    class Snap(pl.Callback):
        def on_train_batch_end(self, trainer, *args):
            seen.append((trainer.global_step, counters["stats"]["unique_graphs"]))

    trainer = pl.Trainer(accelerator="cpu", max_steps=8, val_check_interval=2, check_val_every_n_epoch=None,
                         num_sanity_val_steps=0, logger=False, enable_progress_bar=False,
                         enable_checkpointing=False, enable_model_summary=False, callbacks=[Snap()])
    trainer.fit(module, train_dataloaders=torch.utils.data.DataLoader(train, batch_size=None),
                val_dataloaders=torch.utils.data.DataLoader(val, batch_size=3))
    graphs = dict(seen)
    assert graphs[1] == 1  # the training graph
    assert graphs[3] == 3  # + validation's two batch shapes (eval mode), compiled during warmup
    assert graphs[8] == graphs[3]  # later training steps and validations reuse them
    assert not counters["graph_break"]
    torch._dynamo.reset()


def test_no_host_sync_between_logging_steps(tmp_path, monkeypatch, compose_cfg):
    """Outside logging steps, nothing reads a tensor back to the host with .item() (a sync on GPU).

    AdamW's ``step`` counters are CPU tensors by design (no sync), so calls from torch.optim are
    not counted; everything else (progress bar, logging, callbacks) is.
    """
    from glubench.train.monitors import ThroughputCallback
    from glubench.train.task import run

    counts, per_step = {"n": 0}, {}
    original_item = torch.Tensor.item

    def counting_item(self):
        import sys

        if "torch/optim" not in sys._getframe(1).f_code.co_filename:
            counts["n"] += 1
        return original_item(self)

    original_end = ThroughputCallback.on_train_batch_end

    def recording_end(self, trainer, *args):
        original_end(self, trainer, *args)
        per_step[trainer.global_step] = counts["n"]

    monkeypatch.setattr(torch.Tensor, "item", counting_item)
    monkeypatch.setattr(ThroughputCallback, "on_train_batch_end", recording_end)
    monkeypatch.chdir(tmp_path)
    cfg = compose_cfg(["experiment=ci", "logger=csv", "trainer.enable_progress_bar=true", "trainer.max_steps=9",
                       "trainer.val_check_interval=9", "trainer.log_every_n_steps=4"])
    assert run(cfg).status == "completed"
    steps = sorted(per_step)
    quiet = [s for s in steps[1:] if s % 4 and (s - 1) % 4]  # neither a logging step nor right after one
    assert quiet, steps
    for s in quiet:
        assert per_step[s] == per_step[s - 1], f"step {s}: {per_step[s] - per_step[s - 1]} .item() calls"
