"""Training FLOPs per token, dense peak FLOP/s of known devices, and model FLOPs utilisation."""

from __future__ import annotations


def flops_per_token(matmul_params: int, n_layers: int, d_model: int, seq_len: int) -> float:
    """Training FLOPs per token: ``6·N + 12·L·d·T``.

    ``N`` counts every weight used in a per-token matmul (the FFN's real matrices — three for
    gated, two for non-gated — attention projections and the output head); ``12·L·d·T`` is
    the attention score and value products, forward (4·L·d·T) plus backward (8·L·d·T), with
    no causal discount (Kaplan et al. 2020, Table 1; Chowdhery et al. 2022, App. B).
    """
    return 6.0 * matmul_params + 12.0 * n_layers * d_model * seq_len


# Dense (no structured sparsity) peak FLOP/s from vendor datasheets, by precision.
PEAK_FLOPS: dict[str, dict[str, float]] = {
    "H200": {"bf16": 989e12, "fp32": 67e12},
    "H100": {"bf16": 989e12, "fp32": 67e12},  # SXM; the PCIe card is lower (756e12)
    "A100": {"bf16": 312e12, "fp32": 19.5e12},
    "A10G": {"bf16": 70e12, "fp32": 31.2e12},
    "L4": {"bf16": 121e12, "fp32": 30.3e12},
    "L40S": {"bf16": 362e12, "fp32": 91.6e12},
    "V100": {"bf16": 125e12, "fp32": 15.7e12},  # fp16 tensor cores; V100 has no bf16
    "RTX 4090": {"bf16": 165e12, "fp32": 82.6e12},
}


def lookup_peak_flops(device_name: str | None, precision: str) -> float | None:
    """Dense peak FLOP/s for a device name such as ``"NVIDIA H100 80GB HBM3"``, or ``None``.

    ``precision`` is a Lightning precision string; ``bf16*``/``16*`` map to the tensor-core
    column, everything else to fp32.  CPUs and unknown devices return ``None``: MFU is then
    left out rather than guessed.
    """
    if not device_name:
        return None
    column = "bf16" if precision.startswith(("bf16", "16")) else "fp32"
    name = device_name.upper()
    if "H100" in name and "PCIE" in name:
        return 756e12 if column == "bf16" else 51e12
    for key in sorted(PEAK_FLOPS, key=len, reverse=True):
        if key in name:
            return PEAK_FLOPS[key][column]
    return None


def mfu(tokens_per_sec: float, flops_per_tok: float, peak_flops: float | None) -> float | None:
    """Model FLOPs utilisation: achieved FLOP/s ÷ dense peak FLOP/s; ``None`` when the peak is unknown."""
    if not peak_flops:
        return None
    return tokens_per_sec * flops_per_tok / peak_flops
