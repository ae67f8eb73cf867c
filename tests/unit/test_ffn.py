import itertools
import math

import pytest
import torch

from glubench.nn.config import (
    FFN_VARIANTS,
    PAPER_VARIANTS,
    ModelConfig,
    ffn_hidden_dim,
    ffn_params,
    get_variant,
    matching_error,
)
from glubench.nn.ffn import MLP, GatedMLP, build_ffn
from glubench.nn.transformer import Block


def phi(x):  # standard normal CDF, written out
    return 0.5 * (1.0 + torch.erf(x / math.sqrt(2.0)))


# Hand-written activations, independent of the ones in glubench.ffn.
REFERENCE_ACT = {
    "relu": lambda z: torch.where(z > 0, z, torch.zeros_like(z)),
    "gelu": lambda z: z * phi(z),
    "swish": lambda z: z / (1 + torch.exp(-z)),
    "glu": lambda z: 1 / (1 + torch.exp(-z)),
    "bilinear": lambda z: z,
    "reglu": lambda z: torch.where(z > 0, z, torch.zeros_like(z)),
    "geglu": lambda z: z * phi(z),
    "swiglu": lambda z: z / (1 + torch.exp(-z)),
    "mish": lambda z: z * torch.tanh(torch.log1p(torch.exp(z))),
    "elu": lambda z: torch.where(z > 0, z, torch.exp(z) - 1),
    "relu2": lambda z: torch.where(z > 0, z * z, torch.zeros_like(z)),
    "mishglu": lambda z: z * torch.tanh(torch.log1p(torch.exp(z))),
}
EXTRA_VARIANTS = ("mish", "elu", "relu2", "mishglu")
GATED = ("glu", "bilinear", "reglu", "geglu", "swiglu", "mishglu")


def matched_ffn(name, d_model, d_ff, bias=False, multiple_of=None):
    """The FFN a model of these sizes builds, at the width ModelConfig derives (the one matching rule)."""
    cfg = ModelConfig(d_model=d_model, n_heads=1, ffn=name, d_ff=d_ff, bias=bias, ffn_multiple_of=multiple_of)
    return build_ffn(name, d_model, cfg.ffn_hidden, bias=bias)


def test_registry_holds_the_paper_variants():
    assert len(PAPER_VARIANTS) == 8 and set(PAPER_VARIANTS) <= set(FFN_VARIANTS)
    assert set(FFN_VARIANTS) == set(REFERENCE_ACT)  # every variant has a hand-written reference
    assert [n for n in EXTRA_VARIANTS if build_ffn(n, 4, 3).gated] == ["mishglu"]
    assert [n for n in PAPER_VARIANTS if build_ffn(n, 4, 3).gated] == ["glu", "bilinear", "reglu", "geglu", "swiglu"]


def test_block_builds_each_variant_at_its_matched_width():
    # d_model 12, d_ff = 4·12 = 48: non-gated MLP of width 48, gated GatedMLP of width 2/3·48 = 32.
    for name in FFN_VARIANTS:
        ffn = Block(ModelConfig(d_model=12, n_heads=1, ffn=name)).ffn
        assert type(ffn) is (GatedMLP if name in GATED else MLP), name
        assert ffn.hidden == (32 if name in GATED else 48), name


def test_unknown_variant_lists_the_valid_ones():
    with pytest.raises(ValueError, match="model.ffn='swigly'.*relu.*swiglu"):
        build_ffn("swigly", 4, 4)
    valid = "relu, gelu, swish, glu, bilinear, reglu, geglu, swiglu, mish, elu, relu2, mishglu"
    for lookup in (lambda name: build_ffn(name, 4, 4), get_variant):
        with pytest.raises(ValueError) as e:
            lookup("swigly")
        assert str(e.value) == f"model.ffn='swigly' is not a known FFN variant; valid: {valid}"


