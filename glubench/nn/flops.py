"""Training FLOPs per token and model FLOPs utilisation (MFU)."""

from __future__ import annotations


def flops_per_token(matmul_params: int, n_layers: int, d_model: int, seq_len: int) -> float:
    """Training FLOPs per token: ``6·N + 12·L·d·T``.

    ``N`` counts every weight used in a per-token matmul (the FFN's real matrices — three for
    gated, two for non-gated — attention projections and the output head); ``12·L·d·T`` is
    the attention score and value products, forward (4·L·d·T) plus backward (8·L·d·T), with
    no causal discount (Kaplan et al. 2020, Table 1; Chowdhery et al. 2022, App. B).
    """
    return 6.0 * matmul_params + 12.0 * n_layers * d_model * seq_len


def mfu(tokens_per_sec: float, flops_per_tok: float, peak_flops: float | None) -> float | None:
    """Model FLOPs utilisation: achieved FLOP/s ÷ dense peak FLOP/s; ``None`` when the peak is unknown."""
    if not peak_flops:
        return None
    return tokens_per_sec * flops_per_tok / peak_flops
