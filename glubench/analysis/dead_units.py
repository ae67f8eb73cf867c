"""Dead units, sparsity and gate saturation of the FFN hidden layer, measured on a fixed probe batch.

A hidden unit is *dead* on a probe batch when its activation never turns on for any token:
exactly zero for activations that output exact zeros (ReLU, ReLU², the ReGLU gate), or
``|act(z)| < eps`` for smooth ones (GELU, Swish, Mish, ELU, sigmoid, ...).  ReLU units that are
zero for every input receive no gradient and stay dead ("dying ReLU"; Lu et al. 2019,
arXiv 1903.06733).  For a gated FFN ``(act(xW) ⊗ xV) W2`` the unit is judged by its activated
gate ``act(xW)``: the value ``xV`` is linear and almost never exactly zero, and a unit whose gate
is off for every token contributes nothing.

Per layer the statistics are

* ``dead_frac``: fraction of hidden units dead over the whole probe batch;
* ``active_frac``: mean over tokens of the fraction of units that are on (1 - sparsity);
* gated variants only: ``gate_mean`` (mean of ``act(xW)``) and ``gate_sat_frac``, the fraction
  of (token, unit) gate entries in a flat region of the gate, ``|act'(xW)| < saturation_tol``
  (sigmoid near 0 or 1, ReLU below 0, the negative tails of GELU/Swish/Mish).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch

from glubench.analysis.hooks import run_with_hooks

STAT_KEYS = ("dead_frac", "active_frac", "gate_mean", "gate_sat_frac")


def outputs_exact_zeros(act: Callable[[torch.Tensor], torch.Tensor]) -> bool:
    """True when ``act`` returns exactly 0 on negative inputs (the ReLU family), tested on a few points."""
    probe = torch.tensor([-1e-3, -1.0, -7.0])
    return bool((act(probe) == 0).all())


def activation_stats(z: torch.Tensor, act: Callable[[torch.Tensor], torch.Tensor], gated: bool,
                     eps: float = 1e-3, saturation_tol: float = 1e-2) -> dict[str, float]:
    """Statistics of one FFN layer from its gate pre-activations.

    Args:
        z: ``(N, hidden)`` pre-activations ``x W1`` (non-gated) or ``x W`` (gated gate), one
            row per probe token.
        act: the layer's activation.
        gated: also compute the gate statistics.
        eps: activations with ``|act(z)| < eps`` count as off, unless ``act`` outputs exact
            zeros (then only ``act(z) == 0`` is off, whatever ``eps``).
        saturation_tol: gate entries with ``|act'(z)| < saturation_tol`` count as saturated.

    Returns:
        ``dead_frac`` and ``active_frac`` in [0, 1], plus ``gate_mean`` and ``gate_sat_frac``
        when ``gated``.
    """
    z = z.detach().float().reshape(-1, z.shape[-1])
    if gated:
        z = z.clone().requires_grad_(True)
        with torch.enable_grad():
            a = act(z)
            (grad,) = torch.autograd.grad(a.sum(), z)
        a = a.detach()
    else:
        a = act(z)
    on = a != 0 if outputs_exact_zeros(act) else a.abs() >= eps
    stats = {"dead_frac": float((~on.any(dim=0)).float().mean()), "active_frac": float(on.float().mean())}
    if gated:
        stats["gate_mean"] = float(a.mean())
        stats["gate_sat_frac"] = float((grad.abs() < saturation_tol).float().mean())
    return stats


def probe_stats(model: torch.nn.Module, probe: torch.Tensor, eps: float = 1e-3,
                saturation_tol: float = 1e-2) -> list[dict[str, float]]:
    """Run ``model`` (a :class:`glubench.nn.transformer.Transformer`) on ``probe`` ``(B, T)`` token ids and
    return one :func:`activation_stats` dict per layer.

    Forward hooks on each FFN's input projection ``w_in`` capture the pre-activations; they are
    registered only for this forward pass (:func:`glubench.analysis.hooks.run_with_hooks`), so
    training steps pay nothing.  The probe runs eagerly even when the model is compiled.
    """
    captured: dict[int, torch.Tensor] = {}
    hooks = []
    for i, block in enumerate(model.blocks):

        def hook(mod, inputs, output, i=i, hidden=block.ffn.hidden):
            captured[i] = output[..., :hidden]

        hooks.append((block.ffn.w_in, hook))
    run_with_hooks(model, probe, hooks)
    return [activation_stats(captured[i], b.ffn.act, b.ffn.gated, eps, saturation_tol)
            for i, b in enumerate(model.blocks)]


def probe_batch(val_tokens: np.ndarray, seq_len: int, batch_size: int) -> torch.Tensor:
    """A fixed probe: the first ``batch_size`` non-overlapping ``seq_len`` windows of the validation
    tokens (fewer if the split is short), ``(B, T)`` int64."""
    n = min(batch_size, max(1, (val_tokens.size - 1) // seq_len))
    t = min(seq_len, val_tokens.size)
    windows = [np.asarray(val_tokens[i * seq_len : i * seq_len + t], dtype=np.int64) for i in range(n)]
    return torch.from_numpy(np.stack(windows))
