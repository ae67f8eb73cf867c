"""One training job: :func:`run` trains (:func:`fit`) and always writes ``results.json``.

The datamodule, the LightningModule, the Trainer, its callbacks and its loggers are built from the
config with ``hydra.utils.instantiate`` (:mod:`glubench.train.build`).  This module loads torch and
Lightning: the command line (:mod:`glubench.cli.main`) imports it only after the config is validated.
"""

from __future__ import annotations

import logging
import math
import platform
import sys
import time
from typing import Any

import lightning
import lightning.pytorch as pl
import torch
from lightning.pytorch.loggers import WandbLogger
from omegaconf import DictConfig, OmegaConf

from glubench.core.errors import Diverged, WriteFailed
from glubench.core.logging import ignore_known_warnings, route_through_root
from glubench.core.ranks import is_global_zero
from glubench.core.secrets import redact, redact_files, redacted_argv
from glubench.nn.transformer import Transformer, count_params
from glubench.train.budget import TIME_MODE_MAX_STEPS, plan_from_config, realised
from glubench.train.build import build_callbacks, build_datamodule, build_loggers, build_module, build_trainer
from glubench.train.config_rules import output_dir, validate_config
from glubench.train.console import announce
from glubench.train.devices import world_size
from glubench.train.faults import Interrupts, describe
from glubench.train.monitors import BudgetCallback, DeadUnitsCallback, ThroughputCallback
from glubench.train.results import RunResult, machine_load
from glubench.train.resume import checkpoint_step, find_checkpoint

log = logging.getLogger(__name__)


