"""The typed ``data.*`` section: :class:`DataConfig`, what the datamodule and the token cache read; and
:func:`plain_dict`, the one way a config section becomes plain values.

No torch here: the command line's schema (:mod:`glubench.train.schema`) declares the section with it.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, is_dataclass
from typing import Any, Optional

from omegaconf import OmegaConf

from glubench.data.corpus import DataSpec


@dataclass
class DataConfig(DataSpec):
    """Corpus (the :class:`~glubench.data.corpus.DataSpec` keys), tokenizer and batching (``data.*``)."""

    tokenizer: str = "bytes"  # bytes | bpe | gpt2
    vocab_size: int = 4096  # bpe only; bytes is 256, gpt2 50257
    batch_size: int = 16  # training windows per step (per device)
    val_batch_size: int = 32
    num_workers: int = 0
    cache_dir: str = "${oc.env:GLUBENCH_CACHE,'~/.cache/glubench'}"
    tokenizer_file: Optional[str] = None  # gpt2: a folder with vocab.bpe and encoder.json
    num_proc: Optional[int] = None  # tokenizing processes; null: one per core (<= 8) for large splits


def plain_dict(cfg: Any) -> dict:
    """A dataclass, DictConfig or mapping as a plain dict of resolved values.

    Checkpoints and JSON hold only plain values, and a cache key must hash the same settings the same
    way whatever the caller passed (a DictConfig's lists become lists).

    Raises:
        TypeError: ``cfg`` is none of these.
    """
    if is_dataclass(cfg) and not isinstance(cfg, type):
        return asdict(cfg)
    if OmegaConf.is_config(cfg):
        return OmegaConf.to_container(cfg, resolve=True)
    if hasattr(cfg, "items"):
        return dict(cfg)
    raise TypeError(f"expected a dataclass, a DictConfig or a mapping, got {type(cfg).__name__}")
