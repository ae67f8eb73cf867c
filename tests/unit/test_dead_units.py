
import pytest
import torch

from glubench.analysis.dead_units import activation_stats, outputs_exact_zeros, probe_stats
from glubench.nn.config import FFN_VARIANTS, ModelConfig
from glubench.nn.ffn import ACTIVATIONS, build_ffn
from glubench.nn.transformer import Transformer
from glubench.train.monitors import DeadUnitsCallback
from glubench.train.results import RunResult


def test_exact_zero_family():
    exact = {n for n, v in FFN_VARIANTS.items() if outputs_exact_zeros(ACTIVATIONS[v.activation])}
    assert exact == {"relu", "reglu", "relu2"}


def test_three_of_eight_dead_units_with_bias():
    """Units 0-2 have zero weights and bias -1: negative for every input, so dead; the others fire."""
    ffn = build_ffn("relu", 2, 8, bias=True)
    w = torch.tensor([[0.0, 0.0]] * 3 + [[1.0, 0.0], [-1.0, 0.0], [0.0, 1.0], [0.0, -1.0], [1.0, 1.0]])
    b = torch.tensor([-1.0] * 3 + [0.0] * 5)
    with torch.no_grad():
        ffn.w_in.weight.copy_(w)
        ffn.w_in.bias.copy_(b)
    x = torch.tensor([[1.0, 1.0], [-1.0, -1.0], [0.5, -2.0], [-0.5, 0.25]])  # 4 probe tokens
    with torch.no_grad():
        stats = activation_stats(ffn.w_in(x), ffn.act, ffn.gated)
    assert stats["dead_frac"] == 0.375
    # on per token (units 3..7): [1,0,1,0,1], [0,1,0,1,0], [1,0,0,1,0], [0,1,1,0,0] -> 9 of 32
    assert stats["active_frac"] == pytest.approx(9 / 32)
    assert "gate_mean" not in stats


def test_smooth_activation_uses_eps():
    z = torch.tensor([[-20.0, 0.0, 1.0], [-30.0, 1e-5, -1.0]])  # (2 tokens, 3 units)
    act = ACTIVATIONS[FFN_VARIANTS["swish"].activation]  # swish(-20) ~ -4e-8, swish(1e-5) ~ 5e-6: both off at eps 1e-3
    assert activation_stats(z, act, gated=False, eps=1e-3)["dead_frac"] == pytest.approx(2 / 3)
    assert activation_stats(z, act, gated=False, eps=0.0)["dead_frac"] == pytest.approx(0.0)


def test_gate_mean_and_saturation():
    z = torch.tensor([[0.0, 20.0], [0.0, -20.0]])
    stats = activation_stats(z, torch.sigmoid, gated=True, saturation_tol=1e-2)
    # sigmoid: [0.5, ~1; 0.5, ~0] -> mean 0.5; sigma' = 0.25 at 0, ~2e-9 at +-20 -> half saturated
    assert stats["gate_mean"] == pytest.approx(0.5, abs=1e-6)
    assert stats["gate_sat_frac"] == 0.5
    relu = activation_stats(torch.tensor([[-1.0, 2.0], [-3.0, -4.0]]), torch.relu, gated=True)
    assert relu["gate_sat_frac"] == 0.75 and relu["dead_frac"] == 0.5 and relu["gate_mean"] == 0.5


@pytest.mark.parametrize("ffn", ["relu", "gelu", "reglu", "swiglu"])
def test_probe_hooks_find_zeroed_units_in_a_transformer(ffn):
    torch.manual_seed(0)
    cfg = ModelConfig(vocab_size=16, d_model=8, n_layers=2, n_heads=2, seq_len=8, ffn=ffn, d_ff=12)
    model = Transformer(cfg)
    h = cfg.ffn_hidden  # 12 or 8
    with torch.no_grad():  # zero 3 gate rows in layer 1: z = 0 exactly, act(0) = 0 -> dead
        model.blocks[1].ffn.w_in.weight[:3] = 0
    probe = torch.randint(0, 16, (4, 8))
    layers = probe_stats(model, probe)
    assert layers[1]["dead_frac"] == pytest.approx(3 / h)
    assert layers[0]["dead_frac"] == 0.0
    assert ("gate_mean" in layers[0]) == cfg.gated
    assert model.training and not model.blocks[0].ffn.w_in._forward_hooks  # hooks removed


def test_callback_rejects_bad_interval():
    with pytest.raises(ValueError, match="diagnostics.every_n_steps=0"):
        DeadUnitsCallback(every_n_steps=0, probe=torch.zeros(1, 1, dtype=torch.long))


def test_report_shows_dead_fraction_columns(tmp_path):
    from glubench.sweep.report import build_report, summary_rows

    for i, (ffn, seed, end, peak) in enumerate([("relu", 0, 0.10, 0.20), ("relu", 1, 0.30, 0.40),
                                                 ("swiglu", 0, 0.0, 0.05)]):
        d = tmp_path / f"{i}_{ffn}_s{seed}"
        d.mkdir()
        RunResult(status="completed", ffn=ffn, seed=seed, val_loss=2.0 + i, ffn_hidden=16,
                  diagnostics={"dead_units": {"dead_frac": end, "dead_frac_max": peak}},
                  config={"model": {"ffn": ffn}, "seed": seed}).write(d)
    header, rows = summary_rows(build_report([tmp_path]))
    assert header[-2:] == ["dead units (end)", "dead units (max)"]
    by_ffn = {r[1]: r[-2:] for r in rows}
    assert by_ffn == {"relu": ["20.0%", "30.0%"], "swiglu": ["0.0%", "5.0%"]}  # means over seeds