@pytest.mark.parametrize("name", PAPER_VARIANTS + EXTRA_VARIANTS)
@pytest.mark.parametrize("bias", [False, True])
def test_variant_matches_reference_formula(name, bias):
    torch.manual_seed(0)
    d, d_ff = 6, 12
    ffn = matched_ffn(name, d, d_ff, bias=bias).double()
    h = ffn.hidden
    W1 = torch.randn(h, d, dtype=torch.float64)
    V = torch.randn(h, d, dtype=torch.float64)
    W2 = torch.randn(d, h, dtype=torch.float64)
    b1, bv, b2 = (torch.randn(h, dtype=torch.float64), torch.randn(h, dtype=torch.float64),
                  torch.randn(d, dtype=torch.float64))
    with torch.no_grad():
        if ffn.gated:
            ffn.w_in.weight.copy_(torch.cat([W1, V]))
            if bias:
                ffn.w_in.bias.copy_(torch.cat([b1, bv]))
        else:
            ffn.w_in.weight.copy_(W1)
            if bias:
                ffn.w_in.bias.copy_(b1)
        ffn.w_out.weight.copy_(W2)
        if bias:
            ffn.w_out.bias.copy_(b2)
    x = torch.randn(3, 5, d, dtype=torch.float64)
    act = REFERENCE_ACT[name]
    z = x @ W1.T + (b1 if bias else 0)
    hidden = act(z) * (x @ V.T + (bv if bias else 0)) if ffn.gated else act(z)
    expected = hidden @ W2.T + (b2 if bias else 0)
    torch.testing.assert_close(ffn(x), expected, rtol=1e-12, atol=1e-12)


def test_gate_and_value_order():
    """Rows [0, h) of the fused weight are the gate W (activated), rows [h, 2h) the value V."""
    ffn = matched_ffn("reglu", 2, 3)
    assert isinstance(ffn, GatedMLP) and ffn.hidden == 2
    with torch.no_grad():
        ffn.w_in.weight.copy_(torch.tensor([[1.0, 0.0], [0.0, 1.0],      # W, the gate
                                            [-2.0, 0.0], [0.0, -3.0]]))  # V, the value
        ffn.w_out.weight.copy_(torch.eye(2))
    x = torch.tensor([[1.0, -1.0]])
    # relu(xW) = [1, 0], xV = [-2, 3]  ->  [-2, 0].
    # With W and V swapped it would be relu(xV) * xW = [0, 3] * [1, -1] = [0, -3].
    torch.testing.assert_close(ffn(x), torch.tensor([[-2.0, 0.0]]))
    torch.testing.assert_close(ffn.gate_weight, torch.tensor([[1.0, 0.0], [0.0, 1.0]]))
    torch.testing.assert_close(ffn.value_weight, torch.tensor([[-2.0, 0.0], [0.0, -3.0]]))


@pytest.mark.parametrize(
    "d_model,mult,bias",
    list(itertools.product([64, 100, 128, 200, 256, 301, 512, 768, 1000], [2, 3, 4, 8], [False, True])),
)
def test_parameter_matching_within_half_percent(d_model, mult, bias):
    d_ff = mult * d_model
    base = sum(p.numel() for p in matched_ffn("relu", d_model, d_ff, bias=bias).parameters())
    assert base == 2 * d_model * d_ff + (d_ff + d_model if bias else 0)
    for name in PAPER_VARIANTS:
        n = sum(p.numel() for p in matched_ffn(name, d_model, d_ff, bias=bias).parameters())
        assert abs(n / base - 1) <= 0.005, (name, d_model, d_ff, bias, n, base)


def test_matching_error_bounds():
    """The residual the docstring of ffn_hidden_dim states, over every d_ff up to 4096: parameters counted by
    hand (2 or 3 matrices of d_model x h, biases on each input and the output), not by ffn_params."""
    def error(d, d_ff, bias, m):
        h = ffn_hidden_dim(d, d_ff, True, bias, m)
        gated, base = 3 * d * h + ((2 * h + d) if bias else 0), 2 * d * d_ff + ((d_ff + d) if bias else 0)
        return gated / base - 1

    d_models = [8, 16, 24, 48, 64, 96, 128, 768, 4096]
    for d_ff in range(1, 4097):
        worst = max(abs(error(d, d_ff, False, None)) for d in d_models)
        assert worst <= 1 / (2 * d_ff) + 1e-12 and (worst <= 0.005 or d_ff < 100), d_ff
        worst = max(abs(error(d, d_ff, True, None)) for d in d_models)
        assert worst < 0.77 / d_ff and (worst <= 0.005 or d_ff < 150), d_ff
        for m in (8, 64):
            if d_ff >= m:
                assert max(abs(error(d, d_ff, b, m)) for d in d_models for b in (False, True)) < 0.77 * (m + 1) / d_ff
    # the thresholds are tight, and the examples the docstring and the README give
    assert abs(error(64, 98, False, None)) > 0.005 and max(abs(error(d, 148, True, None)) for d in d_models) > 0.005
    assert round(error(64, 100, True, None), 5) == -0.00741 and round(error(96, 100, True, None), 5) == 0.0067
    assert ffn_hidden_dim(768, 3120, True, False, 64) == 2048 and round(error(768, 3120, False, 64), 4) == -0.0154


