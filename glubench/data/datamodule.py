"""The LightningDataModule: prepares or finds the token cache, memory-maps it, serves batches."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import asdict
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch

from glubench.data.cache import TokenSplits, prepare_splits
from glubench.data.config import DataConfig, plain_dict
from glubench.data.windows import StartAt, TrainBatches, ValWindows


class ResumableLoader(torch.utils.data.DataLoader):
    """The training loader, over a :class:`~glubench.data.windows.StartAt` sampler, with the data position as its state.

    Lightning saves ``state_dict()`` in every checkpoint and calls ``load_state_dict()`` on resume
    (its ``Stateful`` loader protocol), so a resumed run continues at the next training batch;
    batch ``i`` is a pure function of ``(seed, i)``, so the position is all there is to restore.

    Args:
        dataset: the :class:`~glubench.data.windows.TrainBatches` (items are whole batches).
        sampler: where to start.
        position: returns the index of the next batch to train on (read when a checkpoint is written).
    """

    def __init__(self, dataset, sampler: StartAt, position: Callable[[], int], **kwargs: Any) -> None:
        super().__init__(dataset, batch_size=None, sampler=sampler, **kwargs)
        self.position = position

    def state_dict(self) -> dict[str, int]:
        return {"next_batch": int(self.position())}

    def load_state_dict(self, state_dict: dict[str, int]) -> None:
        self.sampler.start = int(state_dict["next_batch"])


class LMDataModule(pl.LightningDataModule):
    """Serves the token cache of ``data`` (the ``data.*`` section, a :class:`~glubench.data.config.DataConfig`),
    saved in every checkpoint as plain values for ``glubench-eval``.

    ``seq_len`` is ``model.seq_len``, ``num_batches`` optimizer steps × gradient-accumulation
    micro-batches.  :meth:`setup` goes through :func:`glubench.data.cache.prepare_splits` on every
    rank: the first process to take the cache's lock builds it, the others find it (the same
    content hashes name the same folder in every process).

    Args:
        data: the section as a :class:`DataConfig`, or its fields as a DictConfig or mapping.

    Raises:
        TypeError: ``data`` has a key :class:`DataConfig` does not declare.
    """

    def __init__(self, data: DataConfig | Mapping[str, Any], seq_len: int, num_batches: int = 1,
                 seed: int = 0) -> None:
        super().__init__()
        self.data = data if isinstance(data, DataConfig) else DataConfig(**plain_dict(data))
        self.save_hyperparameters(asdict(self.data))
        self.seq_len, self.num_batches, self.seed = seq_len, num_batches, seed
        self.folder: Path | None = None  # the token cache folder, once set up
        self.splits: TokenSplits | None = None

    def setup(self, stage: str | None = None) -> None:
        if self.splits is None:
            self.folder, self.splits = prepare_splits(self.data, seq_len=self.seq_len)

    def train_dataloader(self):
        t = self.trainer
        rank, world = (t.global_rank, t.world_size) if t is not None else (0, 1)
        ds = TrainBatches(self.splits.train, self.seq_len, self.data.batch_size, self.num_batches,
                          self.seed, rank, world)
        # On resume Lightning has restored global_step by now (and then loads the loader's state too).
        start = self._batches_done()
        return ResumableLoader(ds, sampler=StartAt(start, len(ds)), position=self._batches_done,
                               num_workers=self.data.num_workers)

    def _batches_done(self) -> int:
        """Training batches consumed: optimizer steps × gradient-accumulation micro-batches (checkpoints are
        written at optimizer-step boundaries only)."""
        t = self.trainer
        return t.global_step * t.accumulate_grad_batches if t is not None else 0

    def val_dataloader(self):
        return self._scoring_loader(self.splits.val)

    def test_dataloader(self):
        """The test split, scored like validation; only for a corpus with one (``data.test_percent`` > 0,
        ``data.test_files`` or ``data.test_split``)."""
        if self.splits.test is None:
            raise ValueError(f"data.name={self.data.name!r} has no test split: set data.test_percent, "
                             "data.test_files or data.test_split")
        return self._scoring_loader(self.splits.test)

    def _scoring_loader(self, tokens):
        ds = ValWindows(tokens, self.seq_len, self.splits.token_bytes)
        if self.trainer is not None and self.trainer.world_size > 1:
            # Shard without padding: DistributedSampler would repeat windows to even out ranks.
            idx = list(range(self.trainer.global_rank, len(ds), self.trainer.world_size))
            ds = torch.utils.data.Subset(ds, idx)
        return torch.utils.data.DataLoader(ds, batch_size=self.data.val_batch_size, shuffle=False,
                                           num_workers=self.data.num_workers)
