"""Lightning callbacks: training throughput (tokens/s, step time, MFU) and a sync-free progress bar."""

from __future__ import annotations

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import TQDMProgressBar

from glubench.nn.flops import mfu
from glubench.train.metrics import ThroughputMeter


class ThroughputCallback(pl.Callback):
    """Logs ``train/tokens_per_sec``, ``train/step_time_ms`` and (if a peak is known) ``train/mfu``.

    Tokens are counted per optimizer step over all gradient-accumulation micro-batches and
    all processes (``tokens_per_sec`` is the global rate, not per device).  The first
    ``warmup_steps`` optimizer steps are excluded, and the clock is read only at logging
    steps and validation boundaries (after ``torch.cuda.synchronize`` on CUDA), so the hot
    path has no host syncs and validation time is not counted.

    Args:
        flops_per_token: training FLOPs per token (:func:`glubench.metrics.flops_per_token`).
        peak_flops: device dense peak FLOP/s, or ``None`` to leave MFU out.
        warmup_steps: optimizer steps excluded from the measurement.
        log_every_n_steps: optimizer steps between clock reads.
    """

    def __init__(self, flops_per_token: float, peak_flops: float | None, warmup_steps: int = 10,
                 log_every_n_steps: int = 10) -> None:
        self.flops_per_token, self.peak_flops = flops_per_token, peak_flops
        self.warmup_steps, self.log_every_n_steps = warmup_steps, log_every_n_steps
        self.meter: ThroughputMeter | None = None
        self._pending = 0
        self._last_step = 0

    def on_train_start(self, trainer, pl_module) -> None:
        sync = torch.cuda.synchronize if pl_module.device.type == "cuda" else None
        self.meter = ThroughputMeter(warmup_steps=self.warmup_steps, sync=sync)
        self._last_step = trainer.global_step

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self._pending += batch[1].numel()
        if trainer.global_step == self._last_step:  # still accumulating gradients
            return
        self._last_step = trainer.global_step
        self.meter.step(self._pending * trainer.world_size)
        self._pending = 0
        if trainer.global_step % self.log_every_n_steps == 0:
            rates = self.meter.read()
            if rates is not None:
                pl_module.log_dict(self._metrics(rates), rank_zero_only=True)

    def on_validation_start(self, trainer, pl_module) -> None:
        if self.meter is not None:
            self.meter.pause()

    def on_validation_end(self, trainer, pl_module) -> None:
        if self.meter is not None:
            self.meter.resume()

    def on_train_end(self, trainer, pl_module) -> None:
        if self.meter is not None:
            self.meter.read()  # close the window on the last steps

    def _metrics(self, rates: dict[str, float]) -> dict[str, float]:
        out = {"train/tokens_per_sec": rates["tokens_per_sec"], "train/step_time_ms": rates["step_time_ms"]}
        value = mfu(rates["tokens_per_sec"], self.flops_per_token, self.peak_flops)
        if value is not None:
            out["train/mfu"] = value
        return out

    def summary(self) -> dict[str, float] | None:
        """Whole-run rates since warmup (``tokens_per_sec``, ``step_time_ms``, ``mfu``) or ``None``."""
        if self.meter is None:
            return None
        s = self.meter.summary()
        if s is not None:
            s["mfu"] = mfu(s["tokens_per_sec"], self.flops_per_token, self.peak_flops)
        return s


class ProgressBar(TQDMProgressBar):
    """Lightning's progress bar, showing ``loss`` (the last training loss) at each refresh.

    The module keeps its loss as a device tensor (``last_loss``); it is read back to the
    host only when the bar refreshes (every ``refresh_rate`` steps; ``glubench`` uses
    ``trainer.log_every_n_steps``), not after every step as ``self.log(..., prog_bar=True)``
    would do.
    """

    def get_metrics(self, trainer, pl_module) -> dict:
        metrics = super().get_metrics(trainer, pl_module)
        loss = getattr(pl_module, "last_loss", None)
        if loss is not None and trainer.training:
            metrics["loss"] = f"{loss.item():.4g}"
        return metrics
