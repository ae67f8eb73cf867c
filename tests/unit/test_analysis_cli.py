import json

import numpy as np
import pytest
import torch

from glubench.analysis.ffn_regions import _capture, region_counts, stack_layers
from glubench.analysis.hooks import run_with_hooks
from glubench.analysis.init_variance import he_relu_stack, transformer_profile
from glubench.analysis.regions import count_on_segment, mlp_layers
from glubench.nn.config import ModelConfig
from glubench.nn.transformer import Transformer


def test_he_init_keeps_var_z_at_two():
    # layer 0: unit-variance Gaussian input; layer 1: its ReLU output (second moment 1, mean > 0)
    for r in he_relu_stack(width=2048, depth=2, n=1024, seed=0):
        assert r["var_z"] == pytest.approx(2.0, rel=0.05)
        assert r["second_moment_out"] == pytest.approx(1.0, rel=0.05)
    # a fan-in that is not He-scaled breaks it: the same check must be able to fail
    g = torch.Generator().manual_seed(0)
    x = torch.randn(1024, 1024, generator=g, dtype=torch.float64)
    W = torch.randn(1024, 1024, generator=g, dtype=torch.float64) * (1.0 / 1024) ** 0.5  # LeCun: Var(z) = 1
    assert float((x @ W.T).var()) == pytest.approx(1.0, rel=0.05)


def tiny(ffn="swiglu", **kw):
    return Transformer(ModelConfig(vocab_size=16, d_model=8, n_layers=2, n_heads=2, seq_len=8, ffn=ffn, **kw))


def _no_hooks(model) -> bool:
    return not any(m._forward_hooks or m._forward_pre_hooks for m in model.modules())


def test_run_with_hooks_captures_in_eval_mode_and_cleans_up():
    torch.manual_seed(0)
    model = tiny(dropout=0.5).train()
    idx = torch.randint(0, 16, (2, 8))
    seen = {}

    def pre(m, a):
        seen["pre"] = (a[0].clone(), m.training, torch.is_grad_enabled())

    def fwd(m, a, o):
        seen["fwd"] = o.clone()

    logits = run_with_hooks(model, idx, [(model.ln_f, pre, "pre"), (model.blocks[0].ffn, fwd)])
    x, training, grad = seen["pre"]
    assert not training and not grad and model.training and _no_hooks(model)
    model.eval()
    with torch.no_grad():  # the same numbers by hand, in eval mode (dropout off)
        h = model.tok_emb(idx) + model.pos_emb(torch.arange(8))
        h = h + model.blocks[0].attn(model.blocks[0].ln_attn(h))
        torch.testing.assert_close(seen["fwd"], model.blocks[0].ffn(model.blocks[0].ln_ffn(h)))
        torch.testing.assert_close(x, model.blocks[1](h + seen["fwd"]))
        torch.testing.assert_close(logits, model(idx))


def test_run_with_hooks_cleans_up_after_errors():
    model = tiny().train()
    idx = torch.zeros(1, 8, dtype=torch.long)

    def boom(m, a, o):
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        run_with_hooks(model, idx, [(model.blocks[0].ffn, lambda m, a, o: None), (model.blocks[1].ffn, boom)])
    assert model.training and _no_hooks(model)
    with pytest.raises(ValueError, match="kind='post' is not known; valid: forward, pre"):
        run_with_hooks(model, idx, [(model.ln_f, lambda m, a: None, "pre"), (model.ln_f, boom, "post")])
    assert model.training and _no_hooks(model)
    with pytest.raises(ValueError, match="not the model itself"):
        run_with_hooks(model, idx, [(model, boom)])


def test_run_with_hooks_runs_compiled_models_eagerly():
    """Compiled in place (``model.compile()``) or wrapped (``torch.compile(model)``): the hooks still fire
    and nothing is compiled (the Python forward runs)."""
    torch.manual_seed(0)
    model = tiny().eval()
    idx = torch.randint(0, 16, (2, 8))
    with torch.no_grad():
        want = model(idx)

    def no_compiling(gm, example_inputs):  # a torch.compile backend that fails if a graph is compiled
        raise AssertionError("compiled")

    wrapped = torch.compile(model, backend=no_compiling)
    model.compile(backend=no_compiling)
    seen = []
    for m in (model, wrapped):
        seen.clear()
        out = run_with_hooks(m, idx, [(model.blocks[1].ffn.w_in, lambda mod, a, o: seen.append(o))])
        assert len(seen) == 1 and _no_hooks(model)
        torch.testing.assert_close(out, want, rtol=0, atol=0)
    with pytest.raises(Exception, match="compiled"):  # the backend does fail for a compiled call
        model(idx)


