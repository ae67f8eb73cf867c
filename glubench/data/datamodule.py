"""The LightningDataModule: prepares the token cache (local rank 0), memory-maps it, serves batches."""

from __future__ import annotations

import os
from pathlib import Path

import torch

from glubench.data.cache import SPEC_KEYS, TokenSplits, load_tokens, prepare_dataset, wait_for_prepared
from glubench.data.sources import DataSpec
from glubench.data.windows import StartAt, TrainBatches, ValWindows


def _lightning_datamodule_base():
    import lightning.pytorch as pl

    return pl.LightningDataModule


class LMDataModule(_lightning_datamodule_base()):
    """Lightning data module: prepares the token cache (local rank 0), memory-maps it, serves batches.

    Args mirror ``data.*`` (:class:`glubench.config.DataConfig`) plus ``seq_len``
    (``model.seq_len``), ``num_batches`` (optimizer steps × gradient-accumulation
    micro-batches) and the run ``seed``.  :meth:`prepare_data` does all the writing (Lightning
    calls it on local rank 0 only); :meth:`setup` on a rank that did not prepare waits for the
    preparing rank's manifest and memory-maps the same folder.
    """

    def __init__(self, name: str = "pydocs", tokenizer: str = "bytes", vocab_size: int = 4096,
                 val_percent: float = 5.0, batch_size: int = 16, val_batch_size: int = 32,
                 num_workers: int = 0, cache_dir: str = "~/.cache/glubench", files=None,
                 seq_len: int = 128, num_batches: int = 1, seed: int = 0, tokenizer_file: str | None = None,
                 num_proc: int | None = None, **source) -> None:
        super().__init__()
        self.name, self.tokenizer_kind, self.vocab_size = name, tokenizer, vocab_size
        self.val_percent, self.batch_size, self.val_batch_size = val_percent, batch_size, val_batch_size
        self.num_workers, self.files = num_workers, files
        self.tokenizer_file, self.num_proc = tokenizer_file, num_proc
        # data.* keys that do not shape the corpus (added by other features) are not ours.
        self.spec = DataSpec(name=name, files=files, val_percent=val_percent,
                             **{k: v for k, v in source.items() if k in SPEC_KEYS})
        self.cache_dir = Path(os.path.expanduser(cache_dir))
        self.seq_len, self.num_batches, self.seed = seq_len, num_batches, seed
        self.splits: TokenSplits | None = None
        self.corpus_fingerprint: str | None = None
        self._folder: Path | None = None

    def prepare_data(self) -> None:
        if self._folder is None:
            self._folder = prepare_dataset(self.spec, self.tokenizer_kind, self.vocab_size, self.cache_dir,
                                           self.tokenizer_file, self.num_proc)

    def setup(self, stage: str | None = None) -> None:
        if self.splits is not None:
            return
        if self._folder is None:  # a rank that did not prepare
            self._folder = wait_for_prepared(self.spec, self.tokenizer_kind, self.vocab_size, self.cache_dir,
                                             self.tokenizer_file)
        self.splits = load_tokens(self._folder)
        self.corpus_fingerprint = self.splits.meta["fingerprint"]
        if self.splits.val.size < 2:
            raise ValueError(f"data.name={self.name!r}: the validation split has {self.splits.val.size} tokens; "
                             "raise data.val_percent or give data.val_files")
        if self.splits.train.size < self.seq_len + 1:
            raise ValueError(f"data.name={self.name!r}: the train split has {self.splits.train.size} tokens, "
                             f"fewer than one window (model.seq_len={self.seq_len} + 1); use more text or a "
                             "smaller model.seq_len")

    def train_dataloader(self):
        t = self.trainer
        rank, world = (t.global_rank, t.world_size) if t is not None else (0, 1)
        ds = TrainBatches(self.splits.train, self.seq_len, self.batch_size, self.num_batches,
                          self.seed, rank, world)
        # On resume Lightning has restored global_step by now: continue at the next batch.
        start = t.global_step * t.accumulate_grad_batches if t is not None else 0
        return torch.utils.data.DataLoader(ds, batch_size=None, sampler=StartAt(start, len(ds)),
                                           num_workers=self.num_workers)

    def val_dataloader(self):
        ds = ValWindows(self.splits.val, self.seq_len)
        if self.trainer is not None and self.trainer.world_size > 1:
            # Shard without padding: DistributedSampler would repeat windows to even out ranks.
            idx = list(range(self.trainer.global_rank, len(ds), self.trainer.world_size))
            ds = torch.utils.data.Subset(ds, idx)
        return torch.utils.data.DataLoader(ds, batch_size=self.val_batch_size, shuffle=False,
                                           num_workers=self.num_workers)
