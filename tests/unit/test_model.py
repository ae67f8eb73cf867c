import math

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


# --- the Llama-family block: model.norm=rmsnorm, model.pos=rope ---


def test_norm_and_pos_values_are_checked():
    with pytest.raises(ValueError) as e:
        small(norm="x")
    assert str(e.value) == "model.norm='x' is not known; valid: layernorm, rmsnorm"
    with pytest.raises(ValueError) as e:
        small(pos="alibi")
    assert str(e.value) == "model.pos='alibi' is not known; valid: learned, rope"
    with pytest.raises(ValueError, match="model.d_model/model.n_heads=3 must be even"):
        small(pos="rope", d_model=12, n_heads=4)
    assert small(pos="learned", d_model=12, n_heads=4).head_dim == 3  # odd heads only matter for rope


def test_rmsnorm_output_is_the_formula_and_gains_start_at_one():
    """Zhang & Sennrich 2019, eq. 4: ``x / sqrt(mean(x²) + eps) · g``, with no mean subtraction and no bias."""
    torch.manual_seed(0)
    model = Transformer(small(norm="rmsnorm", bias=True))  # bias=true: Linears only, RMSNorm has a gain only
    norms = [model.ln_f] + [m for b in model.blocks for m in (b.ln_attn, b.ln_ffn)]
    for norm in norms:
        assert [k for k, _ in norm.named_parameters()] == ["weight"]
        assert torch.equal(norm.weight, torch.ones(32))
    norm = model.blocks[1].ln_ffn
    with torch.no_grad():
        norm.weight.uniform_(0.5, 2.0)
    x = 3.0 + 2.0 * torch.randn(4, 5, 32)  # a non-zero mean: LayerNorm would remove it, RMSNorm must not
    want = torch.stack([
        torch.stack([x[b, t] / math.sqrt(sum(v * v for v in x[b, t].tolist()) / 32 + 1e-5) for t in range(5)])
        for b in range(4)
    ]) * norm.weight.detach()
    torch.testing.assert_close(norm(x), want, rtol=1e-5, atol=1e-6)
    model.reset_parameters()
    assert torch.equal(norm.weight, torch.ones(32))


