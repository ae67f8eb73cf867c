"""Variance propagation at initialization (He, Zhang, Ren & Sun 2015, "Delving Deep into
Rectifiers", arXiv 1502.01852, §2.2).

**The He-init claim, precisely.**  Let ``z = W x`` with ``W_ij ~ N(0, 2/n_in)`` i.i.d. and
independent of ``x``.  Then ``Var(z_i) = n_in · (2/n_in) · E[x_j²] = 2·E[x²]`` (eq. 7 of the
paper with ``E[x²]`` the second moment, not the variance, of the layer input).  For zero-mean
unit-variance inputs ``Var(z) = 2``.  Because ``z`` is symmetric around 0,
``E[relu(z)²] = Var(z)/2``, so after the first layer every ReLU output has second moment 1 and
every later pre-activation again has ``Var(z_l) = 2·E[relu(z_{l-1})²] = 2`` (eq. 10): depth neither
explodes nor shrinks the signal.  These are expectations over the weights; at finite width ``n``
each layer multiplies the second moment by a random factor ``1 ± O(1/sqrt(n))``, so one
layer matches closely and deep stacks drift like a random walk.  :func:`he_relu_stack` checks this numerically and
:func:`transformer_profile` measures what actually happens in a glubench model.
"""

from __future__ import annotations

import math

import torch


def he_relu_stack(width: int = 2048, depth: int = 6, n: int = 2048, seed: int = 0) -> list[dict[str, float]]:
    """Push ``n`` zero-mean unit-variance Gaussian inputs of size ``width`` through ``depth`` bias-free
    ``Linear -> ReLU`` layers with weights ``N(0, 2/fan_in)``.

    Returns per layer ``var_z`` (variance of the pre-activations over all ``n × width`` entries,
    expected 2) and ``second_moment_out`` (``E[relu(z)²]``, expected 1).
    """
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, width, generator=g, dtype=torch.float64)
    out = []
    for _ in range(depth):
        W = torch.randn(width, width, generator=g, dtype=torch.float64) * math.sqrt(2.0 / width)
        z = x @ W.T
        x = torch.relu(z)
        out.append({"var_z": float(z.var()), "second_moment_out": float(x.square().mean())})
    return out


def transformer_profile(model: torch.nn.Module, idx: torch.Tensor) -> list[dict[str, float]]:
    """Per layer of a :class:`glubench.model.Transformer` on token ids ``idx (B, T)``: the variance of the
    residual stream entering the block (``resid_var``) and entering its FFN sublayer
    (``resid_ffn_var``), of the FFN input after LayerNorm (``ffn_in_var``), of the FFN
    pre-activations ``x W1`` or the gate ``x W`` (``ffn_z_var``) and of the FFN output
    (``ffn_out_var``); a last entry holds the final residual stream (``layer = n_layers``).
    Variances are over all tokens and channels (population variance, fp64 accumulation).
    Also the root mean square ``sqrt(mean(x²))`` of the residual stream entering the block
    (``resid_rms``) and of the FFN output (``ffn_out_rms``): how much each FFN adds to the
    stream, the quantity a constant init std shrinks for gated FFNs at small width.
    """
    rec: dict[tuple[int, str], float] = {}
    handles = []

    def var(t: torch.Tensor) -> float:
        return float(t.detach().double().var(unbiased=False))

    def rms(t: torch.Tensor) -> float:
        return float(t.detach().double().square().mean().sqrt())

    def resid_hook(m, a, i) -> None:
        rec[(i, "resid_var")], rec[(i, "resid_rms")] = var(a[0]), rms(a[0])

    def ffn_out_hook(m, a, o, i) -> None:
        rec[(i, "ffn_out_var")], rec[(i, "ffn_out_rms")] = var(o), rms(o)

    for i, block in enumerate(model.blocks):
        handles.append(block.register_forward_pre_hook(lambda m, a, i=i: resid_hook(m, a, i)))
        def ln_hook(m, a, o, i=i) -> None:  # a hook must return None, or it replaces the output
            rec[(i, "resid_ffn_var")], rec[(i, "ffn_in_var")] = var(a[0]), var(o)

        handles.append(block.ln_ffn.register_forward_hook(ln_hook))
        h = block.ffn.hidden
        handles.append(block.ffn.w_in.register_forward_hook(
            lambda m, a, o, i=i, h=h: rec.__setitem__((i, "ffn_z_var"), var(o[..., :h]))))
        handles.append(block.ffn.register_forward_hook(lambda m, a, o, i=i: ffn_out_hook(m, a, o, i)))
    handles.append(model.ln_f.register_forward_pre_hook(lambda m, a: resid_hook(m, a, len(model.blocks))))
    try:
        with torch.no_grad():
            model.eval()
            model(idx)
    finally:
        for hd in handles:
            hd.remove()
    layers = sorted({i for i, _ in rec})
    return [{"layer": i, **{k: v for (j, k), v in rec.items() if j == i}} for i in layers]
