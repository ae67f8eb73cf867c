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

import time
from collections.abc import Callable

import lightning.pytorch as pl
import numpy as np
import torch

from glubench.nn.ffn import FeedForward

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


def ffn_stats(ffn: FeedForward, x: torch.Tensor, eps: float = 1e-3, saturation_tol: float = 1e-2) -> dict[str, float]:
    """:func:`activation_stats` of ``ffn`` on inputs ``x`` ``(..., d_model)`` (the FFN's own input)."""
    with torch.no_grad():
        z = ffn.w_in(x)[..., : ffn.hidden]  # gated: rows [0, hidden) are the gate W
    return activation_stats(z, ffn.act, ffn.gated, eps, saturation_tol)


def probe_stats(model: torch.nn.Module, probe: torch.Tensor, eps: float = 1e-3,
                saturation_tol: float = 1e-2) -> list[dict[str, float]]:
    """Run ``model`` (a :class:`glubench.model.Transformer`) on ``probe`` ``(B, T)`` token ids and
    return one :func:`activation_stats` dict per layer.

    Forward hooks on each FFN's input projection ``w_in`` capture the pre-activations; they are
    registered only for this forward pass, so training steps pay nothing.  The probe runs
    eagerly even when the model is compiled.
    """
    captured: dict[int, torch.Tensor] = {}
    handles = []
    for i, block in enumerate(model.blocks):
        ffn = block.ffn

        def hook(mod, inputs, output, i=i, hidden=ffn.hidden):
            captured[i] = output[..., :hidden]

        handles.append(ffn.w_in.register_forward_hook(hook))
    was_training = model.training
    try:
        model.eval()
        with torch.no_grad():
            # The Python forward, not __call__: a model compiled in place (model.compile=true) would
            # otherwise recompile for the hooks and for the probe's shape; the blocks run eagerly.
            getattr(model, "_orig_mod", model).forward(probe)
    finally:
        model.train(was_training)
        for h in handles:
            h.remove()
    return [activation_stats(captured[i], b.ffn.act, b.ffn.gated, eps, saturation_tol)
            for i, b in enumerate(model.blocks)]


def probe_batch(val_tokens: np.ndarray, seq_len: int, batch_size: int) -> torch.Tensor:
    """A fixed probe: the first ``batch_size`` non-overlapping ``seq_len`` windows of the validation
    tokens (fewer if the split is short), ``(B, T)`` int64."""
    n = min(batch_size, max(1, (val_tokens.size - 1) // seq_len))
    t = min(seq_len, val_tokens.size)
    windows = [np.asarray(val_tokens[i * seq_len : i * seq_len + t], dtype=np.int64) for i in range(n)]
    return torch.from_numpy(np.stack(windows))


class DeadUnitsCallback(pl.Callback):
    """Every ``every_n_steps`` optimizer steps (and at the start and end of training) runs the model
    on a fixed probe batch and logs, per layer ``i``, ``act/layer{i}/dead_frac``,
    ``act/layer{i}/active_frac`` and, for gated variants, ``act/layer{i}/gate_mean`` and
    ``act/layer{i}/gate_sat_frac`` (see :func:`activation_stats`), plus the layer means
    ``act/dead_frac`` and ``act/active_frac``, to every logger at the current global step.

    Args:
        probe: ``(B, T)`` token ids (e.g. :func:`probe_batch`); moved to the model's device.
        every_n_steps: optimizer steps between probes.
        eps, saturation_tol: see :func:`activation_stats`.
    """

    def __init__(self, probe: torch.Tensor, every_n_steps: int = 50, eps: float = 1e-3,
                 saturation_tol: float = 1e-2) -> None:
        if every_n_steps <= 0:
            raise ValueError(f"diagnostics.every_n_steps={every_n_steps} must be a positive integer")
        self.probe, self.every_n_steps, self.eps, self.saturation_tol = probe, every_n_steps, eps, saturation_tol
        self.history: list[dict] = []
        self.probe_seconds: list[float] = []
        self._last_step = -1

    def measure(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Probe now, append to :attr:`history` and log (rank zero only)."""
        step = int(trainer.global_step)
        if step == self._last_step or not trainer.is_global_zero:
            return
        self._last_step = step
        sync = torch.cuda.synchronize if pl_module.device.type == "cuda" else (lambda: None)
        sync()
        t0 = time.perf_counter()
        layers = probe_stats(pl_module.model, self.probe.to(pl_module.device), self.eps, self.saturation_tol)
        sync()
        self.probe_seconds.append(time.perf_counter() - t0)
        entry = {"step": step, **{k: [layer[k] for layer in layers] for k in STAT_KEYS if k in layers[0]}}
        self.history.append(entry)
        metrics = {f"act/layer{i}/{k}": v for i, layer in enumerate(layers) for k, v in layer.items()}
        metrics["act/dead_frac"] = float(np.mean(entry["dead_frac"]))
        metrics["act/active_frac"] = float(np.mean(entry["active_frac"]))
        for lg in trainer.loggers:
            lg.log_metrics(metrics, step=step)

    def on_train_start(self, trainer, pl_module) -> None:
        self.measure(trainer, pl_module)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if trainer.global_step % self.every_n_steps == 0:
            self.measure(trainer, pl_module)

    def on_train_end(self, trainer, pl_module) -> None:
        self.measure(trainer, pl_module)

    def summary(self, step_time_ms: float | None = None) -> dict | None:
        """The ``diagnostics.dead_units`` entry of ``results.json``, or ``None`` before any probe.

        ``final`` holds the last probe's per-layer lists, ``max`` the per-layer maxima over all
        probes; ``dead_frac`` / ``dead_frac_max`` are the layer mean at the end and its maximum over
        training.  ``probe_ms`` is the mean probe time; with ``step_time_ms`` given,
        ``overhead_frac = probe_ms / (every_n_steps · step_time_ms)``, the share of training time
        the callback adds at this interval.
        """
        if not self.history:
            return None
        keys = [k for k in STAT_KEYS if k in self.history[0]]
        layer_means = [float(np.mean(h["dead_frac"])) for h in self.history]
        probe_ms = 1e3 * float(np.mean(self.probe_seconds))
        out = {
            "every_n_steps": self.every_n_steps, "eps": self.eps, "saturation_tol": self.saturation_tol,
            "probe_tokens": int(self.probe.numel()),
            "dead_frac": layer_means[-1], "dead_frac_max": max(layer_means),
            "active_frac": float(np.mean(self.history[-1]["active_frac"])),
            "final": {k: v for k, v in self.history[-1].items()},
            "max": {k: np.max([h[k] for h in self.history], axis=0).tolist() for k in keys},
            "probe_ms": probe_ms,
            "overhead_frac": probe_ms / (self.every_n_steps * step_time_ms) if step_time_ms else None,
            "history": self.history,
        }
        return out
