"""``glubench-eval``: score any glubench checkpoint on a corpus split, with the checkpoint's own tokenizer.

The checkpoint carries everything needed: the model's hyperparameters (``LanguageModel``) and
the data config it was trained on (the datamodule's).  The split is scored exactly like
validation during training (every token but the first predicted once, corpus-level NLL), so on
the run's own validation split the loss equals the run's ``val_loss``.
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf

from glubench.core.errors import ConfigError
from glubench.core.io import atomic_write_json
from glubench.core.logging import ignore_known_warnings, route_through_root
from glubench.core.secrets import redact
from glubench.data.cache import prepare_splits
from glubench.data.windows import ValWindows
from glubench.train.build import build_loggers, build_trainer
from glubench.train.downstream import check_downstream, run_downstream
from glubench.train.module import LanguageModel
from glubench.train.task import finish_wandb, output_dir

log = logging.getLogger(__name__)

SPLITS = ("val", "train", "test")
EVAL_FILE = "eval.json"
TOKENIZER_KEYS = ("tokenizer", "vocab_size", "tokenizer_file")


def load_checkpoint(path: Path) -> tuple[dict, dict, dict, int]:
    """``(state, module hyperparameters, datamodule hyperparameters, global_step)`` of a checkpoint, read once
    (weights-only); ``state`` is the whole checkpoint.

    Raises:
        ConfigError: the file is missing or is not a glubench checkpoint.
    """
    if not path.is_file():
        raise ConfigError(f"ckpt_path={str(path)!r}: no such checkpoint file")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - any unreadable file is a bad input here
        raise ConfigError(f"ckpt_path={str(path)!r} cannot be read as a checkpoint ({type(e).__name__})") from None
    hparams, data = state.get("hyper_parameters") or {}, state.get("datamodule_hyper_parameters") or {}
    if "model" not in hparams or not data:
        raise ConfigError(f"ckpt_path={str(path)!r} is not a glubench checkpoint (no model or data hyperparameters)")
    return state, dict(hparams), dict(data), int(state.get("global_step", 0))


def check_keys(cfg: DictConfig) -> None:
    """The checks on ``glubench-eval``'s own keys, before the checkpoint or any data is read.

    Raises:
        ConfigError: a ``split`` other than val, train or test; a bad ``tasks`` entry
            (:func:`~glubench.train.downstream.check_downstream`).
    """
    if cfg.split not in SPLITS:
        raise ConfigError(f"split={cfg.split!r} is not known; valid: {', '.join(SPLITS)}")
    if cfg.tasks:
        check_downstream(cfg)


def split_to_score(cfg: DictConfig, trained_on: dict) -> tuple[dict, Any, Any, dict]:
    """What ``glubench-eval`` scores: ``(data, tokens, token_bytes, meta)``, the data config (the checkpoint's,
    or ``cfg.data`` read with the checkpoint's tokenizer keys), ``cfg.split``'s token ids ``(n_tokens,)``, the
    UTF-8 bytes of each token id ``(vocab_size,)`` or ``None``, and the token cache's sidecar.

    Raises:
        ConfigError: a bad data key or file, no test split where ``split='test'``, fewer than 2 tokens.
    """
    data = dict(trained_on)
    if cfg.data is not None:  # another corpus, read with the checkpoint's tokenizer
        data = {**OmegaConf.to_container(cfg.data, resolve=True), **{k: trained_on[k] for k in TOKENIZER_KEYS}}
    try:
        splits = prepare_splits(data, tokenizer_data=trained_on)[1]
        tokens, token_bytes, meta = getattr(splits, cfg.split), splits.token_bytes, splits.meta
    except (ValueError, FileNotFoundError) as e:
        raise ConfigError(str(e)) from e
    if tokens is None:
        raise ConfigError(f"split='test': data.name={data['name']!r} has no test split; score one with "
                          "data.test_percent=P (or data.test_files=PATH) as trained, or another split")
    if tokens.size < 2:
        raise ConfigError(f"split={cfg.split!r} of data.name={data['name']!r} has {tokens.size} tokens; at least 2 "
                          "are needed")
    return data, tokens, token_bytes, meta


def evaluate(cfg: DictConfig) -> dict:
    """Score ``cfg.ckpt_path`` on ``cfg.split`` of ``cfg.data`` (default: the checkpoint's corpus).

    Writes ``<run dir>/eval.json`` (atomically) and, with ``logger=wandb``, a ``job_type=eval``
    W&B run; returns the record: ``loss`` (nats per token), ``ppl``, ``bpb`` (bits per UTF-8 byte),
    ``tokens`` (predicted), the split, the corpus and the checkpoint's step; with ``cfg.tasks``, also
    ``tasks``, lm-evaluation-harness's ``{task: {metric: value}}`` (:mod:`glubench.train.downstream`).

    Raises:
        ConfigError: a bad ``ckpt_path``, ``split``, data key or task, a checkpoint the export cannot represent
            (one line).
    """
    t_start = time.perf_counter()
    check_keys(cfg)
    ckpt = Path(os.path.expanduser(str(cfg.ckpt_path)))
    state, hparams, trained_on, step = load_checkpoint(ckpt)

    route_through_root("lightning", "lightning.pytorch", "lightning.fabric")
    ignore_known_warnings()
    module = LanguageModel(**hparams)  # what LanguageModel.load_from_checkpoint does, without a second read
    module.load_state_dict(state["state_dict"])
    data, tokens, token_bytes, meta = split_to_score(cfg, trained_on)
    loader = torch.utils.data.DataLoader(ValWindows(tokens, module.model_cfg.seq_len, token_bytes),
                                         batch_size=int(data.get("val_batch_size", 32)))
    out = output_dir()
    config = redact({**OmegaConf.to_container(cfg, resolve=True), "data": data})
    loggers = build_loggers(cfg, out, config=config, job_type="eval")
    trainer = build_trainer(cfg, out, callbacks=[], loggers=loggers, enable_checkpointing=False)
    status, tasks = "failed", None
    try:
        trainer.test(module, dataloaders=loader, verbose=False)
        if cfg.tasks:
            tasks = run_downstream(cfg, hparams, trained_on, state, out, source={"ckpt_path": str(ckpt), "step": step})
        status = "completed"
    finally:
        finish_wandb(status)
    m = module.last_test
    record = {
        "status": status, "ckpt_path": str(ckpt), "step": step, "split": cfg.split, "corpus": data["name"],
        "source": meta.get("source"), "corpus_fingerprint": meta.get("fingerprint"),
        "tokenizer": data["tokenizer"], "vocab_size": meta.get("vocab_size"), "ffn": module.model_cfg.ffn,
        "loss": m.get("test/loss"), "ppl": m.get("test/ppl"), "bpb": m.get("test/bpb"),
        "tokens": int(m.get("test/tokens", 0)), "tasks": tasks,
        "wall_time_s": time.perf_counter() - t_start, "model": hparams["model"], "data": config["data"],
    }
    atomic_write_json(out / EVAL_FILE, record)
    log.info(f"glubench-eval: {record['ffn']} at step {step} on {data['name']} ({cfg.split}): "
             f"loss={record['loss']:.6f} ppl={record['ppl']:.3f} "
             + (f"bpb={record['bpb']:.4f} " if record["bpb"] is not None else "")
             + f"tokens={record['tokens']:,} -> {out / EVAL_FILE}")
    return record
