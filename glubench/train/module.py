"""The LightningModule: loss, corpus-level validation metrics, AdamW and the LR schedule."""

from __future__ import annotations

import math

import lightning.pytorch as pl
import torch
import torch.nn.functional as F

from glubench.data.windows import IGNORE_INDEX
from glubench.nn.config import ModelConfig
from glubench.nn.transformer import Transformer
from glubench.train.metrics import LN2, CorpusNLL, perplexity

# Shapes are static (fixed training windows), so dynamic=False keeps one specialised graph per
# shape instead of recompiling to a dynamic-shape graph when validation brings a second shape.
COMPILE_OPTIONS: dict = {"dynamic": False}


def lr_lambda(step: int, warmup_steps: int, max_steps: int, min_lr_ratio: float) -> float:
    """LR multiplier: linear warmup from 1/warmup to 1, then cosine decay to ``min_lr_ratio``."""
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    progress = min(1.0, (step - warmup_steps) / max(1, max_steps - warmup_steps))
    return min_lr_ratio + (1 - min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


def build_optimizer(model: torch.nn.Module, lr: float, weight_decay: float, betas: tuple[float, float], eps: float,
                    warmup_steps: int, max_steps: int, min_lr_ratio: float):
    """AdamW (Loshchilov & Hutter 2019) with weight decay on matrices only, and the :func:`lr_lambda` schedule.

    Parameters with ``dim() >= 2`` (Linear and embedding weights) decay; biases and norm
    gains do not.  Returns ``(optimizer, scheduler)``; call ``scheduler.step()`` once per
    optimizer step.
    """
    decay = [p for p in model.parameters() if p.requires_grad and p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.requires_grad and p.dim() < 2]
    groups = [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    opt = torch.optim.AdamW(groups, lr=lr, betas=betas, eps=eps)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: lr_lambda(s, warmup_steps, max_steps, min_lr_ratio))
    return opt, sched


class LanguageModel(pl.LightningModule):
    """Trains a :class:`~glubench.model.Transformer` with mean next-token cross-entropy.

    Validation accumulates the summed NLL and the count of predicted tokens over the whole
    split (:class:`~glubench.metrics.CorpusNLL`), so ``val/loss`` = total NLL / tokens,
    ``val/ppl`` = exp(val/loss) and ``val/bpb`` = total NLL / ln 2 / predicted UTF-8 bytes
    do not depend on the validation batch size.  ``history`` keeps each validation's
    ``(step, tokens_seen, val_loss)`` for curves.

    Args:
        model_cfg: the model's sizes.
        lr, weight_decay, beta1, beta2, eps, warmup_steps, min_lr_ratio: AdamW and schedule
            (see :class:`glubench.config.OptimConfig`).
        max_steps: optimizer steps, for the cosine schedule.
        val_predicted_bytes: UTF-8 bytes of the predicted validation tokens (for bpb);
            0 leaves bpb out.
    """

    def __init__(self, model_cfg: ModelConfig, lr: float = 1e-3, weight_decay: float = 0.1,
                 beta1: float = 0.9, beta2: float = 0.95, eps: float = 1e-8, warmup_steps: int = 30,
                 min_lr_ratio: float = 0.1, max_steps: int = 300, val_predicted_bytes: int = 0) -> None:
        super().__init__()
        self.model_cfg = model_cfg
        self.model = Transformer(model_cfg)
        if model_cfg.compile:
            # In place (nn.Module.compile): parameter names and checkpoints stay unchanged.
            self.model.compile(**COMPILE_OPTIONS)
        self.opt = dict(lr=lr, weight_decay=weight_decay, betas=(beta1, beta2), eps=eps)
        self.warmup_steps, self.min_lr_ratio, self.max_steps = warmup_steps, min_lr_ratio, max_steps
        self.val_predicted_bytes = val_predicted_bytes
        self.val_nll = CorpusNLL()
        self.tokens_seen = 0  # training tokens on this process, counted per micro-batch
        self.history: list[dict] = []
        self.last_val: dict[str, float] = {}
        self.last_loss: torch.Tensor | None = None  # last training loss, left on the device

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        return self.model(idx)

    def training_step(self, batch, batch_idx):
        x, y = batch  # (B, T), (B, T)
        logits = self.model(x)  # (B, T, V)
        loss = F.cross_entropy(logits.flatten(0, 1), y.flatten())
        self.tokens_seen += y.numel()
        # Not prog_bar=True: Lightning turns progress-bar values into Python numbers after every
        # step (a host sync on GPU); glubench.callbacks.ProgressBar reads last_loss when it refreshes.
        if self._writes_logs_this_step():
            self.log("train/loss", loss)
        self.last_loss = loss.detach()
        return loss

    def _writes_logs_this_step(self) -> bool:
        """Whether Lightning writes step metrics after this step (or it is the last step).

        Each ``self.log`` call costs Lightning about a millisecond of Python (it re-validates
        and moves its result objects), so per-step values are logged only when they are written.
        """
        if self._trainer is None:
            return True
        trainer = self.trainer
        connector = getattr(trainer, "_logger_connector", None)
        if connector is None or not hasattr(connector, "should_update_logs"):  # other Lightning versions
            return True
        return connector.should_update_logs or 0 < trainer.max_steps <= trainer.global_step + 1

    def on_validation_epoch_start(self) -> None:
        self.val_nll.reset()

    def validation_step(self, batch, batch_idx):
        x, y = batch
        logits = self.model(x)
        logits = logits.to(torch.promote_types(logits.dtype, torch.float32))  # bf16 sums drift
        nll = F.cross_entropy(logits.flatten(0, 1), y.flatten(), ignore_index=IGNORE_INDEX, reduction="sum")
        self.val_nll.update(nll, (y != IGNORE_INDEX).sum())

    def on_validation_epoch_end(self) -> None:
        totals = self.val_nll.compute()
        total_nll, tokens = float(totals["nll"]), float(totals["tokens"])
        if tokens == 0:
            return
        loss = total_nll / tokens
        metrics = {"val/loss": loss, "val/ppl": perplexity(loss)}
        if self.val_predicted_bytes:
            metrics["val/bpb"] = total_nll / LN2 / self.val_predicted_bytes
        self.log_dict(metrics, sync_dist=False)  # already reduced across ranks by CorpusNLL
        self.last_val = {**metrics, "val/tokens": tokens}
        if not self.trainer.sanity_checking:
            world = self.trainer.world_size
            self.history.append(
                {"step": int(self.global_step), "tokens_seen": int(self.tokens_seen * world), "val_loss": loss}
            )

    def configure_optimizers(self):
        opt, sched = build_optimizer(self, **self.opt, warmup_steps=self.warmup_steps, max_steps=self.max_steps,
                                     min_lr_ratio=self.min_lr_ratio)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        checkpoint["glubench"] = {"tokens_seen": self.tokens_seen, "history": self.history}

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        extra = checkpoint.get("glubench", {})
        self.tokens_seen = extra.get("tokens_seen", 0)
        self.history = list(extra.get("history", []))
