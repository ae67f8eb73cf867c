"""One place for the rules that involve several config keys, checked before any heavy work."""

from __future__ import annotations

from omegaconf import DictConfig, OmegaConf

from glubench.corpora import CORPORA, FORMATS
from glubench.data import TOKENIZERS
from glubench.ffn import FFN_REGISTRY
from glubench.model import ModelConfig

PRECISIONS = ("32-true", "32", "bf16-mixed", "bf16-true", "16-mixed", "16-true", "64-true")
GPT2_VOCAB = 50257
BUDGET_MODES = ("tokens", "flops", "time")  # glubench.budget


class ConfigError(ValueError):
    """A bad config value; the message names the key, the value and what is allowed."""


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


def validate_config(cfg: DictConfig) -> ModelConfig:
    """Check cross-field rules and return the model config.

    Raises:
        ConfigError: the first rule broken, as one line naming the key and the allowed values.
    """
    t, d, o = cfg.trainer, cfg.data, cfg.optim
    for key, value in (("trainer.max_steps", t.max_steps), ("trainer.val_check_interval", t.val_check_interval),
                       ("trainer.log_every_n_steps", t.log_every_n_steps),
                       ("trainer.accumulate_grad_batches", t.accumulate_grad_batches),
                       ("data.batch_size", d.batch_size), ("data.val_batch_size", d.val_batch_size)):
        if value <= 0:
            raise ConfigError(f"{key}={value} must be a positive integer")
    if not o.lr > 0:
        raise ConfigError(f"optim.lr={o.lr} must be positive")
    tune = cfg.get("tune") or {}
    for v in tune.get("variants") or []:
        if v not in FFN_REGISTRY:
            raise ConfigError(f"tune.variants: {v!r} is not a known FFN; valid: {', '.join(FFN_REGISTRY)}")
    if tune.get("variants") and (tune.get("n_trials", 1) < 1 or not tune.get("seeds")):
        raise ConfigError(f"tune.n_trials={tune.get('n_trials')} must be >= 1 and tune.seeds={tune.get('seeds')} "
                          "must list at least one seed")
    b = cfg.get("budget") or {"mode": "tokens", "value": None}
    if b["mode"] not in BUDGET_MODES:
        raise ConfigError(f"budget.mode={b['mode']!r} is not known; valid: {', '.join(BUDGET_MODES)}")
    if b["value"] is not None and not b["value"] > 0:
        raise ConfigError(f"budget.value={b['value']} must be positive or null")
    if b["mode"] == "time" and b["value"] is None:
        raise ConfigError("budget.value=null: budget=time needs the training seconds, e.g. budget.value=60")
    # Other budgets set the steps later (glubench.budget.plan_budget checks warmup against them).
    steps_from_max_steps = b["mode"] == "tokens" and b["value"] is None
    if o.warmup_steps < 0 or (steps_from_max_steps and o.warmup_steps >= t.max_steps):
        raise ConfigError(
            f"optim.warmup_steps={o.warmup_steps} must be in [0, trainer.max_steps={t.max_steps})"
        )
    if t.precision not in PRECISIONS:
        raise ConfigError(f"trainer.precision={t.precision!r} is not known; valid: {', '.join(PRECISIONS)}")
    if d.tokenizer not in TOKENIZERS:
        raise ConfigError(f"data.tokenizer={d.tokenizer!r} is not known; valid: {', '.join(TOKENIZERS)}")
    if d.name not in CORPORA and not (d.files or d.local_dir or d.hub_id):
        raise ConfigError(f"data.name={d.name!r} is not a known corpus; valid: {', '.join(CORPORA)} "
                          "(or give data.files, data.local_dir or data.hub_id)")
    if d.format is not None and d.format not in FORMATS:
        raise ConfigError(f"data.format={d.format!r} is not known; valid: {', '.join(FORMATS)} or null")
    if d.streaming and not (d.max_tokens and d.max_tokens > 0):
        raise ConfigError(f"data.max_tokens={d.max_tokens} must be a positive token budget with data.streaming=true")
    if d.num_proc is not None and d.num_proc < 1:
        raise ConfigError(f"data.num_proc={d.num_proc} must be >= 1 or null")
    if d.val_files and not d.files:
        raise ConfigError("data.val_files needs data.files (the training files)")
    if d.tokenizer == "bpe" and not 257 <= d.vocab_size <= 65535:
        raise ConfigError(f"data.vocab_size={d.vocab_size} must be in [257, 65535] for data.tokenizer=bpe")
    if not 0 < d.val_percent < 100:
        raise ConfigError(f"data.val_percent={d.val_percent} must be in (0, 100)")
    g = cfg.diagnostics
    for key, value in (("diagnostics.every_n_steps", g.every_n_steps),
                       ("diagnostics.probe_batch_size", g.probe_batch_size)):
        if value <= 0:
            raise ConfigError(f"{key}={value} must be a positive integer")
    for key, value in (("diagnostics.eps", g.eps), ("diagnostics.saturation_tol", g.saturation_tol)):
        if not value >= 0:
            raise ConfigError(f"{key}={value} must be >= 0")
    if cfg.throughput.peak_flops is not None and not cfg.throughput.peak_flops > 0:
        raise ConfigError(f"throughput.peak_flops={cfg.throughput.peak_flops} must be positive or null")
    if cfg.model.get("compile") and cfg.throughput.warmup_steps < 1:
        raise ConfigError(f"throughput.warmup_steps={cfg.throughput.warmup_steps} must be >= 1 with model.compile=true "
                          "(the first step compiles; its time must not count as throughput)")
    vocab = {"bytes": 256, "gpt2": GPT2_VOCAB}.get(d.tokenizer, d.vocab_size)
    return model_config(cfg, vocab_size=vocab)
