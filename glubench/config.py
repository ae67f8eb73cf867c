"""Typed schemas for the Hydra config (registered in Hydra's ConfigStore by :func:`register_configs`).

The schema makes Hydra reject a misspelt key or a wrong type with its own message.  Rules
that involve several keys live in :func:`glubench.validate.validate_config`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional

from omegaconf import MISSING

from glubench.model import ModelConfig


@dataclass
class DataConfig:
    """Corpus, tokenizer and batching (``data.*``)."""

    name: str = "pydocs"
    tokenizer: str = "bytes"  # bytes | bpe
    vocab_size: int = 4096  # bpe only; bytes is always 256
    val_percent: float = 5.0  # share of documents in the validation split (stable hash)
    batch_size: int = 16  # training windows per step (per device)
    val_batch_size: int = 32
    num_workers: int = 0
    cache_dir: str = "${oc.env:GLUBENCH_CACHE,'~/.cache/glubench'}"
    files: Optional[Any] = None  # local text files: a path, a glob or a list


@dataclass
class OptimConfig:
    """AdamW with linear warmup then cosine decay (``optim.*``)."""

    lr: float = 1e-3
    weight_decay: float = 0.1
    beta1: float = 0.9
    beta2: float = 0.95
    eps: float = 1e-8
    warmup_steps: int = 30
    min_lr_ratio: float = 0.1  # final lr = lr * min_lr_ratio


@dataclass
class TrainerConfig:
    """Arguments forwarded to ``lightning.Trainer`` (``trainer.*``)."""

    max_steps: int = 300
    val_check_interval: int = 100  # optimizer steps between validations
    log_every_n_steps: int = 10
    accelerator: str = "auto"
    devices: Any = 1
    num_nodes: int = 1
    strategy: str = "auto"
    precision: str = "32-true"
    gradient_clip_val: float = 1.0
    accumulate_grad_batches: int = 1
    deterministic: bool = False
    enable_progress_bar: bool = True


@dataclass
class LoggerConfig:
    """Experiment tracking (``logger.*``): W&B (offline unless credentials exist) and CSV."""

    wandb: bool = True
    csv: bool = True
    project: str = "glubench"
    entity: Optional[str] = None
    group: Optional[str] = None  # default: the experiment name
    mode: Optional[str] = None  # online | offline | disabled; default: online iff credentials exist
    tags: list[str] = field(default_factory=list)


@dataclass
class ThroughputConfig:
    """Throughput measurement (``throughput.*``)."""

    warmup_steps: int = 10  # optimizer steps excluded from tokens/s
    peak_flops: Optional[float] = None  # dense peak FLOP/s; null: look the device up, else no MFU


@dataclass
class Config:
    """The whole run: one group per section plus run-level keys."""

    model: ModelConfig = MISSING
    data: DataConfig = MISSING
    trainer: TrainerConfig = MISSING
    logger: LoggerConfig = MISSING
    optim: OptimConfig = field(default_factory=OptimConfig)
    throughput: ThroughputConfig = field(default_factory=ThroughputConfig)
    seed: int = 0
    experiment_name: str = "default"


def register_configs() -> None:
    """Register :class:`Config` as ``base_config`` so that ``conf/config.yaml`` is typed."""
    from hydra.core.config_store import ConfigStore

    ConfigStore.instance().store(name="base_config", node=Config)
