"""Training-time diagnostics as Lightning callbacks; the measurements themselves live in
:mod:`glubench.analysis` (torch only), this module only schedules and logs them."""

from __future__ import annotations

import time

import lightning.pytorch as pl
import numpy as np
import torch

from glubench.analysis.dead_units import STAT_KEYS, probe_stats


class DeadUnitsCallback(pl.Callback):
    """Every ``every_n_steps`` optimizer steps (and at the start and end of training) runs the model
    on a fixed probe batch and logs, per layer ``i``, ``act/layer{i}/dead_frac``,
    ``act/layer{i}/active_frac`` and, for gated variants, ``act/layer{i}/gate_mean`` and
    ``act/layer{i}/gate_sat_frac`` (see :func:`glubench.analysis.dead_units.activation_stats`),
    plus the layer means ``act/dead_frac`` and ``act/active_frac``, to every logger at the current
    global step.

    Args:
        probe: ``(B, T)`` token ids (e.g. :func:`glubench.analysis.dead_units.probe_batch`); moved
            to the model's device.
        every_n_steps: optimizer steps between probes.
        eps, saturation_tol: see :func:`glubench.analysis.dead_units.activation_stats`.
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