@pytest.mark.parametrize("bias", [False, True])
def test_extra_variants_are_matched_like_the_rest(bias):
    base = 2 * 100 * 400 + ((400 + 100) if bias else 0)
    # gated, d_model 100, d_ff 400: no bias 2/3·400 = 266.67 -> 267; bias 400·201/302 = 266.23 -> 266
    widths = {"mish": 400, "elu": 400, "relu2": 400, "mishglu": 266 if bias else 267}
    for name in EXTRA_VARIANTS:
        ffn = matched_ffn(name, 100, 400, bias=bias)
        n = sum(p.numel() for p in ffn.parameters())
        assert ffn.hidden == widths[name], name
        assert abs(n / base - 1) <= 0.005, (name, n, base)


@pytest.mark.parametrize(
    "name,d_model,d_ff,bias,multiple_of,hidden",
    [
        ("swiglu", 768, 3072, False, None, 2048),  # Shazeer 2020, section 2
        ("relu", 768, 3072, False, None, 3072),
        ("geglu", 64, 512, False, None, 341),  # 2/3·512 = 341.33
        ("reglu", 100, 400, False, None, 267),  # 2/3·400 = 266.67
        ("reglu", 100, 400, True, None, 266),  # 400·(2·100+1)/(3·100+2) = 80400/302 = 266.23
        ("swiglu", 768, 3072, True, None, 2048),  # 3072·1537/2306 = 2047.56
        ("gelu", 100, 400, True, None, 400),  # non-gated: d_ff itself, with or without bias
        ("glu", 100, 400, False, 64, 256),  # 267/64 = 4.17 -> 4·64
        ("glu", 64, 512, False, 128, 384),  # 341/128 = 2.66 -> 3·128
        ("relu", 100, 300, False, 64, 320),  # non-gated widths are rounded too: 300/64 = 4.69 -> 5·64
        ("bilinear", 4, 3, False, 8, 8),  # 2/3·3 = 2 rounds to 0·8: at least one multiple
    ],
)
def test_build_ffn_width_pinned_by_hand(name, d_model, d_ff, bias, multiple_of, hidden):
    ffn = matched_ffn(name, d_model, d_ff, bias, multiple_of)
    assert ffn.hidden == hidden
    assert ffn.w_in.weight.shape == ((2 if ffn.gated else 1) * hidden, d_model)
    assert ffn.w_out.weight.shape == (d_model, hidden)


def test_paper_width():
    assert ffn_hidden_dim(768, 3072, gated=True) == 2048  # Shazeer 2020, section 2
    assert ffn_hidden_dim(768, 3072, gated=False) == 3072


def test_multiple_of_rounds_and_reports_the_error():
    h = ffn_hidden_dim(768, 3072, gated=True, multiple_of=256)
    assert h == 2048
    h = ffn_hidden_dim(100, 400, gated=True, multiple_of=64)  # 2/3*400 = 266.7 -> 267 -> 256
    assert h == 256
    err = matching_error(100, 400, h, gated=True, bias=False)
    assert err == pytest.approx(3 * 100 * 256 / (2 * 100 * 400) - 1)
    assert ffn_params(100, 256, True, False) == 3 * 100 * 256


def test_bad_sizes_raise():
    with pytest.raises(ValueError, match="ffn_multiple_of"):
        ffn_hidden_dim(64, 256, True, multiple_of=0)
    with pytest.raises(ValueError, match="d_ff"):
        ffn_hidden_dim(64, 0, True)
