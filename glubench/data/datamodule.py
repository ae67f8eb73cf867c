"""The LightningDataModule: prepares the token cache (local rank 0), memory-maps it, serves batches."""

from __future__ import annotations

import os
from pathlib import Path

import torch

from glubench.data.cache import TokenSplits, data_spec, open_splits, prepare_splits, token_folder
from glubench.data.windows import StartAt, TrainBatches, ValWindows


def _lightning_datamodule_base():
    import lightning.pytorch as pl

    return pl.LightningDataModule


class LMDataModule(_lightning_datamodule_base()):
    """Lightning data module: prepares the token cache (local rank 0), memory-maps it, serves batches.

    Args mirror ``data.*`` (:class:`glubench.train.schema.DataConfig`) plus ``seq_len``
    (``model.seq_len``), ``num_batches`` (optimizer steps × gradient-accumulation
    micro-batches) and the run ``seed``.  :meth:`prepare_data` does all the writing (Lightning
    calls it on local rank 0 only); :meth:`setup` memory-maps the folder it prepared, or, if it
    did not run, goes through :func:`glubench.data.cache.prepare_splits` (local rank 0
    prepares, the other ranks wait for its manifest).
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
        # The data.* section as prepare_splits takes it (keys that do not shape the corpus are ignored there).
        self.data = dict(source, name=name, tokenizer=tokenizer, vocab_size=vocab_size, val_percent=val_percent,
                         cache_dir=cache_dir, files=files, tokenizer_file=tokenizer_file, num_proc=num_proc)
        # In every checkpoint (datamodule_hyper_parameters): glubench-eval reads the corpus and tokenizer here.
        self.save_hyperparameters({**self.data, "batch_size": batch_size, "val_batch_size": val_batch_size,
                                   "num_workers": num_workers})
        self.spec = data_spec(self.data)
        self.cache_dir = Path(os.path.expanduser(cache_dir))
        self.seq_len, self.num_batches, self.seed = seq_len, num_batches, seed
        self.splits: TokenSplits | None = None
        self.corpus_fingerprint: str | None = None
        self._folder: Path | None = None

    def prepare_data(self) -> None:
        if self._folder is None:
            self._folder = token_folder(self.data, prepare=True)

    def setup(self, stage: str | None = None) -> None:
        if self.splits is not None:
            return
        if self._folder is None:  # prepare_data did not run in this process
            self._folder, self.splits = prepare_splits(self.data, seq_len=self.seq_len)
        else:
            self.splits = open_splits(self._folder, seq_len=self.seq_len, name=self.name)
        self.corpus_fingerprint = self.splits.meta["fingerprint"]

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
        ds = ValWindows(self.splits.val, self.seq_len, self.splits.token_bytes)
        if self.trainer is not None and self.trainer.world_size > 1:
            # Shard without padding: DistributedSampler would repeat windows to even out ranks.
            idx = list(range(self.trainer.global_rank, len(ds), self.trainer.world_size))
            ds = torch.utils.data.Subset(ds, idx)
        return torch.utils.data.DataLoader(ds, batch_size=self.val_batch_size, shuffle=False,
                                           num_workers=self.num_workers)