def test_transformer_profile_matches_direct_computation():
    torch.manual_seed(0)
    model = tiny()
    idx = torch.randint(0, 16, (3, 8))
    prof = transformer_profile(model, idx)
    assert model.training and _no_hooks(model)  # the mode it came in, no hooks left
    assert [p["layer"] for p in prof] == [0, 1, 2]
    with torch.no_grad():
        x = model.tok_emb(idx) + model.pos_emb(torch.arange(8))
        assert prof[0]["resid_var"] == pytest.approx(float(x.var(unbiased=False)), rel=1e-5)
        x = x + model.blocks[0].attn(model.blocks[0].ln_attn(x))
        u = model.blocks[0].ln_ffn(x)
        gate = u @ model.blocks[0].ffn.gate_weight.T
        assert prof[0]["ffn_z_var"] == pytest.approx(float(gate.var(unbiased=False)), rel=1e-5)
        assert prof[0]["ffn_in_var"] == pytest.approx(float(u.var(unbiased=False)), rel=1e-5)


def test_transformer_profile_of_a_rope_model():
    """pos=rope: the residual stream entering block 0 is the token embedding alone; the FFN input is RMSNorm's."""
    torch.manual_seed(0)
    model = tiny(norm="rmsnorm", pos="rope")
    idx = torch.randint(0, 16, (3, 8))
    prof = transformer_profile(model, idx)
    with torch.no_grad():
        x = model.tok_emb(idx)
        assert prof[0]["resid_var"] == pytest.approx(float(x.var(unbiased=False)), rel=1e-5)
        x = x + model.blocks[0].attn(model.blocks[0].ln_attn(x), (model.rope_cos, model.rope_sin))
        u = x / torch.sqrt(x.square().mean(-1, keepdim=True) + 1e-5)  # RMSNorm with its initial gain 1
        assert prof[0]["ffn_in_var"] == pytest.approx(float(u.var(unbiased=False)), rel=1e-5)


@pytest.mark.parametrize("norm", ["layernorm", "rmsnorm"])
def test_stack_surrogate_is_the_norm_at_its_own_scale(norm):
    """With σ̄ set to one state's own scale (LayerNorm: its std; RMSNorm: its root mean square, no mean removed),
    the linearised norm is exact there: the surrogate's pre-activations are ``W1 · ln_ffn(x) + b1``."""
    torch.manual_seed(0)
    model = tiny("relu", norm=norm, bias=True).double()
    ln = model.blocks[0].ln_ffn
    with torch.no_grad():
        for p in ln.parameters():
            p.uniform_(0.5, 1.5)
    x = 2.0 + torch.randn(8, dtype=torch.float64)  # a mean far from 0: centring matters
    centred = x - x.mean() if norm == "layernorm" else x
    sigma = float(torch.sqrt(centred.square().mean() + 1e-5))
    layer = stack_layers(model, [sigma, sigma])[0]
    with torch.no_grad():
        want = model.blocks[0].ffn.w_in(ln(x)).numpy()
    np.testing.assert_allclose(layer.A @ x.numpy() + layer.c, want, rtol=1e-10, atol=1e-12)
    # σ̄ as region_counts measures it: that scale averaged over the probe tokens' residual states
    rec = _capture(model, torch.randint(0, 16, (2, 8)))
    r = rec[("resid", 0)]
    r = r - r.mean(-1, keepdim=True) if norm == "layernorm" else r
    assert rec[("sigma", 0)] == pytest.approx(float(torch.sqrt(r.square().mean(-1) + 1e-5).mean()), rel=1e-12)


@pytest.mark.parametrize("ffn,norm", [("relu", "layernorm"), ("reglu", "layernorm"), ("relu", "rmsnorm")])
def test_region_counts_on_a_transformer(ffn, norm):
    torch.manual_seed(0)
    model = Transformer(ModelConfig(vocab_size=16, d_model=8, n_layers=2, n_heads=2, seq_len=8, ffn=ffn, d_ff=24,
                                    norm=norm, pos="rope" if norm == "rmsnorm" else "learned"))
    out = region_counts(model, torch.randint(0, 16, (2, 8)), n_paths=3)
    h = model.cfg.ffn_hidden
    for layer in out["per_layer"]:
        assert 1 <= layer["segment_mean"] <= layer["segment_max"] <= h + 1
        assert 1 <= layer["plane_mean"] <= 1 + h + h * (h - 1) // 2
    assert (out["stack"] is not None) == (ffn == "relu")
    if out["stack"]:
        c = out["stack"]["per_layer_cumulative"]
        assert c[0] == out["per_layer"][0]["segment_mean"]  # block 0 of the stack is layer 0's FFN on the same pairs
        assert c[1] >= c[0]


def test_region_counts_refuse_smooth_ffns():
    model = Transformer(ModelConfig(vocab_size=16, d_model=8, n_layers=1, n_heads=2, seq_len=8, ffn="swiglu"))
    with pytest.raises(ValueError, match="model.ffn='swiglu'"):
        region_counts(model, torch.zeros(1, 8, dtype=torch.long))


