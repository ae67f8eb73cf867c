"""What a training job says: a few lines on the console, every detail in ``train.log``.

A single run prints what it trains, on which data and budget, where its files go, its progress
(:class:`glubench.train.monitors.GlubenchProgressBar`) and its final numbers (:func:`summary_line`).  A job
of a sweep prints only what it trains and its final line (Hydra's launcher line above it names the
job's overrides); the other lines go to ``train.log`` only (:data:`glubench.core.logging.FILE_ONLY`).
``verbose=true`` shows everything; ``debug=default`` adds glubench's DEBUG lines (config, token
cache, budget plan, resume decision).
"""

from __future__ import annotations

import logging
import math
from pathlib import Path

from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig

from glubench.core.logging import FILE_ONLY
from glubench.core.ranks import is_global_zero
from glubench.train.budget import TIME_MODE_MAX_STEPS
from glubench.train.loggers import GlubenchCSVLogger, GlubenchWandbLogger

log = logging.getLogger(__name__)


def in_sweep() -> bool:
    """Whether this job is one of a Hydra multirun."""
    return HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN


def announce(cfg: DictConfig, model_cfg, counts, splits, plan, out: Path, loggers: list,
             ckpt: Path | None, resume_step: int | None) -> None:
    """Log what the job trains (console), its data, budget and files (console in a single run, else
    ``train.log``), the budget plan and the resume decision (DEBUG), and a resume (console)."""
    detail = FILE_ONLY if in_sweep() else {}
    log.info(f"glubench: ffn={model_cfg.ffn} d_model={model_cfg.d_model} n_layers={model_cfg.n_layers} "
             f"d_ff={model_cfg.d_ff} ffn_hidden={model_cfg.ffn_hidden} "
             f"(FFN params {model_cfg.ffn_matching_error:+.3%} vs non-gated baseline)")
    log.info(f"glubench: params total={counts.total:,} non-embedding={counts.nonembedding:,} "
             f"ffn/layer={counts.ffn_per_layer:,}; data {cfg.data.name}: train tokens={splits.train.size:,} "
             f"val tokens={splits.val.size:,} "
             + (f"test tokens={splits.test.size:,} " if splits.test is not None else "")
             + f"vocab={model_cfg.vocab_size}", extra=detail)
    fdr = cfg.trainer.fast_dev_run
    steps = (f"{int(fdr)} step(s) (trainer.fast_dev_run)" if fdr
             else f"up to {plan.target:g} s of training" if plan.max_steps >= TIME_MODE_MAX_STEPS
             else f"{plan.max_steps:,} steps x {plan.tokens_per_step:,} tokens")
    files = ["train.log", "results.json"]
    files += ["csv/"] if any(isinstance(lg, GlubenchCSVLogger) for lg in loggers) else []
    files += ["checkpoints/"] if cfg.callbacks and cfg.callbacks.get("model_checkpoint") else []
    where = [lg.describe() for lg in loggers if isinstance(lg, GlubenchWandbLogger) and is_global_zero()]
    log.info(f"glubench: {steps}{'' if fdr else f' (budget={plan.mode})'} -> {out} ({', '.join(files)})"
             + "".join(f"; {w}" for w in where), extra=detail)
    log.debug(f"glubench: budget plan {plan}")
    if ckpt is not None:
        log.info(f"glubench: resuming from {ckpt} (step {resume_step})")
    else:
        log.debug(f"glubench: ckpt_path={cfg.ckpt_path}: no checkpoint to resume from "
                  f"({out / 'checkpoints' / 'last.ckpt'} absent or ckpt_path=never): starting at step 0")


def _num(value: float | None, spec: str, missing: str = "nan") -> str:
    return format(value, spec) if value is not None and math.isfinite(value) else missing


def summary_line(result, path: Path) -> str:
    """The job's last console line: status, the validation numbers, throughput, wall time, ``results.json``."""
    return (f"glubench: {result.status}: ffn={result.ffn} val_loss={_num(result.val_loss, '.4f')} "
            f"val_ppl={_num(result.val_ppl, '.3f')} val_bpb={_num(result.val_bpb, '.4f')} "
            f"tokens/s={_num(result.train_tokens_per_sec, ',.0f', 'not measured')} "
            f"wall={_num(result.wall_time_s, '.1f')}s -> {path}")
