"""``callbacks.samples``: a few generated texts at each validation, as a W&B table (off by default).

``callbacks.samples.enabled=true`` turns it on; with ``logger=wandb`` the samples go to the table ``samples``
(columns ``step``, ``sample``, ``text``) at the run's step, otherwise to the log.  Sampling uses its own
seeded generator, so the training run's random streams, and with them its results, do not change.
"""

from __future__ import annotations

import logging

import lightning.pytorch as pl
import torch
from lightning.pytorch.loggers import WandbLogger

from glubench.data.cache import load_tokenizer
from glubench.nn.sampling import check_sampling, sample

log = logging.getLogger(__name__)


class SampleText(pl.Callback):
    """Generate ``num_samples`` continuations of ``prompt`` after each validation of ``fit`` (global rank 0).

    Args:
        prompt: the text every sample continues (encoded with the run's tokenizer).
        max_new_tokens, temperature, top_k: as :func:`glubench.nn.sampling.sample` (``temperature`` 0: greedy).
        num_samples: samples per validation.
        seed: the generator's seed, the same at every validation, so samples differ only by the weights.

    Raises:
        ValueError: a bad ``max_new_tokens``, ``temperature``, ``top_k`` or ``num_samples`` (at construction).
    """

    def __init__(self, prompt: str = "\n", max_new_tokens: int = 64, num_samples: int = 2, temperature: float = 0.8,
                 top_k: int | None = 50, seed: int = 0) -> None:
        check_sampling(max_new_tokens, temperature, top_k)
        if num_samples < 1:
            raise ValueError(f"callbacks.samples.num_samples={num_samples} must be a positive integer")
        self.prompt, self.max_new_tokens, self.num_samples = prompt, max_new_tokens, num_samples
        self.temperature, self.top_k, self.seed = temperature, top_k, seed
        self._tokenizer = None

    def tokenizer(self, trainer):
        """The run's tokenizer (:func:`glubench.data.cache.load_tokenizer` of the datamodule's ``data.*``), loaded
        once."""
        if self._tokenizer is None:
            self._tokenizer = load_tokenizer(trainer.datamodule.data)
        return self._tokenizer

    def texts(self, trainer, pl_module) -> list[str]:
        """The samples (new text only) from the module's current weights."""
        tok = self.tokenizer(trainer)
        ids = tok.encode(self.prompt)
        model = pl_module.model
        idx = torch.tensor([ids] * self.num_samples, dtype=torch.long, device=pl_module.device)  # (N, T)
        gen = torch.Generator(device=pl_module.device).manual_seed(self.seed)
        was_training = model.training
        model.eval()
        try:
            # forward itself: a compiled module (model.compile) would recompile for every new length
            out = sample(model.forward, idx, self.max_new_tokens, pl_module.model_cfg.seq_len, self.temperature,
                         self.top_k, gen)
        finally:
            model.train(was_training)
        return [tok.decode(row[len(ids):].tolist()) for row in out]

    def on_validation_end(self, trainer, pl_module) -> None:
        if trainer.sanity_checking or trainer.state.fn != "fit" or not trainer.is_global_zero:
            return
        texts = self.texts(trainer, pl_module)
        step = trainer.global_step
        wandb_loggers = [lg for lg in trainer.loggers if isinstance(lg, WandbLogger)]
        for lg in wandb_loggers:
            lg.log_text(key="samples", columns=["step", "sample", "text"],
                        data=[[step, i, self.prompt + t] for i, t in enumerate(texts)], step=step)
        if not wandb_loggers:
            for i, t in enumerate(texts):
                log.info("sample %d at step %d: %r", i, step, self.prompt + t)