def test_cli_init_writes_profiles(tmp_path, capsys):
    from glubench.cli.analyze import main

    path = tmp_path / "init.json"
    assert main(["init", "--ffn", "relu,swiglu", "--init", "kaiming,scaled_normal", "--he-width", "256",
                 "--batch", "2", "--json", str(path), "model=nano"]) == 0
    data = json.loads(path.read_text())
    assert [(r["ffn"], r["init"]) for r in data["profiles"]] == [
        ("relu", "kaiming"), ("relu", "scaled_normal"), ("swiglu", "kaiming"), ("swiglu", "scaled_normal")]
    assert len(data["profiles"][0]["layers"]) == 3  # nano: 2 blocks + the final residual stream
    # kaiming FFN weights are far larger than N(0, 0.02²): the pre-activations show it
    assert data["profiles"][0]["layers"][0]["ffn_z_var"] > 100 * data["profiles"][1]["layers"][0]["ffn_z_var"]
    assert "holds within 5%" in capsys.readouterr().out


def test_cli_init_ffn_output_rms_follows_the_init_rule(tmp_path, capsys):
    """FFN output RMS at init against hand-derived values (model=nano: d_model 32, 2 layers, d_ff 128).

    The FFN input is a LayerNorm output, so E[x²] = 1.  relu: z = x·W1 has Var(z) = d·σ_in², the
    hidden units E[relu(z)²] = Var(z)/2, and the output Var = d_ff·σ_out²·Var(z)/2.
    fan_in: σ_in² = 1/d, σ_out² = 1/d_ff -> Var = 1/2.  scaled_normal: σ_in = 0.02,
    σ_out = 0.02/sqrt(2·2) -> Var = 128·1e-4·(32·4e-4)/2.
    """
    from glubench.cli.analyze import main

    path = tmp_path / "init.json"
    assert main(["init", "--ffn", "relu,swiglu", "--init", "fan_in,scaled_normal", "--he-width", "64",
                 "--batch", "8", "--json", str(path), "model=nano"]) == 0
    prof = {(r["ffn"], r["init"]): r["layers"] for r in json.loads(path.read_text())["profiles"]}
    rms = {k: np.mean([p["ffn_out_rms"] for p in v if "ffn_out_rms" in p]) for k, v in prof.items()}
    assert rms[("relu", "fan_in")] == pytest.approx(np.sqrt(0.5), rel=0.15)
    assert rms[("relu", "scaled_normal")] == pytest.approx(np.sqrt(128 * 1e-4 * 32 * 4e-4 / 2), rel=0.15)
    # the handicap: under a constant small std the gated FFN's output is a product of two small
    # projections, several times smaller than relu's; under fan_in the two are comparable
    assert rms[("swiglu", "scaled_normal")] < rms[("relu", "scaled_normal")] / 3
    assert rms[("swiglu", "fan_in")] > rms[("relu", "fan_in")] / 2
    out = capsys.readouterr().out
    assert "RMS at initialization" in out and "fan_in" in out


def test_cli_rejects_unknown_variant():
    from glubench.cli.analyze import main

    with pytest.raises(SystemExit, match="--ffn=swigly is not known"):
        main(["init", "--ffn", "swigly"])


def test_small_mlp_segment_counts_match_numpy_reference():
    from glubench.cli.analyze import tiny_2d_mlp

    before, after, _ = tiny_2d_mlp(seed=0, steps=5)
    layers = mlp_layers([w for w, _ in after], [b for _, b in after])
    t = np.linspace(0, 1, 100_001)[:, None]
    pts = np.array([-1.0, -1.0]) + t * 2.0
    h, pats = pts, []
    for W, b in after:
        z = h @ W.T + b
        pats.append(z > 0)
        h = np.maximum(z, 0)
    pats = np.concatenate(pats, axis=1)
    assert count_on_segment(layers, np.array([-1.0, -1.0]), np.array([1.0, 1.0]))[-1] == \
        1 + np.any(pats[1:] != pats[:-1], axis=1).sum()


def test_cli_help_is_plain_text_and_every_option_is_explained():
    import argparse

    from glubench.cli.analyze import build_parser, default_out

    parser = build_parser()
    assert "``" not in parser.description and parser.description.startswith("Activation diagnostics")
    subparsers = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    for name, sub in subparsers.choices.items():
        for action in sub._actions:
            assert action.help, f"glubench-analyze {name} {action.option_strings or action.dest} has no help"
    # regions writes under outputs/, as every other command does
    out = default_out("regions")
    assert out.parts[:3] == ("outputs", "analyze", "regions") and len(out.parts) == 5
    assert "outputs/analyze/regions/<date>/<time>" in subparsers.choices["regions"].format_help()
