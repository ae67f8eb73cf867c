"""The config's rules (not Lightning's validation loop), checked once per run before any heavy work.

Types and key names are checked by Hydra against :mod:`glubench.train.schema` while the config
is composed (a misspelt key or ``model.n_layers=four`` never reaches this module), and a section
whose rules involve only its own fields (``optim``, ``budget``, ``faults``, ...) checks them in its
dataclass's ``__post_init__``, which :func:`validate_config` runs.  It checks everything else that
can be known before data preparation, model build or W&B init: keys added with ``+`` that nothing
reads, value ranges, cross-field rules, devices and the data files.  Each broken rule raises
:class:`~glubench.core.errors.ConfigError` with one line naming the key, the bad value and what is
allowed.  The rule that needs the tokenized data (``model.seq_len`` against the validation split) is
:func:`check_splits`, still before the model is built.  Nothing here imports torch until devices
are counted, so a typo costs well under two seconds.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

from glubench.core.errors import ConfigError
from glubench.data.files import FORMATS, check_data_file, expand_files, infer_format
from glubench.data.sources import check_source
from glubench.data.tokenizers import TOKENIZERS
from glubench.nn.config import ModelConfig
from glubench.train.devices import available_devices, parse_devices

PRECISIONS = ("32-true", "32", "bf16-mixed", "bf16-true", "16-mixed", "16-true", "64-true")
GPT2_VOCAB = 50257
ACCELERATORS = ("auto", "cpu", "gpu", "cuda", "mps", "tpu")
WANDB_MODES = ("online", "offline", "disabled")
BPE_VOCAB = (257, 65535)  # byte-level BPE starts from 256 byte tokens; uint16 token arrays


def model_config(cfg: DictConfig, vocab_size: int | None = None) -> ModelConfig:
    """Build the :class:`ModelConfig` from ``cfg.model`` (``vocab_size`` from the tokenizer if given).

    Raises:
        ConfigError: on any invalid model key.
    """
    values = OmegaConf.to_container(cfg.model, resolve=True)
    if vocab_size is not None:
        values["vocab_size"] = vocab_size
    try:
        return ModelConfig(**values)
    except ValueError as e:
        raise ConfigError(str(e)) from None


def _positive_ints(pairs: Sequence[tuple[str, Any]]) -> None:
    for key, value in pairs:
        if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
            raise ConfigError(f"{key}={value} must be a positive integer")


def _one_of(key: str, value: Any, allowed: Sequence[str]) -> None:
    if value not in allowed:
        raise ConfigError(f"{key}={value!r} is not known; valid: {', '.join(allowed)}")


def unknown_keys(cfg: DictConfig) -> list[str]:
    """Dotted keys of ``cfg`` that no schema field declares (added with ``+``, so nothing reads them).

    Nodes typed ``Any`` or ``dict`` (``callbacks``, ``data.files``) are open and not searched.
    Each entry reads ``key`` or ``key (did you mean other?)``.
    """
    found: list[str] = []

    def walk(node: DictConfig, prefix: str) -> None:
        schema = OmegaConf.get_type(node)
        if not dataclasses.is_dataclass(schema):
            return
        declared = [f.name for f in dataclasses.fields(schema)]
        for key in node.keys():
            if key == "hydra" and not prefix:
                continue
            if key not in declared:
                close = difflib.get_close_matches(str(key), declared, n=1)
                found.append(f"{prefix}{key}" + (f" (did you mean {prefix}{close[0]}?)" if close else ""))
                continue
            child = node._get_node(key)
            if isinstance(child, DictConfig) and not child._is_none() and not child._is_missing():
                walk(child, f"{prefix}{key}.")

    walk(cfg, "")
    return found


def _check_keys(cfg: DictConfig) -> None:
    """A key added with ``+`` that no part of glubench (or lightning.Trainer) reads is an error, not ignored."""
    for entry in unknown_keys(cfg):
        key = entry.split(" ")[0]
        value = OmegaConf.select(cfg, key, default=None)
        if key.startswith("trainer."):
            raise ConfigError(f"{key}={value!r} is not an argument of lightning.Trainer"
                              + entry[len(key):].replace(" (", "; ").rstrip(")"))
        raise ConfigError(f"{key}={value!r}: no such key, nothing would read it" + entry[len(key):].replace(" (", "; ")
                          .rstrip(")"))


def _check_callbacks(callbacks: Any) -> None:
    for name, node in (callbacks or {}).items():
        if node is not None and not (isinstance(node, DictConfig) and "_target_" in node):
            raise ConfigError(f"callbacks.{name}={node!r} must be null or a mapping with a _target_ (a Callback class)")


# ---------------------------------------------------------------------------- devices


def _check_devices(t: DictConfig) -> None:
    _one_of("trainer.accelerator", t.accelerator, ACCELERATORS)
    kind, available = available_devices(t.accelerator)
    if available == 0:
        raise ConfigError(f"trainer.accelerator={t.accelerator!r} but no {kind} is available; "
                          "use trainer.accelerator=auto or cpu")
    devices = parse_devices(t.devices)
    if isinstance(devices, list) and len(set(devices)) != len(devices):
        raise ConfigError(f"trainer.devices={devices} lists a device twice")
    if devices in (None, -1) or available is None:
        return
    if isinstance(devices, int):
        if devices > available:
            raise ConfigError(f"trainer.devices={devices} but only {available} {kind} device(s) are available")
    elif min(devices) < 0 or max(devices) >= available:
        raise ConfigError(f"trainer.devices={devices} but the {kind} indices available are 0..{available - 1}")


def _check_trainer(t: DictConfig) -> None:
    _positive_ints([("trainer.max_steps", t.max_steps), ("trainer.log_every_n_steps", t.log_every_n_steps),
                    ("trainer.accumulate_grad_batches", t.accumulate_grad_batches),
                    ("trainer.num_nodes", t.num_nodes)])
    v = t.val_check_interval
    if isinstance(v, float) and not isinstance(v, bool):
        if not 0.0 < v <= 1.0:
            raise ConfigError(f"trainer.val_check_interval={v} must be a positive number of steps or a fraction "
                              "of the epoch in (0, 1]")
        if t.check_val_every_n_epoch is None:
            raise ConfigError(f"trainer.val_check_interval={v} is a fraction of an epoch, which Lightning counts only "
                              "with trainer.check_val_every_n_epoch set (e.g. 1)")
    else:  # an interval beyond the run's steps is clamped to them (glubench.train.task.val_check_batches)
        _positive_ints([("trainer.val_check_interval", v)])
    _one_of("trainer.precision", str(t.precision), PRECISIONS)
    clip = t.gradient_clip_val
    if clip is not None and not (isinstance(clip, (int, float)) and math.isfinite(clip) and clip >= 0):
        raise ConfigError(f"trainer.gradient_clip_val={clip} must be >= 0 (0: no clipping)")


# ---------------------------------------------------------------------------- data files


def _check_cache_dir(value: str) -> None:
    path = Path(os.path.expanduser(value))
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ConfigError(f"data.cache_dir={value!r} cannot be created ({e.strerror or e})") from None
    if not os.access(path, os.W_OK | os.X_OK):
        raise ConfigError(f"data.cache_dir={value!r} is not writable")


def _check_files(d: DictConfig, key: str) -> None:
    """Every file ``data.files`` / ``data.val_files`` names exists and, for text, is non-empty UTF-8.

    Each file is read once (and hashed): the corpus loader reuses the hash in this process.
    """
    paths = expand_files(d.get(key.split(".")[1]), key)
    fmt = infer_format(paths, d.format, key)
    for path in paths:
        check_data_file(path, fmt, key)


def _check_data(d: DictConfig) -> None:
    _positive_ints([("data.batch_size", d.batch_size), ("data.val_batch_size", d.val_batch_size)])
    if d.num_workers < 0:
        raise ConfigError(f"data.num_workers={d.num_workers} must be >= 0")
    files = None if OmegaConf.is_missing(d, "files") else d.files  # data=text leaves it ??? (MISSING)
    check_source(d.name, files, d.val_files, d.local_dir, d.hub_id, d.test_files)
    _one_of("data.tokenizer", d.tokenizer, TOKENIZERS)
    if d.format is not None:
        _one_of("data.format", d.format, FORMATS)
    if d.streaming and not (d.max_tokens and d.max_tokens > 0):
        raise ConfigError(f"data.max_tokens={d.max_tokens} must be a positive token budget with data.streaming=true")
    if d.num_proc is not None and d.num_proc < 1:
        raise ConfigError(f"data.num_proc={d.num_proc} must be >= 1 or null")
    if d.tokenizer == "bpe" and not BPE_VOCAB[0] <= d.vocab_size <= BPE_VOCAB[1]:
        raise ConfigError(f"data.vocab_size={d.vocab_size} must be in [{BPE_VOCAB[0]}, {BPE_VOCAB[1]}] "
                          "for data.tokenizer=bpe (256 byte tokens plus at least one merge)")
    if not 0 < d.val_percent < 100:
        raise ConfigError(f"data.val_percent={d.val_percent} must be in (0, 100)")
    if not 0 <= d.test_percent < 100 - d.val_percent:
        raise ConfigError(f"data.test_percent={d.test_percent} must be in [0, {100 - d.val_percent:g}) "
                          f"(data.val_percent={d.val_percent} takes the rest; 0: no test split)")
    if d.test_split and (files or not (d.hub_id or d.local_dir)):
        raise ConfigError(f"data.test_split={d.test_split!r} names a Hub split: it needs data.hub_id or "
                          "data.local_dir (for local files use data.test_files)")
    _check_cache_dir(d.cache_dir)
    if files:
        _check_files(d, "data.files")
    if d.val_files:
        _check_files(d, "data.val_files")
    if d.test_files:
        _check_files(d, "data.test_files")


# ---------------------------------------------------------------------------- the rules


def validate_config(cfg: DictConfig) -> ModelConfig:
    """Check every rule that can be checked before the data is tokenized; return the model config.

    Args:
        cfg: the composed run config (typed by :class:`glubench.train.schema.Config`).

    Returns:
        the :class:`ModelConfig` with the tokenizer's vocabulary size.

    Raises:
        ConfigError: the first rule broken, as one line naming the key, the value and what is allowed.
    """
    _check_keys(cfg)
    t, d = cfg.trainer, cfg.data
    if not 0 <= cfg.seed < 2**32:
        raise ConfigError(f"seed={cfg.seed} must be in [0, 2**32)")
    b = OmegaConf.to_object(cfg.budget)
    steps_from_max_steps = b.mode == "tokens" and b.value is None
    _check_trainer(t)
    o = OmegaConf.to_object(cfg.optim)  # each section's own rules: OptimConfig's, TuneConfig's, ...
    OmegaConf.to_object(cfg.tune)
    if o.warmup_fraction is None and (o.warmup_steps < 0 or (steps_from_max_steps and o.warmup_steps >= t.max_steps)):
        raise ConfigError(f"optim.warmup_steps={o.warmup_steps} must be in [0, trainer.max_steps={t.max_steps})")
    OmegaConf.to_object(cfg.diagnostics)
    tp = OmegaConf.to_object(cfg.throughput)
    if cfg.model.compile and tp.warmup_steps < 1:
        raise ConfigError(f"throughput.warmup_steps={tp.warmup_steps} must be >= 1 with model.compile=true "
                          "(the first step compiles; its time must not count as throughput)")
    wandb = cfg.logger.wandb
    if wandb is not None and wandb.mode is not None:
        _one_of("logger.wandb.mode", wandb.mode, WANDB_MODES)
    _check_callbacks(cfg.callbacks)
    budget_cb = (cfg.callbacks or {}).get("budget")
    if b.mode == "time" and (budget_cb is None or not budget_cb.get("enabled", True)):
        raise ConfigError("callbacks.budget=null: budget=time needs the budget callback to stop the run")
    OmegaConf.to_object(cfg.faults)
    if not (math.isfinite(cfg.model.init_std) and cfg.model.init_std > 0):
        raise ConfigError(f"model.init_std={cfg.model.init_std} must be a positive number")
    vocab = {"bytes": 256, "gpt2": GPT2_VOCAB}.get(d.tokenizer, d.vocab_size)
    if cfg.model.vocab_size not in (256, vocab):  # 256: the schema default, replaced by the tokenizer's
        raise ConfigError(f"model.vocab_size={cfg.model.vocab_size} is set by the tokenizer "
                          f"(data.tokenizer={d.tokenizer!r} gives {vocab}); set data.vocab_size for bpe instead")
    model = model_config(cfg, vocab_size=vocab)  # sizes, heads, FFN variant, init, dropout
    _check_data(d)
    _check_devices(t)
    return model


def check_splits(model: ModelConfig, splits: Any, data_name: str) -> None:
    """The rule that needs the tokenized data: the validation split holds one window of ``model.seq_len + 1``.

    (:func:`glubench.data.cache.load_tokens` already refused a train split shorter than that.)

    Raises:
        ConfigError: naming ``model.seq_len``, the split and its token count.
    """
    need, tokens = model.seq_len + 1, splits.val.size
    if tokens < need:
        raise ConfigError(
            f"model.seq_len={model.seq_len} needs at least {need} tokens per split but the validation split of "
            f"data.name={data_name!r} has {tokens}; lower model.seq_len or add text"
            + (" (or change data.val_percent)" if data_name == "text" else "")
        )


def output_dir() -> Path:
    """This job's Hydra output dir (the current dir outside Hydra)."""
    if HydraConfig.initialized():
        return Path(HydraConfig.get().runtime.output_dir)
    return Path.cwd()


def check_output_dir(out: Path, overwrite: bool) -> None:
    """Refuse to replace a completed ``results.json`` in ``out`` unless ``overwrite=true``.

    Each run normally gets a fresh timestamped folder; this matters when ``hydra.run.dir`` (or
    ``hydra.sweep.dir``) is fixed, e.g. by a SLURM requeue rerunning the same command.

    Raises:
        ConfigError: ``out/results.json`` holds ``status: completed`` and ``overwrite`` is false.
    """
    path = Path(out) / "results.json"
    if overwrite or not path.is_file():
        return
    try:
        status = json.loads(path.read_text()).get("status")
    except (OSError, ValueError, AttributeError):
        return  # unreadable or partial: nothing finished to protect
    if status == "completed":
        raise ConfigError(f"overwrite=false but {path} already holds a completed run; "
                          "pass overwrite=true to replace it or choose another hydra.run.dir")
