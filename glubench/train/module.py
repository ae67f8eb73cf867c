"""The LightningModule: loss, corpus-level validation and test metrics, AdamW and the LR schedule."""

from __future__ import annotations

import math
from collections.abc import Callable

import lightning.pytorch as pl
import torch
import torch.nn.functional as F
from lightning.pytorch.plugins.precision import DeepSpeedPrecision, FSDPPrecision

from glubench.core.clock import Stopwatch
from glubench.data.config import plain_dict
from glubench.data.windows import IGNORE_INDEX
from glubench.nn.config import ModelConfig
from glubench.nn.transformer import Transformer
from glubench.train.metrics import CorpusNLL, bits_per_byte, perplexity
from glubench.train.schema import OptimConfig

# Shapes are static (fixed training windows), so dynamic=False keeps one specialised graph per
# shape instead of recompiling to a dynamic-shape graph when validation brings a second shape.
COMPILE_OPTIONS: dict = {"dynamic": False}


def lr_lambda(step: int, warmup_steps: int, max_steps: int, min_lr_ratio: float) -> float:
    """LR multiplier: linear warmup from 1/warmup to 1, then cosine decay to ``min_lr_ratio``."""
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    progress = min(1.0, (step - warmup_steps) / max(1, max_steps - warmup_steps))
    return min_lr_ratio + (1 - min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


def build_optimizer(model: torch.nn.Module, optim: OptimConfig, max_steps: int,
                    horizon: Callable[[], int] | None = None):
    """AdamW (Loshchilov & Hutter 2019) with weight decay on matrices only, and the :func:`lr_lambda` schedule.

    Parameters with ``dim() >= 2`` (Linear and embedding weights) decay; biases and norm
    gains do not.  Returns ``(optimizer, scheduler)``; call ``scheduler.step()`` once per
    optimizer step.  The warmup is ``optim.warmup(max_steps)``; the cosine's horizon is ``max_steps``,
    or ``horizon()`` read at every step when given (``budget=time`` moves it as the clock runs).
    """
    decay = [p for p in model.parameters() if p.requires_grad and p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.requires_grad and p.dim() < 2]
    groups = [{"params": decay, "weight_decay": optim.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    opt = torch.optim.AdamW(groups, lr=optim.lr, betas=(optim.beta1, optim.beta2), eps=optim.eps)
    warmup = optim.warmup(max_steps)
    steps = horizon or (lambda: max_steps)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: lr_lambda(s, warmup, steps(), optim.min_lr_ratio))
    return opt, sched


def is_logging_step(trainer, step: int | None = None, every: int | None = None) -> bool:
    """Whether optimizer step ``step`` (default: ``trainer.global_step``, the one just finished) is logged:
    every ``every`` steps (default ``trainer.log_every_n_steps``) and the last step."""
    step = trainer.global_step if step is None else step
    return step % (every or trainer.log_every_n_steps) == 0 or 0 < trainer.max_steps <= step


def total_grad_norm(optimizer) -> torch.Tensor | None:
    """The 2-norm of all gradients of ``optimizer``'s parameters, as ``clip_grad_norm_`` measures it before
    clipping (one fused kernel, no host sync); ``None`` when no parameter has a gradient."""
    grads = [p.grad for group in optimizer.param_groups for p in group["params"] if p.grad is not None]
    return torch.nn.utils.get_total_norm(grads, error_if_nonfinite=False) if grads else None


def log_at_step(trainer, metrics: dict[str, float]) -> None:
    """Send ``metrics`` to every logger at ``trainer.global_step``, the optimizer steps done.

    Lightning labels what is logged during optimizer step ``k`` (and the validation after it) as
    step ``k - 1``; glubench's rows carry ``k``, as its results, checkpoints and report do.
    Loggers write on global rank 0 only.
    """
    for lg in getattr(trainer, "loggers", ()):
        lg.log_metrics(metrics, step=trainer.global_step)


class LanguageModel(pl.LightningModule):
    """Trains a :class:`~glubench.nn.transformer.Transformer` with mean next-token cross-entropy.

    Validation and test accumulate the summed NLL, the count of predicted tokens and their UTF-8
    bytes over every window scored (:class:`~glubench.train.metrics.CorpusNLL`), so ``val/loss`` =
    total NLL / tokens, ``val/ppl`` = exp(val/loss) and ``val/bpb`` = total NLL / ln 2 / predicted
    bytes do not depend on the batch size (``test/*`` likewise).  The bytes come with the batches
    (:class:`~glubench.data.windows.ValWindows` with ``token_bytes``); batches without them leave
    bpb out.  ``history`` keeps each
    validation's ``(step, tokens_seen, val_loss)`` for curves.  ``train_clock`` counts the training
    seconds (running from ``on_train_start`` to ``on_train_end``, paused during validation), the one
    clock of the budget and throughput callbacks; checkpoint writes are not counted either.

    The hyperparameters are saved in every checkpoint as plain values, so
    ``LanguageModel.load_from_checkpoint(path)`` needs nothing else.

    Args:
        model: the model's sizes (:class:`~glubench.nn.transformer.ModelConfig` or its fields).
        optim: AdamW and schedule (:class:`~glubench.train.schema.OptimConfig` or its fields;
            missing keys take its defaults).
        max_steps: optimizer steps, the horizon of the cosine schedule (:attr:`schedule_horizon` starts there).
    """

    def __init__(self, model: ModelConfig | dict, optim: OptimConfig | dict | None = None, max_steps: int = 300
                 ) -> None:
        super().__init__()
        model, optim = plain_dict(model), plain_dict(optim if optim is not None else OptimConfig())
        self.save_hyperparameters({"model": model, "optim": optim, "max_steps": max_steps})
        self.model_cfg = ModelConfig(**model)
        self.optim = OptimConfig(**optim)
        self.model = Transformer(self.model_cfg)
        if self.model_cfg.compile:
            # In place (nn.Module.compile): parameter names and checkpoints stay unchanged.
            self.model.compile(**COMPILE_OPTIONS)
        self.corpus_nll = CorpusNLL()
        self.tokens_seen = 0  # training tokens on this process, counted per micro-batch
        self.history: list[dict] = []
        self.last_val: dict[str, float] = {}
        self.last_test: dict[str, float] = {}
        self.last_loss: torch.Tensor | None = None  # last training loss, left on the device
        self.train_clock = Stopwatch()
        self._step_at_batch_start: int | None = None
        self._grad_norm: torch.Tensor | None = None  # this batch's pre-clip gradient norm, once computed
        # The cosine's horizon, read by the LR schedule at every step: max_steps, except that a budget=time run's
        # BudgetCallback moves it to its estimate of the steps the clock allows.
        self.schedule_horizon: int = max_steps

    @property
    def max_steps(self) -> int:
        """The schedule's horizon in optimizer steps (the budget's, fixed at construction)."""
        return self.hparams.max_steps

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        return self.model(idx)

    # ---------------------------------------------------------------------------- training

    def on_train_start(self) -> None:
        self.train_clock.sync = torch.cuda.synchronize if self.device.type == "cuda" else None
        self.train_clock.start()

    def on_validation_start(self) -> None:
        self.train_clock.pause()

    def on_validation_end(self) -> None:
        # not after the sanity check (before on_train_start) nor after trainer.validate()
        if self.trainer.state.fn == "fit" and not self.trainer.sanity_checking:
            self.train_clock.resume()

    def on_train_end(self) -> None:
        self.train_clock.pause()

    def training_step(self, batch, batch_idx):
        x, y = batch  # (B, T), (B, T)
        logits = self.model(x)  # (B, T, V)
        loss = F.cross_entropy(logits.flatten(0, 1), y.flatten())
        self.tokens_seen += y.numel()
        self.last_loss = loss.detach()
        return loss

    @property
    def step_finished(self) -> bool:
        """In ``on_train_batch_end``: whether this batch finished an optimizer step (``False`` on the
        micro-batches of gradient accumulation before the last)."""
        return self.trainer.global_step != self._step_at_batch_start

    def on_train_batch_start(self, batch, batch_idx) -> None:
        self._step_at_batch_start, self._grad_norm = self.trainer.global_step, None
        self.train_clock.resume()  # after a checkpoint written between steps (on_save_checkpoint paused it)

    def on_train_batch_end(self, outputs, batch, batch_idx) -> None:
        # After the optimizer step (so the row carries the steps done, as results.json does), and
        # only at logging steps: reading the loss back is a host sync on a GPU.
        if self.step_finished and is_logging_step(self.trainer):
            metrics = {"train/loss": float(self.last_loss)}
            if self._grad_norm is not None:
                metrics["train/grad_norm"] = float(self._grad_norm)
            self._log(metrics)

    def grad_norm(self, optimizer) -> torch.Tensor | None:
        """:func:`total_grad_norm` of this optimizer step, computed once and shared by the non-finite
        guard, the clipping and ``train/grad_norm`` (all before clipping)."""
        if self._grad_norm is None:
            self._grad_norm = total_grad_norm(optimizer)
        return self._grad_norm

    def configure_gradient_clipping(self, optimizer, gradient_clip_val=None, gradient_clip_algorithm=None) -> None:
        """Lightning's clipping, except that norm clipping (the default) scales by :meth:`grad_norm`.

        ``clip_grad_norm_``, which Lightning calls, is ``get_total_norm`` then ``clip_grads_with_norm_``,
        so this clips exactly as Lightning does without computing the norm again.  Lightning has unscaled
        ``16-mixed`` gradients before this hook.  Value clipping, no clipping (``gradient_clip_val`` null
        or 0) and FSDP or DeepSpeed, which clip their own way, are left to Lightning.
        """
        if is_logging_step(self.trainer, self.trainer.global_step + 1):
            self.grad_norm(optimizer)  # train/grad_norm of the step about to finish
        if (not gradient_clip_val or gradient_clip_algorithm not in (None, "norm")
                or isinstance(self.trainer.precision_plugin, (DeepSpeedPrecision, FSDPPrecision))):
            self.clip_gradients(optimizer, gradient_clip_val, gradient_clip_algorithm)
            return
        norm = self.grad_norm(optimizer)
        if norm is not None:
            params = [p for group in optimizer.param_groups for p in group["params"]]
            torch.nn.utils.clip_grads_with_norm_(params, gradient_clip_val, norm)

    def _log(self, metrics: dict[str, float]) -> None:
        self.log_dict(metrics, logger=False)  # trainer.callback_metrics, for callbacks and the results
        log_at_step(self.trainer, metrics)

    # ---------------------------------------------------------------------------- validation and test

    def _score(self, batch) -> None:
        x, y, *n_bytes = batch  # (B, T), (B, T), and (B,) predicted UTF-8 bytes when the windows carry them
        logits = self.model(x)
        logits = logits.to(torch.promote_types(logits.dtype, torch.float32))  # bf16 sums drift
        nll = F.cross_entropy(logits.flatten(0, 1), y.flatten(), ignore_index=IGNORE_INDEX, reduction="sum")
        self.corpus_nll.update(nll, (y != IGNORE_INDEX).sum(), n_bytes[0] if n_bytes else 0)

    def _corpus_metrics(self, prefix: str) -> dict[str, float] | None:
        """``<prefix>/loss``, ``/ppl``, ``/bpb`` (if bytes are known) and ``/tokens`` over every window scored."""
        totals = self.corpus_nll.compute()  # already summed across ranks
        total_nll, tokens, n_bytes = float(totals["nll"]), float(totals["tokens"]), float(totals["bytes"])
        if tokens == 0:
            return None
        loss = total_nll / tokens
        metrics = {f"{prefix}/loss": loss, f"{prefix}/ppl": perplexity(loss)}
        if n_bytes:
            metrics[f"{prefix}/bpb"] = bits_per_byte(total_nll, n_bytes)
        return {**metrics, f"{prefix}/tokens": tokens}

    def on_validation_epoch_start(self) -> None:
        self.corpus_nll.reset()

    def validation_step(self, batch, batch_idx):
        self._score(batch)

    def on_validation_epoch_end(self) -> None:
        metrics = self._corpus_metrics("val")
        if metrics is None or self.trainer.sanity_checking:
            return
        self.last_val = metrics
        self._log({k: v for k, v in metrics.items() if k != "val/tokens"})
        if not self.history or self.history[-1]["step"] != self.global_step:  # once per step, also on resume
            self.history.append({"step": int(self.global_step),
                                 "tokens_seen": int(self.tokens_seen * self.trainer.world_size),
                                 "val_loss": metrics["val/loss"]})

    def on_test_epoch_start(self) -> None:
        self.corpus_nll.reset()

    def test_step(self, batch, batch_idx):
        self._score(batch)

    def on_test_epoch_end(self) -> None:
        metrics = self._corpus_metrics("test")
        if metrics is not None:
            self.last_test = metrics
            self._log({k: v for k, v in metrics.items() if k != "test/tokens"})

    # ---------------------------------------------------------------------------- optimizer and checkpoints

    def configure_optimizers(self):
        opt, sched = build_optimizer(self, self.optim, self.max_steps, horizon=lambda: self.schedule_horizon)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        # Writing a checkpoint is not training: the clock stops before the file is written and restarts
        # with the next batch.  (Checkpoints after a validation are written while it is paused anyway.)
        self.train_clock.pause()
        checkpoint["glubench"] = {"tokens_seen": self.tokens_seen, "history": self.history}

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        extra = checkpoint.get("glubench", {})
        self.tokens_seen = extra.get("tokens_seen", 0)
        self.history = list(extra.get("history", []))
