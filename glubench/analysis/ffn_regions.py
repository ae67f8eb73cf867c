"""Linear-region counts of a trained glubench transformer's FFNs (see :mod:`glubench.analysis.regions`).

* **Per layer** (exact for the real model): layer ``i``'s FFN is a one-hidden-layer network on its
  own input (the norm's output).  Segments join the FFN inputs of two probe tokens; planes go
  through the inputs of three.  Counted: distinct activation patterns of the hidden units
  (``relu``) or of the gate (``reglu``, ``relu2``: there the pieces are quadratic, not linear, but
  the patterns are well defined).
* **FFN stack** (a piecewise-linear surrogate, ``relu`` only): the composition of the FFN residual
  blocks ``x -> x + W2 relu(W1 LN_i(x))`` with attention left out and each norm linearised with
  its scale frozen at ``σ̄_i``, the mean over the probe tokens (the real norm divides by the scale
  of each ``x``, which is not piecewise linear): LayerNorm as ``γ ⊙ (x - mean x) / σ̄_i + β`` with
  σ the standard deviation, RMSNorm (Zhang & Sennrich 2019, eq. 4) as ``γ ⊙ x / σ̄_i`` with σ the
  root mean square.  Segments join the residual states of two probe tokens at the input of block 0's FFN.
"""

from __future__ import annotations

import numpy as np
import torch

from glubench.analysis.hooks import run_with_hooks
from glubench.analysis.regions import ReluLayer, count_line_arrangement, count_on_segment

PATTERN_VARIANTS = ("relu", "relu2", "reglu")
TRIANGLE = np.array([[0.0, 0.0], [1.0, 0.0], [0.0, 1.0]])


def _capture(model, idx: torch.Tensor) -> dict:
    """FFN inputs (after the norm) and residual states before each FFN, ``(N, C)``, plus each norm's scale."""
    rec: dict = {}

    def ln_hook(i: int):
        def hook(m, a, o) -> None:
            x = a[0].detach().double().flatten(0, 1)
            rec[("resid", i)] = x
            rec[("ffn_in", i)] = o.detach().double().flatten(0, 1)
            second = x.square().mean(dim=-1) if _is_rms(m) else x.var(dim=-1, unbiased=False)
            rec[("sigma", i)] = float(torch.sqrt(second + m.eps).mean())

        return hook

    run_with_hooks(model, idx, [(block.ln_ffn, ln_hook(i)) for i, block in enumerate(model.blocks)])
    return rec


def _is_rms(norm) -> bool:
    """RMSNorm (no mean subtraction, no bias), else LayerNorm: the two values of ``model.norm``."""
    return isinstance(norm, torch.nn.RMSNorm)


def _np(t) -> np.ndarray:
    return t.detach().double().cpu().numpy()


def ffn_layer(block) -> ReluLayer:
    """Layer ``block``'s FFN pre-activations (gate rows for gated FFNs) as a one-layer :class:`ReluLayer`."""
    ffn = block.ffn
    W = _np(ffn.w_in.weight[: ffn.hidden])
    b = _np(ffn.w_in.bias[: ffn.hidden]) if ffn.w_in.bias is not None else np.zeros(ffn.hidden)
    return ReluLayer(W, b)


def stack_layers(model, sigmas: list[float]) -> list[ReluLayer]:
    """The FFN-stack surrogate (module docstring) of a ``relu`` transformer as residual :class:`ReluLayer`s."""
    layers = []
    for block, sigma in zip(model.blocks, sigmas):
        ln, ffn = block.ln_ffn, block.ffn
        C = ln.normalized_shape[0]
        gamma = _np(ln.weight) if ln.weight is not None else np.ones(C)
        if _is_rms(ln):
            beta, L = np.zeros(C), np.diag(gamma) / sigma  # x -> γ ⊙ x / σ̄
        else:
            beta = _np(ln.bias) if ln.bias is not None else np.zeros(C)
            L = (np.diag(gamma) @ (np.eye(C) - 1.0 / C)) / sigma  # x -> γ ⊙ (x - mean x) / σ̄
        W1, W2 = _np(ffn.w_in.weight), _np(ffn.w_out.weight)
        c = W1 @ beta + (_np(ffn.w_in.bias) if ffn.w_in.bias is not None else 0.0)
        e = _np(ffn.w_out.bias) if ffn.w_out.bias is not None else None
        layers.append(ReluLayer(W1 @ L, np.broadcast_to(c, (W1.shape[0],)).copy(), U=W2, e=e, residual=True))
    return layers


def region_counts(model, idx: torch.Tensor, n_paths: int = 16, seed: int = 0) -> dict:
    """Mean linear-region counts of ``model`` (a :class:`glubench.nn.transformer.Transformer`) on real hidden states.

    ``idx (B, T)``: probe token ids.  ``n_paths`` random pairs (segments) and triples (planes,
    the triangle spanned by three states) of probe tokens are drawn with ``seed``.

    Returns ``{"per_layer": [{"layer", "segment_mean", "segment_max", "plane_mean", "width"}],
    "stack": {"segment_mean", "segment_max", "per_layer_cumulative"} or None}``; the stack is
    counted only for ``relu``.

    Raises:
        ValueError: the FFN is not one of :data:`PATTERN_VARIANTS`.
    """
    name = model.cfg.ffn
    if name not in PATTERN_VARIANTS:
        raise ValueError(f"model.ffn={name!r}: linear regions need a ReLU-family FFN ({', '.join(PATTERN_VARIANTS)})")
    rec = _capture(model, idx)
    rng = np.random.default_rng(seed)
    N = rec[("ffn_in", 0)].shape[0]
    pairs = rng.choice(N, size=(n_paths, 2), replace=True)
    triples = rng.choice(N, size=(n_paths, 3), replace=True)
    per_layer = []
    for i, block in enumerate(model.blocks):
        layer = ffn_layer(block)
        X = _np(rec[("ffn_in", i)])
        seg = [count_on_segment([layer], X[a], X[b])[0] for a, b in pairs]
        plane = []
        for a, b, c in triples:
            d1, d2 = X[b] - X[a], X[c] - X[a]
            G = layer.A @ np.stack([d1, d2], axis=1)
            plane.append(count_line_arrangement(G, layer.A @ X[a] + layer.c, TRIANGLE))
        per_layer.append({"layer": i, "width": layer.width, "segment_mean": float(np.mean(seg)),
                          "segment_max": int(np.max(seg)), "plane_mean": float(np.mean(plane))})
    stack = None
    if name == "relu":
        layers = stack_layers(model, [rec[("sigma", i)] for i in range(len(model.blocks))])
        R = _np(rec[("resid", 0)])
        counts = np.array([count_on_segment(layers, R[a], R[b]) for a, b in pairs])  # (paths, layers)
        stack = {"segment_mean": float(counts[:, -1].mean()), "segment_max": int(counts[:, -1].max()),
                 "per_layer_cumulative": counts.mean(axis=0).tolist()}
    return {"ffn": name, "n_paths": n_paths, "per_layer": per_layer, "stack": stack}
