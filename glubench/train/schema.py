"""The typed schema of the ``glubench`` config: every key, its type and its default, declared once.

Hydra composes ``conf/config.yaml`` onto :class:`Config` (registered as ``base_config`` by
:func:`register_configs`, which each command calls before composing), so a misspelt key or a wrong
type is Hydra's error while composing; a key added with ``+`` that nothing reads is refused by
:func:`glubench.train.config_rules.unknown_keys` before any work.  A section whose rules involve its
own fields only checks them in its ``__post_init__`` (``optim``, ``throughput``, ``budget``, ``tune``,
``faults``, ``diagnostics``; the code that takes those values outside a config builds the section
too, so each rule exists once); rules across sections live in :mod:`glubench.train.config_rules`.
No torch here: importing the schema must stay fast (the command line is checked before anything
heavy loads).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Optional

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, OmegaConf

from glubench.core.errors import ConfigError
from glubench.data.config import DataConfig
from glubench.nn.config import FFN_VARIANTS, ModelConfig

BUDGET_MODES = ("tokens", "flops", "time", "tokens_per_param")
NONFINITE_ACTIONS = ("stop", "skip")


def in_range(key: str, value: float, low: float, high: float, closed_high: bool = False) -> None:
    """Raise :class:`ConfigError` unless ``low <= value < high`` (``<= high`` with ``closed_high``)."""
    ok = math.isfinite(value) and low <= value and (value <= high if closed_high else value < high)
    if not ok:
        raise ConfigError(f"{key}={value} must be in [{low}, {high}{']' if closed_high else ')'}")


def positive_number(key: str, value: float) -> None:
    """Raise :class:`ConfigError` unless ``value`` is finite and > 0."""
    if not (math.isfinite(value) and value > 0):
        raise ConfigError(f"{key}={value} must be a positive number")


@dataclass
class OptimConfig:
    """AdamW with linear warmup then cosine decay (``optim.*``).

    ``warmup_fraction``, when set, replaces ``warmup_steps`` by that share of the run's optimizer steps
    (:meth:`warmup`), so that runs of different lengths (the rungs of a ladder) warm up alike.
    """

    lr: float = 1e-3
    weight_decay: float = 0.1
    beta1: float = 0.9
    beta2: float = 0.95
    eps: float = 1e-8
    warmup_steps: int = 30
    warmup_fraction: Optional[float] = None  # in [0, 1): warmup = round(fraction * steps); null: warmup_steps
    min_lr_ratio: float = 0.1  # final lr = lr * min_lr_ratio

    def __post_init__(self) -> None:
        """Raises :class:`ConfigError` for a field out of its range (``warmup_steps`` against the run's steps
        is :func:`glubench.train.config_rules.validate_config`'s)."""
        positive_number("optim.lr", self.lr)
        if self.warmup_fraction is not None:
            in_range("optim.warmup_fraction", self.warmup_fraction, 0.0, 1.0)
        if not (math.isfinite(self.weight_decay) and self.weight_decay >= 0):
            raise ConfigError(f"optim.weight_decay={self.weight_decay} must be >= 0")
        in_range("optim.beta1", self.beta1, 0.0, 1.0)
        in_range("optim.beta2", self.beta2, 0.0, 1.0)
        positive_number("optim.eps", self.eps)
        in_range("optim.min_lr_ratio", self.min_lr_ratio, 0.0, 1.0, closed_high=True)

    def warmup(self, max_steps: int) -> int:
        """Warmup optimizer steps of a run of ``max_steps`` steps: ``round(warmup_fraction · max_steps)``
        when the fraction is set, else ``warmup_steps``."""
        if self.warmup_fraction is None:
            return self.warmup_steps
        return int(round(self.warmup_fraction * max_steps))


@dataclass
class TrainerConfig:
    """``lightning.Trainer`` arguments (``trainer.*``), built by ``hydra.utils.instantiate``.

    Every argument of ``lightning.pytorch.Trainer`` (2.6) is a key here, so any Trainer flag a
    Lightning user knows works as ``trainer.<flag>=...`` (``trainer.fast_dev_run=true``,
    ``trainer.limit_val_batches=0.1``, ``trainer.max_epochs=1``); only ``logger``, ``callbacks``
    and ``plugins`` are built by glubench (``logger=``, ``callbacks=`` groups).  Defaults are
    Lightning's except where glubench needs its own: validation by optimizer steps
    (``val_check_interval`` steps, ``check_val_every_n_epoch: null``), no sanity validation, our
    datasets shard themselves across ranks (``use_distributed_sampler: false``), no model
    summary, gradient clipping at 1.0, and ``default_root_dir`` (null) is the run dir.
    Unions of types are ``Any`` (OmegaConf types no unions); :mod:`glubench.train.config_rules`
    checks the values glubench depends on.
    """

    _target_: str = "lightning.pytorch.Trainer"
    accelerator: str = "auto"
    strategy: str = "auto"
    devices: Any = 1
    num_nodes: int = 1
    precision: Any = "32-true"
    fast_dev_run: Any = False
    max_epochs: Optional[int] = None
    min_epochs: Optional[int] = None
    max_steps: int = 300
    min_steps: Optional[int] = None
    max_time: Any = None
    limit_train_batches: Any = None
    limit_val_batches: Any = None
    limit_test_batches: Any = None
    limit_predict_batches: Any = None
    overfit_batches: Any = 0.0
    val_check_interval: Any = 100  # optimizer steps between validations (or a fraction of an epoch)
    check_val_every_n_epoch: Optional[int] = None
    num_sanity_val_steps: Optional[int] = 0
    log_every_n_steps: int = 10
    enable_checkpointing: Optional[bool] = None
    enable_progress_bar: bool = True
    enable_model_summary: Optional[bool] = False
    accumulate_grad_batches: int = 1
    gradient_clip_val: Any = 1.0
    gradient_clip_algorithm: Optional[str] = None
    deterministic: Any = False
    benchmark: Optional[bool] = None
    inference_mode: bool = True
    use_distributed_sampler: bool = False
    profiler: Any = None
    detect_anomaly: bool = False
    barebones: bool = False
    sync_batchnorm: bool = False
    reload_dataloaders_every_n_epochs: int = 0
    default_root_dir: Optional[str] = None
    enable_autolog_hparams: bool = True
    model_registry: Optional[str] = None


BUILT_BY_GLUBENCH = ("logger", "callbacks", "plugins")
"""``lightning.Trainer`` arguments that are not ``trainer.*`` keys: glubench builds them."""


@dataclass
class WandbConfig:
    """Weights & Biases (``logger.wandb.*``): offline unless credentials exist or ``mode`` says otherwise.

    ``group`` defaults to ``experiment_name`` and ``name`` to ``<ffn>-s<seed>``; ``tags`` are added
    to the default tags (ffn, model size, corpus).  Built by :class:`glubench.train.loggers.GlubenchWandbLogger`.
    """

    _target_: str = "glubench.train.loggers.GlubenchWandbLogger"
    project: str = "glubench"
    entity: Optional[str] = None
    group: Optional[str] = None
    name: Optional[str] = None
    mode: Optional[str] = None  # online | offline | disabled; null: online iff credentials exist
    tags: list[str] = field(default_factory=list)
    job_type: str = "train"
    log_model: Any = False  # Lightning's: true uploads the checkpoints as W&B artifacts at the end, "all" as written


@dataclass
class CSVConfig:
    """Per-step metrics in ``<run dir>/<name>/metrics.csv`` (``logger.csv.*``)."""

    _target_: str = "glubench.train.loggers.GlubenchCSVLogger"
    name: str = "csv"


@dataclass
class LoggerConfig:
    """Experiment trackers (``logger=both|wandb|csv|none``); an absent one is ``null``."""

    wandb: Optional[WandbConfig] = None
    csv: Optional[CSVConfig] = None


@dataclass
class ThroughputConfig:
    """Throughput measurement (``throughput.*``)."""

    warmup_steps: int = 10  # optimizer steps excluded from tokens/s
    peak_flops: Optional[float] = None  # dense peak FLOP/s; null: look the device up, else no MFU

    def __post_init__(self) -> None:
        """Raises :class:`ConfigError` for a negative ``warmup_steps`` or a non-positive ``peak_flops``."""
        if self.peak_flops is not None and not (math.isfinite(self.peak_flops) and self.peak_flops > 0):
            raise ConfigError(f"throughput.peak_flops={self.peak_flops} must be a positive number of FLOP/s or null")
        if self.warmup_steps < 0:
            raise ConfigError(f"throughput.warmup_steps={self.warmup_steps} must be >= 0")


@dataclass
class BudgetConfig:
    """How long each run trains (``budget.*``; see :mod:`glubench.train.budget`).

    ``mode``: ``tokens`` (default), ``flops`` (analytic training FLOPs), ``time`` (training
    seconds, validation excluded) or ``tokens_per_param`` (training tokens per non-embedding
    parameter).  ``value`` in that unit; ``null`` means what ``trainer.max_steps`` gives (for
    ``flops``: what those steps cost the non-gated baseline); ``time`` and ``tokens_per_param``
    need a value.
    """

    mode: str = "tokens"
    value: Optional[float] = None

    def __post_init__(self) -> None:
        """The rules on ``budget.mode`` and ``budget.value`` (checked before any data is read).

        Raises:
            ConfigError: an unknown mode, a non-positive value, or no value for ``time`` or ``tokens_per_param``.
        """
        if self.mode not in BUDGET_MODES:
            raise ConfigError(f"budget.mode={self.mode!r} is not known; valid: {', '.join(BUDGET_MODES)}")
        if self.value is not None and not self.value > 0:
            raise ConfigError(f"budget.value={self.value} must be positive or null")
        needs = {"time": "the training seconds, e.g. budget.value=60",
                 "tokens_per_param": "the tokens per parameter, e.g. budget.value=20"}
        if self.value is None and self.mode in needs:
            raise ConfigError(f"budget.value=null: budget={self.mode} needs {needs[self.mode]}")


@dataclass
class TuneConfig:
    """Per-variant LR tuning (``tune.*``; see :mod:`glubench.sweep.tune`).  Empty ``variants``: one training job.

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

    def __post_init__(self) -> None:
        """Raises :class:`ConfigError` for an unknown variant, no trial or seed to run, or a bad ``lr_range``."""
        for v in self.variants or []:
            if v not in FFN_VARIANTS:
                raise ConfigError(f"tune.variants: {v!r} is not a known FFN; valid: {', '.join(FFN_VARIANTS)}")
        if self.variants and (self.n_trials < 1 or not self.seeds):
            raise ConfigError(f"tune.n_trials={self.n_trials} must be >= 1 and tune.seeds={list(self.seeds)} "
                              "must list at least one seed")
        lr_range = list(self.lr_range)
        if len(lr_range) != 2 or not 0 < lr_range[0] < lr_range[1] or not math.isfinite(lr_range[1]):
            raise ConfigError(f"tune.lr_range={lr_range} must be [low, high] with 0 < low < high")


@dataclass
class FaultsConfig:
    """What a run does on a non-finite loss or gradient (``faults.*``; see ``train.callbacks.NonFiniteGuard``)."""

    on_nonfinite: str = "stop"  # stop | skip (drop the batch's update, at most max_skips times)
    max_skips: int = 10  # skip mode: the run is marked diverged when more batches than this are dropped

    def __post_init__(self) -> None:
        """Raises :class:`ConfigError` for an unknown ``on_nonfinite`` or a negative ``max_skips``."""
        if self.on_nonfinite not in NONFINITE_ACTIONS:
            raise ConfigError(f"faults.on_nonfinite={self.on_nonfinite!r} is not known; "
                              f"valid: {', '.join(NONFINITE_ACTIONS)}")
        if self.max_skips < 0:
            raise ConfigError(f"faults.max_skips={self.max_skips} must be >= 0")


@dataclass
class DiagnosticsConfig:
    """Optional activation diagnostics (``diagnostics.*``; see :mod:`glubench.analysis.dead_units`)."""

    dead_units: bool = False  # probe dead units / sparsity / gate saturation during training
    every_n_steps: int = 50  # optimizer steps between probes (also at the start and the end)
    probe_batch_size: int = 8  # validation windows of model.seq_len in the fixed probe batch
    eps: float = 1e-3  # smooth activations: |act(z)| < eps counts as off
    saturation_tol: float = 1e-2  # gated: |act'(xW)| < tol counts as a saturated gate

    def __post_init__(self) -> None:
        """Raises :class:`ConfigError` for a non-positive interval or probe size, or a negative tolerance."""
        for key, value in (("every_n_steps", self.every_n_steps), ("probe_batch_size", self.probe_batch_size)):
            if value <= 0:
                raise ConfigError(f"diagnostics.{key}={value} must be a positive integer")
        for key, value in (("eps", self.eps), ("saturation_tol", self.saturation_tol)):
            if not value >= 0:
                raise ConfigError(f"diagnostics.{key}={value} must be >= 0")


@dataclass
class LadderConfig:
    """A compute ladder (``ladder.*``; experiments ``ladder_ci``, ``ladder_cpu``, ``ladder_gpu``).

    ``sizes`` names each rung and gives its ``d_model``, ``n_layers``, ``n_heads`` and ``lr`` (the rule's
    learning rate); ``size`` is this job's rung (the sweep sets it).  ``lr_scale`` multiplies the rung's
    ``lr`` (``optim.lr: ${mul:...}``): sweeping it (0.5, 1, 2) is the per-variant LR grid, which the report
    treats as a selection on the validation split, never as seeds.  The experiment's ``model.*`` and
    ``optim.lr`` read the rung by interpolation, so a run's config records the sizes it trained.
    """

    size: Optional[str] = None
    sizes: dict[str, Any] = field(default_factory=dict)
    lr_scale: float = 1.0


@dataclass
class DataModuleConfig:
    """The LightningDataModule (``datamodule.*``), built by ``hydra.utils.instantiate`` with the typed
    ``data`` section, ``model.seq_len``, the run's training batches and ``seed``."""

    _target_: str = "glubench.data.datamodule.LMDataModule"


@dataclass
class ModuleConfig:
    """The LightningModule (``module.*``), built by ``hydra.utils.instantiate`` with the validated
    ``model`` section, ``optim`` and the run's optimizer steps (the schedule's horizon)."""

    _target_: str = "glubench.train.module.LanguageModel"


@dataclass
class Config:
    """The whole run: one group per section plus run-level keys."""

    model: ModelConfig = MISSING
    data: DataConfig = MISSING
    datamodule: DataModuleConfig = field(default_factory=DataModuleConfig)
    module: ModuleConfig = field(default_factory=ModuleConfig)
    trainer: TrainerConfig = MISSING
    logger: LoggerConfig = field(default_factory=LoggerConfig)
    # Lightning callbacks by name (``conf/callbacks/``), each built with hydra.utils.instantiate;
    # null (or ``enabled: false``) switches one off.
    callbacks: Optional[dict[str, Any]] = None
    optim: OptimConfig = field(default_factory=OptimConfig)
    throughput: ThroughputConfig = field(default_factory=ThroughputConfig)
    budget: BudgetConfig = field(default_factory=BudgetConfig)
    tune: TuneConfig = field(default_factory=TuneConfig)
    faults: FaultsConfig = field(default_factory=FaultsConfig)
    # auto (or last): resume from <run dir>/checkpoints/last.ckpt if it exists; never; or a path
    ckpt_path: Optional[str] = "auto"
    diagnostics: DiagnosticsConfig = field(default_factory=DiagnosticsConfig)
    ladder: LadderConfig = field(default_factory=LadderConfig)
    seed: int = 0
    experiment_name: str = "default"
    overwrite: bool = False  # replace a completed results.json in the same output dir (else refuse)
    verbose: bool = False  # the console shows every library's messages and W&B's, not only glubench's


@dataclass
class HarnessConfig:
    """lm-evaluation-harness settings of ``glubench-eval tasks=[...]`` (``harness.*``)."""

    include_path: Optional[str] = None  # a folder of task YAMLs beyond the harness's own (local tasks)
    num_fewshot: Optional[int] = None  # null: each task's default
    limit: Optional[float] = None  # documents per task (a fraction if < 1); null: all
    batch_size: int = 1


@dataclass
class EvalConfig:
    """``glubench-eval``: score a checkpoint on a corpus split (``conf/eval.yaml``).

    ``data`` null scores the corpus the checkpoint was trained on; any ``data=...`` scores another
    one with the checkpoint's own tokenizer.  ``split`` is ``val``, ``train`` or ``test`` (a corpus with a test
    split: ``data.test_percent`` > 0, ``data.test_files`` or ``data.test_split``).  ``tasks`` also runs
    lm-evaluation-harness tasks on the checkpoint's Hugging Face export (:mod:`glubench.train.downstream`).
    """

    ckpt_path: str = MISSING
    split: str = "val"
    data: Optional[DataConfig] = None
    tasks: list[str] = field(default_factory=list)
    harness: HarnessConfig = field(default_factory=HarnessConfig)
    trainer: TrainerConfig = MISSING
    logger: LoggerConfig = field(default_factory=LoggerConfig)
    seed: int = 0
    experiment_name: str = "eval"
    verbose: bool = False


def _mul(*factors: float) -> float:
    """``${mul:a,b,...}``: the product of numbers (the ladder's ``optim.lr`` = rung LR × ``ladder.lr_scale``)."""
    return float(math.prod(float(f) for f in factors))


def zfill(value: Any, width: int = 3) -> str:
    """``${zfill:${hydra.job.num},3}``: ``value`` as an integer padded with zeros to ``width`` digits, so that
    sweep job folders sort in job order (``000``, ``001``, ..., ``010``) rather than as text."""
    return f"{int(value):0{int(width)}d}"


def register_configs() -> None:
    """Register :class:`Config` as ``base_config``, :class:`EvalConfig` as ``base_eval`` and the resolvers
    the configs use: ``mul`` and ``zfill`` (the sweep folder names)."""
    ConfigStore.instance().store(name="base_config", node=Config)
    ConfigStore.instance().store(name="base_eval", node=EvalConfig)
    OmegaConf.register_new_resolver("mul", _mul, replace=True)
    OmegaConf.register_new_resolver("zfill", zfill, replace=True)

