"""The throughput benchmark's parts (glubench.bench, glubench.cli.bench): rates and ratios by hand, the split gated
FFN equals the fused one, the Hugging Face peers have glubench's matrices, the plan, the flags come from the
dataclasses, bad flags fail before any work, device names.  The benchmark
runs end to end in tests/integration/test_bench.py."""

import pytest
import torch

import glubench.cli.bench as command
from glubench.bench import config, engine, models, results
from glubench.nn.config import ModelConfig
from glubench.nn.transformer import Transformer


def test_summarize_exact_rates():
    # 4 steps of 1000 tokens: 0.1, 0.2, 0.3, 0.4 s -> 4000 tokens / 1.0 s; median step 0.25 s.
    s = results.summarize([0.1, 0.2, 0.3, 0.4], 1000)
    assert s["tokens_per_sec"] == pytest.approx(4000.0)
    assert s["tokens_per_sec_median_step"] == pytest.approx(1000 / 0.25)
    assert s["step_ms_median"] == pytest.approx(250.0)
    assert s["step_ms_p25"] == pytest.approx(175.0) and s["step_ms_p75"] == pytest.approx(325.0)
    assert s["measured_steps"] == 4 and s["measured_seconds"] == pytest.approx(1.0)
    with pytest.raises(ValueError):
        results.summarize([], 1000)


def _run(rep, contender, tps):
    return {"ffn": "gelu", "contender": contender, "repeat": rep, "tokens_per_sec": tps,
            "tokens_per_sec_median_step": tps, "step_ms_median": 1.0, "step_ms_p25": 1.0, "step_ms_p75": 1.0,
            "peak_mem_mib": 10.0}


def test_aggregate_pairs_ratios_within_repeats():
    cfg = config.BenchConfig(ffns=["gelu"])
    runs = [_run(0, "lightning", 90), _run(0, "plain", 100), _run(0, "hf-gpt2", 50),
            _run(1, "lightning", 200), _run(1, "plain", 200), _run(1, "hf-gpt2", 400),
            _run(2, "lightning", 95), _run(2, "plain", 100), _run(2, "hf-gpt2", 100)]
    agg = results.aggregate(cfg, runs, {"gelu": 6.0}, peak=6000.0)
    ratios = {r["ratio"]: r for r in agg["ratios"]}
    assert ratios["lightning / plain"]["median"] == pytest.approx(0.95)  # of 0.9, 1.0, 0.95
    assert ratios["plain / hf-gpt2"]["median"] == pytest.approx(1.0)  # of 2.0, 0.5, 1.0
    assert ratios["plain / hf-gpt2"]["min"] == pytest.approx(0.5)
    plain = next(r for r in agg["rows"] if r["contender"] == "plain")
    assert plain["tokens_per_sec"] == 100 and plain["mfu"] == pytest.approx(100 * 6.0 / 6000.0)
    md = results.markdown({"meta": {"device": "cpu", "versions": {"torch": "x"}, "precision": "32-true",
                                  "compile": False, "config": cfg.as_dict()}, "summary": agg})
    assert "| gelu | lightning / plain | 0.950 |" in md and "**no**" in md  # 0.95 < 0.97


def test_split_gated_matches_fused():
    torch.manual_seed(0)
    cfg = config.BenchConfig(ffns=["swiglu"], model=ModelConfig(d_model=16, n_layers=1, n_heads=2, seq_len=8,
                                                                  vocab_size=32))
    fused = models.glubench_model(cfg, "swiglu")
    split = models.glubench_model(cfg, "swiglu", split=True)
    x = torch.randint(0, 32, (2, 8))
    torch.testing.assert_close(split(x), fused(x))
    assert sum(p.numel() for p in split.parameters()) == sum(p.numel() for p in fused.parameters())


