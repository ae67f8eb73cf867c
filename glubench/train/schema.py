"""Typed schemas for the Hydra config (registered in Hydra's ConfigStore by :func:`register_configs`).

The schema makes Hydra reject a misspelt key or a wrong type with its own message.  Rules
that involve several keys live in :func:`glubench.validate.validate_config`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING

from glubench.nn.config import ModelConfig


@dataclass
class DataConfig:
    """Corpus, tokenizer and batching (``data.*``)."""

    name: str = "pydocs"
    tokenizer: str = "bytes"  # bytes | bpe | gpt2
    vocab_size: int = 4096  # bpe only; bytes is 256, gpt2 50257
    val_percent: float = 5.0  # share of documents in the validation split (stable hash)
    batch_size: int = 16  # training windows per step (per device)
    val_batch_size: int = 32
    num_workers: int = 0
    cache_dir: str = "${oc.env:GLUBENCH_CACHE,'~/.cache/glubench'}"
    files: Optional[Any] = None  # local text/json/parquet files: a path, a glob or a list
    val_files: Optional[Any] = None  # validation files; null: a stable hash split of data.files
    local_dir: Optional[str] = None  # a local snapshot of the Hub dataset repo (used instead of hub_id)
    format: Optional[str] = None  # text | json | parquet; null: from the files' extension
    hub_id: Optional[str] = None  # Hugging Face dataset id, e.g. Salesforce/wikitext
    hub_config: Optional[str] = None  # its config (subset) name, e.g. wikitext-2-raw-v1
    revision: Optional[str] = None  # Hub commit/tag to pin; null: main
    train_split: str = "train"
    val_split: Optional[str] = None  # Hub split for validation; null: a stable hash split
    text_column: str = "text"
    id_column: Optional[str] = None  # column whose value keys the hash split; null: row/paragraph index
    doc_separator: str = "\n\n"  # appended to each row (json/parquet/Hub; text files keep their own lines)
    streaming: bool = False  # stream the Hub dataset (needs max_tokens)
    max_tokens: Optional[int] = None  # token budget of a streamed corpus (train + val)
    tokenizer_file: Optional[str] = None  # gpt2: a folder with vocab.bpe and encoder.json
    num_proc: Optional[int] = None  # tokenizing processes; null: one per core (<= 8) for large splits


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
class BudgetConfig:
    """How long each run trains (``budget.*``; see :mod:`glubench.budget`).

    ``mode``: ``tokens`` (default), ``flops`` (analytic training FLOPs) or ``time`` (training
    seconds, validation excluded).  ``value`` in that unit; ``null`` means what
    ``trainer.max_steps`` gives (for ``flops``: what those steps cost the non-gated baseline);
    ``time`` needs a value.
    """

    mode: str = "tokens"
    value: Optional[float] = None


@dataclass
class TuneConfig:
    """Per-variant LR tuning (``tune.*``; see :mod:`glubench.tune`).  Empty ``variants``: one training job.

    ``n_trials`` Optuna trials per variant, then the best LR re-run with each of ``seeds``;
    ``shared_lr`` also runs every variant at the shared ``optim.lr`` for comparison; ``dir``
    (default ``multirun/<experiment_name>/<date>/<time>``) resumes an earlier run when given.
    ``lr_range`` is the log-uniform interval the studies search ``optim.lr`` in.
    """

    variants: list[str] = field(default_factory=list)
    n_trials: int = 8
    lr_range: list[float] = field(default_factory=lambda: [1e-4, 3e-2])
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2])
    shared_lr: bool = True
    dir: Optional[str] = None


@dataclass
class FaultsConfig:
    """What a run does on a non-finite loss or gradient (``faults.*``); see :mod:`glubench.faults`."""

    on_nonfinite: str = "stop"  # stop | skip (drop the batch's update, at most max_skips times)
    max_skips: int = 10  # skip mode: the run is marked diverged when more batches than this are dropped


@dataclass
class CheckpointConfig:
    """Checkpoints under ``<run dir>/checkpoints/`` (``checkpoint.*``); see :mod:`glubench.resume`."""

    every_n_steps: Optional[int] = None  # optimizer steps between saves; null: trainer.val_check_interval
    keep_all: bool = False  # also keep every periodic checkpoint as step=<N>.ckpt
@dataclass
class DiagnosticsConfig:
    """Optional activation diagnostics (``diagnostics.*``; see :mod:`glubench.analysis.dead_units`)."""

    dead_units: bool = False  # probe dead units / sparsity / gate saturation during training
    every_n_steps: int = 50  # optimizer steps between probes (also at the start and the end)
    probe_batch_size: int = 8  # validation windows of model.seq_len in the fixed probe batch
    eps: float = 1e-3  # smooth activations: |act(z)| < eps counts as off
    saturation_tol: float = 1e-2  # gated: |act'(xW)| < tol counts as a saturated gate


@dataclass
class Config:
    """The whole run: one group per section plus run-level keys."""

    model: ModelConfig = MISSING
    data: DataConfig = MISSING
    trainer: TrainerConfig = MISSING
    logger: LoggerConfig = MISSING
    optim: OptimConfig = field(default_factory=OptimConfig)
    throughput: ThroughputConfig = field(default_factory=ThroughputConfig)
    budget: BudgetConfig = field(default_factory=BudgetConfig)
    tune: TuneConfig = field(default_factory=TuneConfig)
    faults: FaultsConfig = field(default_factory=FaultsConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    # null/auto/last: resume from <run dir>/checkpoints/last.ckpt if it exists; never; or a path
    ckpt_path: Optional[str] = None
    diagnostics: DiagnosticsConfig = field(default_factory=DiagnosticsConfig)
    seed: int = 0
    experiment_name: str = "default"
    overwrite: bool = False  # replace a completed results.json in the same output dir (else refuse)


def register_configs() -> None:
    """Register :class:`Config` as ``base_config`` so that ``conf/config.yaml`` is typed."""
    ConfigStore.instance().store(name="base_config", node=Config)


register_configs()  # importing the schema is what makes a compose (CLI or test) typed