def device_name(device) -> str:
    """``device`` (a ``torch.device`` or its string, e.g. ``"cuda:0"``) as ``results.json`` names it: the GPU's
    name, or ``cpu (<processor>, <n> threads)`` (any other device type is named as the host CPU)."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"cpu ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"


def versions() -> dict[str, str]:
    """The Python, torch and Lightning versions, for ``results.json``."""
    return {"python": platform.python_version(), "torch": torch.__version__, "lightning": lightning.__version__}


def val_check_batches(t: DictConfig, max_steps: int) -> Any:
    """Lightning's ``val_check_interval`` for ``trainer.val_check_interval`` counted in optimizer steps.

    Lightning counts training batches, which are gradient-accumulation micro-batches: glubench's
    interval (README, schema) counts optimizer steps, so it becomes ``steps × accumulate_grad_batches``
    batches.  An interval beyond the run's ``max_steps`` is clamped to it (one info line): the run
    validates at its end, as Lightning users expect of a short run.  A fraction of an epoch is
    Lightning's own and passes through; so does ``budget=time``'s step cap (the clock stops first).
    """
    v = t.val_check_interval
    if isinstance(v, float):
        return v
    if v > max_steps and max_steps != TIME_MODE_MAX_STEPS:
        log.info(f"glubench: trainer.val_check_interval={v} > the run's {max_steps} optimizer steps: "
                 f"validating at step {max_steps} only")
        v = max_steps
    return v * t.accumulate_grad_batches


def _runtime_arguments(plan) -> dict[str, dict[str, Any]]:
    """What the throughput and budget callbacks learn from the budget plan (:func:`build_callbacks`'s ``runtime``)."""
    budget = {"seconds_limit": plan.target} if plan.mode == "time" else {}  # validate_config: the callback is on
    return {"throughput": {"flops_per_token": plan.flops_per_token}, "budget": budget}


def fit(cfg: DictConfig, result: RunResult, model_cfg, interrupts=None) -> RunResult:
    """Run one training job described by ``cfg`` (already validated into ``model_cfg``), filling ``result``
    (whose ``config`` is the redacted run config the loggers get); ``interrupts`` is the run's signal state
    (:class:`~glubench.train.faults.Interrupts`).  :func:`run` handles its failures."""
    out, t_start = output_dir(), time.perf_counter()
    route_through_root("lightning", "lightning.pytorch", "lightning.fabric")
    ignore_known_warnings()
    pl.seed_everything(cfg.seed, workers=True, verbose=False)
    counts = param_counts(model_cfg)
    # The budget fixes the steps here, once: the data, the schedule and the Trainer are built with them.
    plan = plan_from_config(cfg, model_cfg, counts.matmul, world_size(cfg.trainer), counts.nonembedding)
    dm = build_datamodule(cfg, model_cfg, plan)
    module = build_module(cfg, model_cfg, plan)
    record_model(result, counts, model_cfg, plan, dm)
    ckpt = find_checkpoint(cfg.ckpt_path, out)
    resume_step = checkpoint_step(ckpt) if ckpt is not None else None
    loggers = build_loggers(cfg, out, resume_step, result.config)
    callbacks = build_callbacks(cfg, _runtime_arguments(plan), interrupts)
    trainer = build_trainer(cfg, out, callbacks, loggers, max_steps=plan.max_steps,
                            val_check_interval=val_check_batches(cfg.trainer, plan.max_steps))
    _log_param_counts(trainer, counts, model_cfg)
    announce(cfg, model_cfg, counts, dm.splits, plan, out, trainer.loggers, ckpt, resume_step)
    try:
        trainer.fit(module, datamodule=dm, ckpt_path=ckpt, weights_only=True)
    finally:  # also on an exception: an interrupted run reports what it has
        record_progress(result, trainer, module, t_start)
    if not module.last_val or module.history[-1]["step"] != trainer.global_step:
        # The last step was not a validation step, or the checkpoint was already finished: score it now.
        trainer.validate(module, datamodule=dm, verbose=False)
    if dm.splits.test is not None:  # once, at the end: numbers chosen on validation are reported on test
        trainer.test(module, datamodule=dm, verbose=False)
    record_progress(result, trainer, module, t_start)
    record_end(result, trainer, module, plan)
    if trainer.fast_dev_run:
        log.info("glubench: trainer.fast_dev_run: a smoke test (one step, one validation batch), not a result")
    _wandb_summary(trainer, result)
    return result


def param_counts(model_cfg):
    """:func:`~glubench.nn.transformer.count_params` of the model ``model_cfg`` describes, built on the meta
    device: sizes only, nothing allocated and no random numbers drawn."""
    with torch.device("meta"):
        return count_params(Transformer(model_cfg))


def _log_param_counts(trainer, counts, model_cfg) -> None:
    params = {"params/total": counts.total, "params/nonembedding": counts.nonembedding,
              "params/ffn_per_layer": counts.ffn_per_layer, "params/ffn_hidden": model_cfg.ffn_hidden}
    for lg in trainer.loggers:
        lg.log_hyperparams(params)


def record_model(result: RunResult, counts, model_cfg, plan, dm) -> None:
    """What the run trains, into ``result``: parameter counts, FFN widths, FLOPs per token, the corpus."""
    result.params_total, result.params_nonembedding = counts.total, counts.nonembedding
    result.params_ffn, result.ffn_hidden = counts.ffn_per_layer, model_cfg.ffn_hidden
    result.ffn_matching_error = model_cfg.ffn_matching_error
    result.flops_per_token = plan.flops_per_token
    result.corpus_fingerprint = dm.splits.meta["fingerprint"]


def record_progress(result: RunResult, trainer, module, t_start: float) -> None:
    """How far the run got, into ``result``: steps, validation history and scores, tokens, the last training
    loss, the precision, device and versions, the wall time since ``t_start`` (``time.perf_counter``)."""
    result.steps, result.history = trainer.global_step, module.history
    _last_validation(module, result)
    result.tokens_seen = module.tokens_seen * trainer.world_size
    train_loss = trainer.callback_metrics.get("train/loss")
    result.train_loss = float(train_loss) if train_loss is not None else None
    result.precision, result.versions = str(trainer.precision), versions()
    result.device = device_name(module.device)
    result.wall_time_s = time.perf_counter() - t_start


def record_end(result: RunResult, trainer, module, plan) -> None:
    """A finished run's status (``completed``, or ``diverged`` without a finite ``val_loss``), test scores,
    whole-run throughput, the budget spent and the dead-unit diagnostics, into ``result``."""
    throughput, budget_cb, dead_units = (_callback(trainer, c) for c in
                                         (ThroughputCallback, BudgetCallback, DeadUnitsCallback))
    speed = (throughput.summary() if throughput else None) or {}
    result.status = "completed"
    if module.last_test:
        result.test_loss, result.test_ppl = module.last_test["test/loss"], module.last_test["test/ppl"]
        result.test_bpb, result.test_tokens = module.last_test.get("test/bpb"), int(module.last_test["test/tokens"])
    result.train_tokens_per_sec = speed.get("tokens_per_sec")
    result.step_time_ms = speed.get("step_time_ms")
    result.mfu = speed.get("mfu")
    result.budget = realised(plan, result.tokens_seen, result.steps, budget_cb.seconds if budget_cb else math.nan,
                             budget_cb.stopped_at if budget_cb else None,
                             budget_cb.last_step_seconds if budget_cb else None)
    if dead_units is not None and dead_units.history:
        result.diagnostics["dead_units"] = dead_units.summary(result.step_time_ms)
    if result.val_loss is None or not math.isfinite(result.val_loss):
        result.status = "diverged"


def _callback(trainer, cls):
    return next((c for c in trainer.callbacks if isinstance(c, cls)), None)


def _last_validation(module, result: RunResult) -> None:
    """The latest validation into ``result``: ``val_loss`` and its ``val_step`` (an interrupted run reports
    the last one it has, also one restored from its checkpoint), and ppl, bpb and tokens when this process
    scored it (``module.last_val``, which is then ``history[-1]``)."""
    if not module.history:
        return
    result.val_step, result.val_loss = module.history[-1]["step"], module.history[-1]["val_loss"]
    last = module.last_val
    if last:
        result.val_loss, result.val_ppl, result.val_bpb = last.get("val/loss"), last.get("val/ppl"), last.get("val/bpb")
        result.val_tokens = int(last.get("val/tokens", 0))


def _wandb_summary(trainer, result: RunResult) -> None:
    """The W&B run's summary holds the whole-run numbers of ``results.json`` (not the last logging window)."""
    summary = {"train/tokens_per_sec": result.train_tokens_per_sec, "train/step_time_ms": result.step_time_ms,
               "train/mfu": result.mfu, "val/loss": result.val_loss, "val/ppl": result.val_ppl,
               "val/bpb": result.val_bpb, "params/total": result.params_total,
               "params/nonembedding": result.params_nonembedding, "params/ffn_per_layer": result.params_ffn,
               "params/ffn_hidden": result.ffn_hidden, "flops_per_token": result.flops_per_token,
               "steps": result.steps, "tokens_seen": result.tokens_seen}
    for lg in trainer.loggers:
        if isinstance(lg, WandbLogger):
            lg.experiment.summary.update({k: v for k, v in summary.items() if v is not None})


def run(cfg: DictConfig, model_cfg=None, interrupts=None) -> RunResult:
    """Train, then always write ``results.json`` and close the W&B run.

    A diverged run (:class:`~glubench.core.errors.Diverged`) returns with ``status: "diverged"``,
    so the rest of a sweep goes on; Ctrl-C and SIGTERM (Lightning turns both into ``SystemExit``
    inside ``fit``) give ``status: "interrupted"`` and re-raise; anything else ``failed``.

    Args:
        cfg: the composed run config.
        model_cfg: what :func:`~glubench.train.config_rules.validate_config` returned for it (validated
            here if ``None``).
        interrupts: the run's :class:`~glubench.train.faults.Interrupts` (installed here), which the caller
            reads after an interruption (the signal, the exit status); ``None``: a new one.
    """
    interrupts = interrupts if interrupts is not None else Interrupts()
    model_cfg = model_cfg or validate_config(cfg)
    start = machine_load()  # a busy machine makes the run's throughput incomparable
    result = RunResult(status="failed", ffn=cfg.model.ffn, seed=cfg.seed,
                       config=redact(OmegaConf.to_container(cfg, resolve=True)),
                       machine={"cpu_count": start["cpu_count"], "load_start": start["load"], "load_end": None})
    out = output_dir()
    redact_files([*(out / ".hydra").glob("*.yaml"), out.parent / "multirun.yaml"])
    try:
        with interrupts.installed(), redacted_argv():
            result = fit(cfg, result, model_cfg, interrupts)
    except Diverged as e:
        result.status, result.error = "diverged", str(e)
    except BaseException as e:
        result.status = "interrupted" if isinstance(e, (KeyboardInterrupt, SystemExit)) else "failed"
        result.error = _stop_reason(e, result.steps, interrupts)
        raise
    finally:
        result.machine["load_end"] = machine_load()["load"]
        if is_global_zero():  # one results.json per run, whatever the number of processes
            try:
                result.write(out)
            except WriteFailed as e:  # the previous results.json is intact; never mask the run's own error
                log.error(f"glubench: error: {e}")
                if sys.exc_info()[0] is None:
                    raise
        finish_wandb(result.status, preempted=interrupts.preempted)
    return result


def _stop_reason(e: BaseException, steps: int | None, interrupts) -> str:
    """``results.json``'s ``error`` for an exception out of :func:`fit`: the signal that interrupted the run
    (``interrupted by SIGINT (Ctrl-C) at step 119``), else the exception."""
    if not (interrupts.received or isinstance(e, KeyboardInterrupt)):
        return f"{type(e).__name__}: {e}"
    where = f" at step {steps}" if steps is not None else " before training started"
    forced = "; a second Ctrl-C stopped it mid-step, so it resumes from the last periodic checkpoint"
    return f"interrupted by {describe(interrupts.received)}{where}" + (forced if interrupts.forced else "")


def finish_wandb(status: str, preempted: bool = False) -> None:
    """Close this process's W&B run; a preempted one is marked so (W&B expects it to resume)."""
    if "wandb" in sys.modules:
        import wandb  # only when a logger already loaded it: a run without W&B never imports it

        if wandb.run is not None:
            wandb.run.summary.update({"status": status})
            if preempted:
                wandb.run.mark_preempting()
            wandb.finish(exit_code=0 if status == "completed" else 1)
