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

from glubench.analysis.hooks import run_with_hooks


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
    """Per layer of a :class:`glubench.nn.transformer.Transformer` on token ids ``idx (B, T)``: the variance of the
    residual stream entering the block (``resid_var``) and entering its FFN sublayer
    (``resid_ffn_var``), of the FFN input after the norm (``ffn_in_var``), of the FFN
    pre-activations ``x W1`` or the gate ``x W`` (``ffn_z_var``) and of the FFN output
    (``ffn_out_var``); a last entry holds the final residual stream (``layer = n_layers``).
    Variances are over all tokens and channels (population variance, fp64 accumulation).
    Also the root mean square ``sqrt(mean(x²))`` of the residual stream entering the block
    (``resid_rms``) and of the FFN output (``ffn_out_rms``): how much each FFN adds to the
    stream, the quantity a constant init std shrinks for gated FFNs at small width.
    """
    rec: dict[tuple[int, str], float] = {}

    def var(t: torch.Tensor) -> float:
        return float(t.detach().double().var(unbiased=False))

    def rms(t: torch.Tensor) -> float:
        return float(t.detach().double().square().mean().sqrt())

    # A hook must return None, or it replaces the module's input or output.
    def resid_hook(i: int):
        def hook(m, a) -> None:
            rec[(i, "resid_var")], rec[(i, "resid_rms")] = var(a[0]), rms(a[0])

        return hook

    def ln_hook(i: int):
        def hook(m, a, o) -> None:
            rec[(i, "resid_ffn_var")], rec[(i, "ffn_in_var")] = var(a[0]), var(o)

        return hook

    def gate_hook(i: int, h: int):
        def hook(m, a, o) -> None:
            rec[(i, "ffn_z_var")] = var(o[..., :h])

        return hook

    def ffn_out_hook(i: int):
        def hook(m, a, o) -> None:
            rec[(i, "ffn_out_var")], rec[(i, "ffn_out_rms")] = var(o), rms(o)

        return hook

    hooks = []
    for i, block in enumerate(model.blocks):
        hooks += [(block, resid_hook(i), "pre"), (block.ln_ffn, ln_hook(i)),
                  (block.ffn.w_in, gate_hook(i, block.ffn.hidden)), (block.ffn, ffn_out_hook(i))]
    hooks.append((model.ln_f, resid_hook(len(model.blocks)), "pre"))
    run_with_hooks(model, idx, hooks)
    layers = sorted({i for i, _ in rec})
    return [{"layer": i, **{k: v for (j, k), v in rec.items() if j == i}} for i in layers]