def test_hf_peers_have_glubench_shapes():
    pytest.importorskip("transformers")
    cfg = config.BenchConfig(model=ModelConfig(d_model=32, n_layers=2, n_heads=4, seq_len=16, vocab_size=64))
    for ffn, peer in config.HF_PEERS.items():
        ours = Transformer(cfg.model_config(ffn))
        theirs = models.hf_model(cfg, peer)
        # Matrices (the FLOPs) must match exactly; only biases/norm gains/positions differ.
        mats = sorted(p.numel() for p in ours.parameters() if p.dim() == 2 and p.shape[0] != cfg.model.seq_len)
        peer_mats = [p for n, p in theirs.named_parameters() if p.dim() == 2 and "wpe" not in n]
        assert sum(mats) == sum(p.numel() for p in peer_mats), peer
        logits = models.HFLogits(theirs)(torch.randint(0, 64, (2, 16)))
        assert logits.shape == (2, 16, 64)


@pytest.mark.parametrize("argv,needle", [
    (["--ffn", "tanh"], "--ffn 'tanh'"),
    (["--contenders", "jax"], "--contenders 'jax'"),
    (["--steps", "0"], "--steps=0"),
    (["--compile", "--warmup", "1"], "--warmup=1"),
    (["--d-model", "30", "--n-heads", "4"], "model.d_model=30"),
])
def test_bad_flags_fail_fast(argv, needle, capsys, tmp_path):
    assert command.main([*argv, "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "glubench-bench: error:" in err and needle in err
    assert not (tmp_path / "bench.json").exists()


def test_flags_come_from_the_dataclasses():
    """Every model size is a flag with ModelConfig's default; flags parse to the fields' types."""
    p = command.parser()
    flags = {a.option_strings[0]: a for a in p._actions if a.option_strings}
    for flag, default in {"--vocab-size": 256, "--d-model": 128, "--n-layers": 4, "--n-heads": 4, "--seq-len": 128,
                          "--batch-size": 16, "--warmup": 3, "--steps": 10, "--repeats": 3, "--seed": 0}.items():
        assert flags[flag].type is int and flags[flag].default == default, flag
    assert "--d-ff" not in flags and "--ffns" not in flags and flags["--ffn"].default == ["relu", "gelu", "swiglu"]
    cfg, out = command.parse_args(["--d-model", "64", "--n-heads", "2", "--ffn", "glu", "--threads", "2",
                                   "--peak-flops", "1e12", "--bf16", "--split-gated", "--out", "x"])
    assert (cfg.model.d_model, cfg.model.n_heads, cfg.model.n_layers, cfg.model.d_ff) == (64, 2, 4, 256)
    assert (cfg.ffns, cfg.threads, cfg.peak_flops, cfg.bf16, cfg.compile) == (["glu"], 2, 1e12, True, False)
    assert cfg.contenders == ["lightning", "plain", "hf", "plain-split"] and str(out) == "x"
    assert command.parse_args([])[0].contenders == ["lightning", "plain", "hf"]  # the default list is not shared


def test_plan_orders_pairs_and_picks_peers():
    cfg = config.BenchConfig(ffns=["relu", "swiglu"], contenders=["lightning", "plain-split", "hf"])
    assert engine.plan(cfg, have_hf=True) == [("relu", "lightning"), ("swiglu", "lightning"),
                                              ("swiglu", "plain-split"), ("swiglu", "hf-llama")]
    assert engine.plan(cfg, have_hf=False) == [("relu", "lightning"), ("swiglu", "lightning"),
                                               ("swiglu", "plain-split")]


def test_device_name_takes_a_device(monkeypatch):
    from glubench.train.task import device_name

    cpu = device_name(torch.device("cpu"))
    assert cpu == device_name("cpu") and cpu.startswith("cpu (") and f"{torch.get_num_threads()} threads" in cpu
    asked = []
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: asked.append(device) or "NVIDIA H100")
    assert device_name(torch.device("cuda", 1)) == "NVIDIA H100" and device_name("cuda:1") == "NVIDIA H100"
    assert asked == [torch.device("cuda", 1)] * 2
