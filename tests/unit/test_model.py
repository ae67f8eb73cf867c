import math
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

from glubench.nn.config import PAPER_VARIANTS, ModelConfig
from glubench.nn.flops import flops_per_token
from glubench.nn.transformer import Transformer, count_params


def small(ffn="relu", **kw):
    base = dict(vocab_size=64, d_model=32, n_layers=2, n_heads=4, seq_len=16, ffn=ffn)
    return ModelConfig(**{**base, **kw})


def test_config_derives_and_checks():
    cfg = small("swiglu")
    assert cfg.d_ff == 128 and cfg.ffn_hidden == round(2 * 128 / 3)
    with pytest.raises(ValueError, match="model.d_model=30 must be divisible by model.n_heads=4"):
        small(d_model=30)
    with pytest.raises(ValueError, match="model.ffn='nope'"):
        small("nope")
    with pytest.raises(ValueError, match="model.init"):
        small(init="xavier")


def test_unknown_ffn_message_lists_every_variant():
    with pytest.raises(ValueError) as e:
        small("nope")
    assert str(e.value) == ("model.ffn='nope' is not a known FFN variant; valid: relu, gelu, swish, glu, "
                            "bilinear, reglu, geglu, swiglu, mish, elu, relu2, mishglu")


def test_config_validates_without_torch():
    """The ``glubench`` command validates a config before importing torch (it must answer in < 2 s)."""
    code = ("import sys; from glubench.nn.config import ModelConfig; "
            "c = ModelConfig(ffn='swiglu', d_model=768, d_ff=3072); "
            "print(c.ffn_hidden, c.gated, 'torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["2048", "True", "False"]


def test_input_longer_than_seq_len_is_a_clear_error():
    model = Transformer(small("relu"))  # seq_len 16
    assert model(torch.zeros(1, 16, dtype=torch.long)).shape == (1, 16, 64)
    with pytest.raises(ValueError) as e:
        model(torch.zeros(2, 17, dtype=torch.long))
    assert str(e.value) == "input of T=17 tokens is longer than model.seq_len=16"


def test_forward_shape_and_causality():
    torch.manual_seed(0)
    model = Transformer(small("geglu")).eval()
    idx = torch.randint(0, 64, (2, 16))
    logits = model(idx)
    assert logits.shape == (2, 16, 64)
    idx2 = idx.clone()
    idx2[:, 10:] = (idx2[:, 10:] + 1) % 64  # change the future only
    torch.testing.assert_close(model(idx2)[:, :10], logits[:, :10])
    assert not torch.allclose(model(idx2)[:, 10:], logits[:, 10:])


def test_tied_embeddings_and_counts():
    cfg = small("swiglu", bias=False)
    model = Transformer(cfg)
    assert model.lm_head.weight is model.tok_emb.weight
    c = count_params(model)
    d, L, V, T, h = 32, 2, 64, 16, cfg.ffn_hidden
    per_layer = 3 * d * d + d * d + 3 * d * h + 2 * d  # qkv, proj, ffn, two LayerNorm weights
    assert c.ffn_per_layer == 3 * d * h
    assert c.nonembedding == L * per_layer + d  # + final LayerNorm
    assert c.total == c.nonembedding + V * d + T * d
    assert c.matmul == L * (4 * d * d + 3 * d * h) + d * V


def test_dropout_is_stochastic_only_in_train_mode():
    torch.manual_seed(0)
    idx = torch.randint(0, 64, (2, 16))
    model = Transformer(small("swiglu", dropout=0.5))
    model.train()
    assert not torch.equal(model(idx), model(idx))  # a fresh dropout mask on every call
    model.eval()
    assert torch.equal(model(idx), model(idx))
    no_dropout = Transformer(small("swiglu", dropout=0.0)).train()
    assert torch.equal(no_dropout(idx), no_dropout(idx))


def test_bias_model_counts_and_trains():
    """bias=true: every Linear and LayerNorm has a bias; the gated FFN width follows the bias rule."""
    torch.manual_seed(0)
    cfg = small("swiglu", bias=True)  # d_model 32, d_ff 128
    d, L, V, T = 32, 2, 64, 16
    h = 85  # round(128·(2·32+1)/(3·32+2)) = round(8320/98) = round(84.9)
    assert cfg.ffn_hidden == h
    model = Transformer(cfg)
    c = count_params(model)
    ffn = 3 * d * h + 2 * h + d  # W and V with their biases, W2 with its bias
    assert c.ffn_per_layer == ffn == 8362
    per_layer = (3 * d * d + 3 * d) + (d * d + d) + ffn + 2 * 2 * d  # qkv, proj, ffn, two LayerNorms
    assert c.total == L * per_layer + 2 * d + V * d + T * d  # + final LayerNorm, embeddings
    idx = torch.randint(0, V, (2, T))
    loss = F.cross_entropy(model(idx).flatten(0, 1), idx.flatten())
    loss.backward()
    assert math.isfinite(loss.item())
    for name, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
    assert model.blocks[0].ffn.w_in.bias.grad.abs().sum() > 0


@pytest.mark.parametrize("init", ["scaled_normal", "normal", "kaiming"])
def test_init_identical_across_variants(init):
    """Every variant's matrices follow the scheme's std rule (never a per-variant rule)."""
    for name in PAPER_VARIANTS:
        torch.manual_seed(0)
        m = Transformer(small(name, init=init, d_model=64, n_heads=4))
        assert m.tok_emb.weight.std().item() == pytest.approx(0.02, rel=0.06)
        qkv = m.blocks[1].attn.qkv.weight
        assert qkv.std().item() == pytest.approx(math.sqrt(2 / 64) if init == "kaiming" else 0.02, rel=0.06)
        w_in, w_out = m.blocks[0].ffn.w_in.weight, m.blocks[0].ffn.w_out.weight
        if init == "kaiming":
            exp_in, exp_out = math.sqrt(2 / 64), math.sqrt(2 / m.cfg.ffn_hidden)
        else:
            exp_in = 0.02
            exp_out = 0.02 / math.sqrt(2 * 2) if init == "scaled_normal" else 0.02
        assert w_in.std().item() == pytest.approx(exp_in, rel=0.06)
        assert w_out.std().item() == pytest.approx(exp_out, rel=0.06)


@pytest.mark.parametrize("name", PAPER_VARIANTS)
def test_fan_in_init_matches_one_over_sqrt_fan_in(name):
    """init=fan_in (the Mesh-TF default of Shazeer 2020): every matrix has std 1/sqrt(its fan-in)."""
    torch.manual_seed(0)
    m = Transformer(small(name, init="fan_in", d_model=96, n_heads=4, vocab_size=256, seq_len=64))
    d, h = 96, m.cfg.ffn_hidden
    expected = {"tok_emb.weight": 1 / math.sqrt(d), "pos_emb.weight": 1 / math.sqrt(d)}
    for i in range(2):
        expected |= {f"blocks.{i}.attn.qkv.weight": 1 / math.sqrt(d), f"blocks.{i}.attn.proj.weight": 1 / math.sqrt(d),
                     f"blocks.{i}.ffn.w_in.weight": 1 / math.sqrt(d), f"blocks.{i}.ffn.w_out.weight": 1 / math.sqrt(h)}
    matrices = {k: p for k, p in m.named_parameters() if p.dim() == 2}
    assert set(matrices) == set(expected)  # lm_head is tied to tok_emb: not a parameter of its own
    for key, std in expected.items():
        assert matrices[key].std().item() == pytest.approx(std, rel=0.05), key
    ffn = m.blocks[0].ffn
    if ffn.gated:  # the gate W and the value V each follow the rule, not only their concatenation
        assert ffn.gate_weight.std().item() == pytest.approx(1 / math.sqrt(d), rel=0.05)
        assert ffn.value_weight.std().item() == pytest.approx(1 / math.sqrt(d), rel=0.05)
    assert m.lm_head.weight.std().item() == pytest.approx(1 / math.sqrt(d), rel=0.05)


@pytest.mark.parametrize("ffn", ["relu", "swiglu"])
def test_flops_formula_matches_flop_counter(ffn):
    cfg = small(ffn, d_model=64, n_layers=3, n_heads=4, seq_len=64, vocab_size=128)
    model = Transformer(cfg)
    B, T = 2, cfg.seq_len
    idx = torch.randint(0, cfg.vocab_size, (B, T))
    counter = FlopCounterMode(display=False)
    # The math backend spells attention as matmuls, which the counter sees on every device.
    with counter, sdpa_kernel(SDPBackend.MATH):
        loss = F.cross_entropy(model(idx).flatten(0, 1), idx.flatten())
        loss.backward()
    measured = counter.get_total_flops() / (B * T)
    analytic = flops_per_token(count_params(model).matmul, cfg.n_layers, cfg.d_model, T)
    assert analytic == pytest.approx(measured, rel=0.05)
