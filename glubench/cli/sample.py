"""``glubench-sample``: text from a glubench checkpoint or an exported folder (a Hydra app).

``glubench-sample ckpt_path=.../last.ckpt prompt="def main" max_new_tokens=200 temperature=0.8 top_k=50
seed=0 num_samples=3`` prints ``num_samples`` continuations of ``prompt`` and writes them to
``<run dir>/samples.json``; ``temperature=0`` is greedy.  ``ckpt_path`` may be a folder written by
``glubench-export`` (then ``transformers`` runs the model; add ``trust_remote_code=true`` when it has its own
modeling file).  The loop is :func:`glubench.nn.sampling.sample`: no KV cache, the context cropped to the
model's ``seq_len``.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import hydra
from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, DictConfig

from glubench.cli.rejected import run_or_reject
from glubench.core.errors import ConfigError
from glubench.core.io import atomic_write_json
from glubench.core.paths import CONF_DIR
from glubench.nn.config import ModelConfig

log = logging.getLogger("glubench")

SAMPLES_FILE = "samples.json"
DEVICES = ("auto", "cpu", "cuda")


@dataclass
class SampleConfig:
    """``glubench-sample`` (``conf/sample.yaml``); ``top_k`` null keeps every token, ``temperature`` 0 is greedy."""

    ckpt_path: str = MISSING
    prompt: str = "\n"
    max_new_tokens: int = 200
    temperature: float = 0.8
    top_k: Optional[int] = 50
    seed: int = 0
    num_samples: int = 3
    device: str = "auto"
    trust_remote_code: bool = False


ConfigStore.instance().store(name="base_sample", node=SampleConfig)


@dataclass
class Sampler:
    """A model as ``logits_fn`` (ids ``(B, T)`` -> logits ``(B, T, V)``) with its tokenizer, context length and
    device."""

    logits_fn: Callable
    encode: Callable[[str], list[int]]
    decode: Callable[[list[int]], str]
    seq_len: int
    device: Any


def load_sampler(path: Path, device: str, trust_remote_code: bool) -> Sampler:
    """A :class:`Sampler` for a checkpoint file (glubench's own model) or an exported folder (``transformers``).

    Raises:
        ConfigError: a missing path, an unreadable checkpoint, a folder that needs ``trust_remote_code``.
    """
    import torch  # the lazy boundary of glubench-sample (with generate_samples): --help stays fast

    dev = torch.device("cuda" if device == "auto" and torch.cuda.is_available() else
                       "cpu" if device == "auto" else device)
    if path.is_dir():
        from glubench.cli.export import quiet_transformers, require  # it loads the training schema
        from glubench.export.folder import load_folder  # heavy: after the keys are checked (--help stays fast)

        require("transformers", "export", "glubench-sample on an exported folder")
        quiet_transformers()
        model, tok, seq_len = load_folder(path, trust_remote_code)
        model.to(dev)
        return Sampler(lambda idx: model(idx).logits, lambda s: tok(s, add_special_tokens=False)["input_ids"],
                       tok.decode, seq_len, dev)
    from glubench.data.cache import load_tokenizer  # heavy: after the keys are checked (--help stays fast)
    from glubench.nn.transformer import Transformer, load_weights
    from glubench.train.evaluate import load_checkpoint

    state, hparams, data, _ = load_checkpoint(path)
    try:
        cfg = ModelConfig(**hparams["model"])
        model = load_weights(Transformer(cfg), state["state_dict"]).to(dev)
    except (TypeError, ValueError) as e:
        raise ConfigError(f"ckpt_path={str(path)!r}: {e}") from None
    tok = load_tokenizer(data)
    return Sampler(model, tok.encode, tok.decode, cfg.seq_len, dev)


def check_keys(cfg: DictConfig) -> None:
    """Raises:
        ConfigError: a bad ``num_samples``, ``device``, ``max_new_tokens``, ``temperature`` or ``top_k`` (one line)."""
    from glubench.nn.sampling import check_sampling  # loads torch: not at the top, for --help

    if cfg.num_samples < 1:
        raise ConfigError(f"num_samples={cfg.num_samples} must be a positive integer")
    if cfg.device not in DEVICES:
        raise ConfigError(f"device={cfg.device!r} is not known; valid: {', '.join(DEVICES)}")
    try:
        check_sampling(cfg.max_new_tokens, cfg.temperature, cfg.top_k)
    except ValueError as e:
        raise ConfigError(str(e)) from None


def generate_samples(cfg: DictConfig) -> list[str]:
    """``cfg.num_samples`` continuations of ``cfg.prompt`` (the new text only), printed and written to
    ``<run dir>/samples.json`` with the settings.

    Raises:
        ConfigError: see :func:`check_keys` and :func:`load_sampler`; a prompt that encodes to no tokens.
    """
    import torch  # heavy: after the keys are checked (--help stays fast)

    from glubench.nn.sampling import sample
    from glubench.train.config_rules import output_dir  # loads the data sources (numpy)
    check_keys(cfg)
    path = Path(os.path.expanduser(str(cfg.ckpt_path)))
    if not path.exists():
        raise ConfigError(f"ckpt_path={str(path)!r}: no such checkpoint file or exported folder")
    s = load_sampler(path, cfg.device, cfg.trust_remote_code)
    ids = list(s.encode(cfg.prompt))
    if not ids:
        raise ConfigError(f"prompt={cfg.prompt!r} encodes to no tokens; give at least one character")
    idx = torch.tensor([ids] * cfg.num_samples, dtype=torch.long, device=s.device)  # (num_samples, T)
    gen = torch.Generator(device=s.device).manual_seed(cfg.seed)
    with torch.no_grad():
        out = sample(s.logits_fn, idx, cfg.max_new_tokens, s.seq_len, cfg.temperature, cfg.top_k, gen)
    texts = [s.decode(row[len(ids):].tolist()) for row in out]
    for i, text in enumerate(texts):
        print(f"--- sample {i + 1}/{len(texts)} ---\n{cfg.prompt}{text}")
    record = {"ckpt_path": str(path), "prompt": cfg.prompt, "max_new_tokens": cfg.max_new_tokens,
              "temperature": cfg.temperature, "top_k": cfg.top_k, "seed": cfg.seed, "samples": texts,
              "token_ids": [row.tolist() for row in out]}
    atomic_write_json(output_dir() / SAMPLES_FILE, record)
    log.info(f"glubench-sample: {len(texts)} samples -> {output_dir() / SAMPLES_FILE}")
    return texts


@hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name="sample")
def main(cfg: DictConfig) -> None:
    """``glubench-sample ckpt_path=... [prompt=...] [temperature=0]``; exit 2 with one line on bad input."""
    run_or_reject("glubench-sample", generate_samples, cfg)


def cli() -> None:
    """The ``glubench-sample`` console script."""
    main()


if __name__ == "__main__":
    cli()
