"""Training batches and validation windows over the flat token arrays (torch datasets)."""

from __future__ import annotations

import numpy as np
import torch

IGNORE_INDEX = -100


class TrainBatches(torch.utils.data.Dataset):
    """Item ``i`` is training batch ``i``: ``batch_size`` random windows of ``seq_len + 1`` tokens.

    Batch ``i`` of the whole job is ``batch_size × world_size`` windows whose offsets come
    from ``numpy.random.default_rng([seed, 0, i])``; process ``rank`` takes its contiguous
    ``batch_size`` slice.  So batch ``i`` is the same whatever order or process asks for it
    (resume-safe and worker-safe), and N processes with ``batch_size = B/N`` train on exactly
    the windows one process with ``batch_size = B`` does.
    Returns ``(x, y)``: int64 ``(batch_size, seq_len)`` inputs and next-token targets.
    """

    def __init__(self, tokens: np.ndarray, seq_len: int, batch_size: int, num_batches: int,
                 seed: int, rank: int = 0, world_size: int = 1) -> None:
        if tokens.size < seq_len + 1:
            raise ValueError(f"model.seq_len={seq_len} needs at least {seq_len + 1} training tokens, "
                             f"but the train split has {tokens.size}")
        self.tokens, self.seq_len, self.batch_size = tokens, seq_len, batch_size
        self.num_batches, self.seed, self.rank, self.world_size = num_batches, seed, rank, world_size
        self._arange = np.arange(seq_len + 1)

    def __len__(self) -> int:
        return self.num_batches

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        rng = np.random.default_rng([self.seed, 0, i])
        starts = rng.integers(0, self.tokens.size - self.seq_len, size=self.batch_size * self.world_size)
        starts = starts[self.rank * self.batch_size : (self.rank + 1) * self.batch_size]
        windows = torch.from_numpy(self.tokens[starts[:, None] + self._arange].astype(np.int64))
        return windows[:, :-1], windows[:, 1:]  # (B, T), (B, T)


class ValWindows(torch.utils.data.Dataset):
    """Non-overlapping windows that score every validation token except the first exactly once.

    Window ``i`` predicts tokens ``[i·T + 1, (i+1)·T]``; the last window may be shorter and is
    padded with ``IGNORE_INDEX`` targets.  Item: ``(x, y)`` int64 ``(T,)`` each, plus, when
    ``token_bytes`` (``(vocab_size,)`` UTF-8 bytes per token id) is given, the int64 scalar count of
    UTF-8 bytes the window predicts: bits per byte then stay exact for any subset of windows
    (``trainer.limit_val_batches``, ranks sharding the split).
    """

    def __init__(self, tokens: np.ndarray, seq_len: int, token_bytes: np.ndarray | None = None) -> None:
        if tokens.size < 2:
            raise ValueError(f"the validation split has {tokens.size} tokens; at least 2 are needed")
        self.tokens, self.seq_len, self.token_bytes = tokens, seq_len, token_bytes
        self.n_predicted = tokens.size - 1

    def __len__(self) -> int:
        return -(-self.n_predicted // self.seq_len)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        T = self.seq_len
        chunk = torch.from_numpy(np.asarray(self.tokens[i * T : (i + 1) * T + 1], dtype=np.int64))
        n = chunk.numel() - 1
        x = torch.zeros(T, dtype=torch.long)
        y = torch.full((T,), IGNORE_INDEX, dtype=torch.long)
        x[:n], y[:n] = chunk[:-1], chunk[1:]
        if self.token_bytes is None:
            return x, y
        return x, y, torch.tensor(int(self.token_bytes[chunk[1:].numpy()].sum()))


class StartAt(torch.utils.data.Sampler):
    """Indices ``start, ..., length - 1``, with ``len() == length``.

    The length stays the full epoch because a resumed Lightning loop counts the batches it
    already consumed (``start`` of them) towards the epoch.
    """

    def __init__(self, start: int, length: int) -> None:
        self.start, self.length = start, length

    def __iter__(self):
        return iter(range(self.start, self.length))

    def __len__(self) -> int:
        return self.length