def test_rope_scores_depend_only_on_the_offset():
    """RoFormer eq. 34: with the same q and k at every position, ``q_i · k_j`` after rotation is a Toeplitz matrix,
    equals ``q · k`` at i = j, and is ``Σ_p (q_2p k_2p + q_2p+1 k_2p+1) cos((j-i)θ_p) + (q_2p+1 k_2p - q_2p k_2p+1)
    sin((j-i)θ_p)`` with ``θ_p = 10000^(-2p/D)``."""
    from glubench.nn.transformer import apply_rope, rope_angles

    torch.manual_seed(0)
    T, D = 12, 8
    q0, k0 = torch.randn(D, dtype=torch.float64), torch.randn(D, dtype=torch.float64)
    cos, sin = rope_angles(T, D)
    q = apply_rope(q0.expand(1, 1, T, D), cos.double(), sin.double())[0, 0]  # (T, D)
    k = apply_rope(k0.expand(1, 1, T, D), cos.double(), sin.double())[0, 0]
    S = q @ k.T  # (T, T)
    for i in range(T - 1):
        for j in range(T - 1):
            assert S[i + 1, j + 1].item() == pytest.approx(S[i, j].item(), abs=1e-5)
    torch.testing.assert_close(S.diagonal(), (q0 @ k0).expand(T), rtol=0, atol=1e-6)
    for i, j in [(0, 5), (7, 2), (11, 0)]:
        want = 0.0
        for p in range(D // 2):
            theta = 10000.0 ** (-2 * p / D)
            a, b, c, d = q0[2 * p].item(), q0[2 * p + 1].item(), k0[2 * p].item(), k0[2 * p + 1].item()
            want += (a * c + b * d) * math.cos((j - i) * theta) + (b * c - a * d) * math.sin((j - i) * theta)
        assert S[i, j].item() == pytest.approx(want, abs=1e-5)
    assert not torch.allclose(S[0, 1], S[0, 2])  # the rotation does act: the score varies with the offset


def test_rope_attention_matches_complex_rotation():
    """The attention module rotates q and k as complex numbers ``(x_2p + i·x_2p+1)·e^{i·m·θ_p}`` (RoFormer §3.2)
    before a causal softmax; checked against that spelling, written out here."""
    torch.manual_seed(0)
    cfg = small(pos="rope", norm="rmsnorm")  # C 32, H 4, T 16
    model = Transformer(cfg)
    attn, B, T, C, H = model.blocks[0].attn, 2, 10, 32, 4
    x = torch.randn(B, T, C)
    got = attn(x, (model.rope_cos[:T], model.rope_sin[:T]))
    q, k, v = (t.view(B, T, H, C // H).transpose(1, 2) for t in attn.qkv(x).split(C, dim=2))
    theta = torch.tensor([10000.0 ** (-2 * p / (C // H)) for p in range(C // H // 2)])
    turn = torch.polar(torch.ones(T, C // H // 2), torch.arange(T)[:, None] * theta)  # e^{i m θ_p}, (T, D/2)

    def rotate(t):
        return torch.view_as_real(torch.view_as_complex(t.reshape(B, H, T, -1, 2).contiguous()) * turn).flatten(-2)

    scores = rotate(q) @ rotate(k).transpose(-1, -2) / math.sqrt(C // H)
    scores = scores.masked_fill(torch.ones(T, T, dtype=torch.bool).triu(1), float("-inf"))
    want = attn.proj((scores.softmax(-1) @ v).transpose(1, 2).reshape(B, T, C))
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)


def test_rope_model_is_causal_and_has_no_position_parameters():
    torch.manual_seed(0)
    model = Transformer(small("swiglu", pos="rope", norm="rmsnorm")).eval()
    assert model.pos_emb is None
    assert not any("pos" in k or "rope" in k for k in model.state_dict())  # the angles are not checkpointed
    assert model.rope_cos.shape == model.rope_sin.shape == (16, 4)  # (seq_len, head_dim/2)
    idx = torch.randint(0, 64, (2, 16))
    logits = model(idx)
    idx2 = idx.clone()
    idx2[:, 10:] = (idx2[:, 10:] + 1) % 64  # change the future only
    torch.testing.assert_close(model(idx2)[:, :10], logits[:, :10])
    assert not torch.allclose(model(idx2)[:, 10:], logits[:, 10:])
    # Order matters: with one layer and no positions, the last token attends to the prefix as a set, so
    # swapping its first two tokens would leave its logits unchanged; the rotation makes them differ.
    one = Transformer(small("swiglu", pos="rope", norm="rmsnorm", n_layers=1)).eval()
    idx[:, 0], idx[:, 1] = 1, 2
    swapped = idx[:, [1, 0, *range(2, 16)]]
    assert not torch.allclose(one(swapped)[:, -1], one(idx)[:, -1])
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert model(idx).dtype == torch.bfloat16  # the float32 angles do not promote q, k out of bf16


@pytest.mark.parametrize("ffn", ["relu", "swiglu"])
def test_llama_block_counts_by_hand(ffn):
    """norm=rmsnorm, pos=rope, bias=false: one gain vector per norm, no position embedding."""
    cfg = small(ffn, norm="rmsnorm", pos="rope")
    c = count_params(Transformer(cfg))
    d, L, V, h = 32, 2, 64, cfg.ffn_hidden
    ffn_params = (3 if cfg.gated else 2) * d * h
    assert c.ffn_per_layer == ffn_params and c.ffn_total == L * ffn_params
    assert c.nonembedding == L * (3 * d * d + d * d + ffn_params + 2 * d) + d  # qkv, proj, ffn, two gains; final gain
    assert c.total == c.nonembedding + V * d  # the token embedding only (tied to the head)
    assert c.matmul == L * (4 * d * d + ffn_params) + d * V
    learned = count_params(Transformer(small(ffn)))
    assert learned.total - c.total == 16 * d  # tiny's block differs by the position embedding only (bias=false)
    assert learned.ffn_per_layer == c.ffn_per_layer and learned.matmul == c.matmul


def test_llama_tiny_preset_matches_tiny_sizes_and_ffn(compose_cfg):
    from glubench.train.config_rules import model_config

    for ffn in ("relu", "swiglu", "geglu"):
        tiny = model_config(compose_cfg(["model=tiny", f"model.ffn={ffn}"]))
        llama = model_config(compose_cfg(["model=llama_tiny", f"model.ffn={ffn}"]))
        assert (llama.norm, llama.pos, llama.bias) == ("rmsnorm", "rope", False)
        assert (tiny.norm, tiny.pos) == ("layernorm", "learned")
        sizes = ("vocab_size", "d_model", "n_layers", "n_heads", "seq_len", "d_ff", "ffn_hidden", "init", "init_std")
        assert [getattr(llama, k) for k in sizes] == [getattr(tiny, k) for k in sizes]
        assert llama.d_model == 128 and llama.n_layers == 4 and llama.n_heads == 4 and llama.seq_len == 128
        assert llama.ffn_hidden == (round(2 * 512 / 3) if ffn != "relu" else 512)  # 341 gated, 512 relu
        a, b = count_params(Transformer(tiny)), count_params(Transformer(llama))
        assert a.ffn_per_layer == b.ffn_per_layer
        assert a.total - b.total == 128 * 128  # seq_len × d_model of position embedding
