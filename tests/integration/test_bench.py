"""The throughput benchmark (glubench.cli.bench), torch.compile without recompiles, and the hot path's host syncs."""

import json

import lightning.pytorch as pl
import pytest
import torch

import glubench.cli.bench as bench
import glubench.train.module as gmodule
from glubench.nn.config import ModelConfig
from glubench.nn.transformer import Transformer


def test_summarize_exact_rates():
    # 4 steps of 1000 tokens: 0.1, 0.2, 0.3, 0.4 s -> 4000 tokens / 1.0 s; median step 0.25 s.
    s = bench.summarize([0.1, 0.2, 0.3, 0.4], 1000)
    assert s["tokens_per_sec"] == pytest.approx(4000.0)
    assert s["tokens_per_sec_median_step"] == pytest.approx(1000 / 0.25)
    assert s["step_ms_median"] == pytest.approx(250.0)
    assert s["step_ms_p25"] == pytest.approx(175.0) and s["step_ms_p75"] == pytest.approx(325.0)
    assert s["measured_steps"] == 4 and s["measured_seconds"] == pytest.approx(1.0)
    with pytest.raises(ValueError):
        bench.summarize([], 1000)


def _run(rep, contender, tps):
    return {"ffn": "gelu", "contender": contender, "repeat": rep, "tokens_per_sec": tps,
            "tokens_per_sec_median_step": tps, "step_ms_median": 1.0, "step_ms_p25": 1.0, "step_ms_p75": 1.0,
            "peak_mem_mib": 10.0}


def test_aggregate_pairs_ratios_within_repeats():
    cfg = bench.BenchConfig(ffns=["gelu"])
    runs = [_run(0, "lightning", 90), _run(0, "plain", 100), _run(0, "hf-gpt2", 50),
            _run(1, "lightning", 200), _run(1, "plain", 200), _run(1, "hf-gpt2", 400),
            _run(2, "lightning", 95), _run(2, "plain", 100), _run(2, "hf-gpt2", 100)]
    agg = bench.aggregate(cfg, runs, {"gelu": 6.0}, peak=6000.0)
    ratios = {r["ratio"]: r for r in agg["ratios"]}
    assert ratios["lightning / plain"]["median"] == pytest.approx(0.95)  # of 0.9, 1.0, 0.95
    assert ratios["plain / hf-gpt2"]["median"] == pytest.approx(1.0)  # of 2.0, 0.5, 1.0
    assert ratios["plain / hf-gpt2"]["min"] == pytest.approx(0.5)
    plain = next(r for r in agg["rows"] if r["contender"] == "plain")
    assert plain["tokens_per_sec"] == 100 and plain["mfu"] == pytest.approx(100 * 6.0 / 6000.0)
    md = bench.markdown({"meta": {"device": "cpu", "versions": {"torch": "x"}, "precision": "32-true",
                                  "compile": False, "config": vars(cfg)}, "summary": agg})
    assert "| gelu | lightning / plain | 0.950 |" in md and "**no**" in md  # 0.95 < 0.97


def test_split_gated_matches_fused():
    torch.manual_seed(0)
    cfg = bench.BenchConfig(ffns=["swiglu"], d_model=16, n_layers=1, n_heads=2, seq_len=8, vocab_size=32)
    fused = bench.glubench_model(cfg, "swiglu")
    split = bench.glubench_model(cfg, "swiglu", split=True)
    x = torch.randint(0, 32, (2, 8))
    torch.testing.assert_close(split(x), fused(x))
    assert sum(p.numel() for p in split.parameters()) == sum(p.numel() for p in fused.parameters())


def test_hf_peers_have_glubench_shapes():
    pytest.importorskip("transformers")
    cfg = bench.BenchConfig(d_model=32, n_layers=2, n_heads=4, seq_len=16, vocab_size=64)
    for ffn, peer in bench.HF_PEERS.items():
        ours = Transformer(cfg.model_config(ffn))
        theirs = bench.hf_model(cfg, peer)
        # Matrices (the FLOPs) must match exactly; only biases/norm gains/positions differ.
        mats = sorted(p.numel() for p in ours.parameters() if p.dim() == 2 and p.shape[0] != cfg.seq_len)
        peer_mats = [p for n, p in theirs.named_parameters() if p.dim() == 2 and "wpe" not in n]
        assert sum(mats) == sum(p.numel() for p in peer_mats), peer
        logits = bench._HFLogits(theirs)(torch.randint(0, 64, (2, 16)))
        assert logits.shape == (2, 16, 64)


def test_benchmark_end_to_end_writes_json_and_table(tmp_path):
    out = tmp_path / "bench"
    rc = bench.main(["--ffn", "swiglu", "--contenders", "lightning", "plain", "--split-gated", "--d-model", "16",
                     "--n-layers", "1", "--n-heads", "2", "--seq-len", "8", "--batch-size", "2", "--warmup", "1",
                     "--steps", "2", "--repeats", "1", "--out", str(out)])
    assert rc == 0
    data = json.loads((out / "bench.json").read_text())
    assert {(r["ffn"], r["contender"]) for r in data["runs"]} == {
        ("swiglu", "lightning"), ("swiglu", "plain"), ("swiglu", "plain-split")}
    for r in data["runs"]:
        assert r["measured_steps"] == 2 and r["tokens_per_sec"] > 0 and r["peak_mem_mib"] > 0
    assert data["meta"]["precision"] == "32-true"
    assert "lightning / plain" in (out / "bench.md").read_text()


@pytest.mark.parametrize("argv,needle", [
    (["--ffn", "tanh"], "--ffn 'tanh'"),
    (["--contenders", "jax"], "--contenders 'jax'"),
    (["--steps", "0"], "--steps=0"),
    (["--compile", "--warmup", "1"], "--warmup=1"),
    (["--d-model", "30", "--n-heads", "4"], "model.d_model=30"),
])
def test_bad_flags_fail_fast(argv, needle, capsys, tmp_path):
    assert bench.main([*argv, "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "glubench-bench: error:" in err and needle in err
    assert not (tmp_path / "bench.json").exists()


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
    from glubench.train.callbacks import ThroughputCallback
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
