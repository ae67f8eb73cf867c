"""One training job: validate -> data -> model -> fit -> results.json.

Heavy imports (Lightning, W&B) happen inside :func:`train` so that ``--help`` and config
errors return in about a second.
"""

from __future__ import annotations

import math
import os
import platform
import sys
import time
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from glubench.core.ranks import is_global_zero
from glubench.core.secrets import credentials_present
from glubench.train.results import RunResult
from glubench.train.validate import ConfigError, validate_config


def output_dir() -> Path:
    """This job's Hydra output dir (the current dir outside Hydra)."""
    from hydra.core.hydra_config import HydraConfig

    if HydraConfig.initialized():
        return Path(HydraConfig.get().runtime.output_dir)
    return Path.cwd()


def wandb_mode(cfg: DictConfig) -> str:
    """``logger.mode``, else ``$WANDB_MODE``, else online iff W&B credentials exist (else offline)."""
    if cfg.logger.mode:
        return cfg.logger.mode
    if os.environ.get("WANDB_MODE"):
        return os.environ["WANDB_MODE"]
    if credentials_present():
        return "online"
    print("glubench: no W&B credentials found; logging to W&B in offline mode (wandb sync later)")
    return "offline"


def build_loggers(cfg: DictConfig, out: Path, config_dict: dict, resume_step: int | None = None) -> list:
    """CSV and W&B loggers; when resuming from step ``resume_step`` both continue their history."""
    from lightning.pytorch.loggers import CSVLogger, WandbLogger

    from glubench.core.secrets import redact
    from glubench.train.resume import keep_csv_history, wandb_run_id

    loggers = []
    if cfg.logger.csv:
        loggers.append(CSVLogger(save_dir=str(out), name="csv", version=""))
        if resume_step is not None:
            keep_csv_history(loggers[-1], resume_step)
    if cfg.logger.wandb:
        loggers.append(WandbLogger(
            project=cfg.logger.project, entity=cfg.logger.entity,
            group=cfg.logger.group or cfg.experiment_name,
            name=f"{cfg.model.ffn}-s{cfg.seed}", save_dir=str(out), mode=wandb_mode(cfg),
            config=config_dict, tags=redact(list(cfg.logger.tags)) or None,
            id=wandb_run_id(out, resuming=resume_step is not None), resume="allow",
        ))
    return loggers


def device_name(module) -> str:
    import torch

    if module.device.type == "cuda":
        return torch.cuda.get_device_name(module.device)
    return f"cpu ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"


def versions() -> dict[str, str]:
    import lightning
    import torch

    return {"python": platform.python_version(), "torch": torch.__version__, "lightning": lightning.__version__}


def train(cfg: DictConfig, result: RunResult) -> RunResult:
    """Run one training job described by ``cfg``, filling ``result`` as it goes."""
    model_cfg = validate_config(cfg)
    out = output_dir()
    t_start = time.perf_counter()

    import lightning.pytorch as pl
    import torch

    from glubench.core.ranks import local_rank
    from glubench.core.secrets import redact
    from glubench.data.datamodule import LMDataModule
    from glubench.nn.flops import flops_per_token, lookup_peak_flops
    from glubench.nn.transformer import count_params
    from glubench.train.budget import BudgetCallback, plan_from_config, realised
    from glubench.train.callbacks import ProgressBar, ThroughputCallback
    from glubench.train.faults import AtomicCheckpointIO, FitSignals, InterruptCheckpoint, NonFiniteGuard
    from glubench.train.module import LanguageModel
    from glubench.train.resume import ResumeState, checkpoint_callback, checkpoint_step, find_checkpoint

    pl.seed_everything(cfg.seed, workers=True, verbose=False)
    t = cfg.trainer
    data = OmegaConf.to_container(cfg.data, resolve=True)
    dm = LMDataModule(**data, seq_len=model_cfg.seq_len, seed=cfg.seed,
                      num_batches=t.max_steps * t.accumulate_grad_batches)
    try:
        if local_rank() == 0:  # the other ranks wait in setup() for rank 0's token cache
            dm.prepare_data()
        dm.setup()
    except (ValueError, FileNotFoundError) as e:  # data errors name their key (data.files, data.val_percent)
        raise ConfigError(str(e)) from e
    result.corpus_fingerprint = dm.corpus_fingerprint
    model_cfg = validate_config(cfg, splits=dm.splits)  # the rules that need token counts

    module = LanguageModel(model_cfg, **cfg.optim, max_steps=t.max_steps,
                           val_predicted_bytes=dm.splits.val_predicted_bytes)
    counts = count_params(module.model)
    fpt = flops_per_token(counts.matmul, model_cfg.n_layers, model_cfg.d_model, model_cfg.seq_len)
    result.params_total, result.params_nonembedding = counts.total, counts.nonembedding
    result.params_ffn, result.ffn_hidden = counts.ffn_per_layer, model_cfg.ffn_hidden
    result.ffn_matching_error, result.flops_per_token = model_cfg.ffn_matching_error, fpt
    # The budget fixes the steps here, once: the schedule, the data and the Trainer all use them.
    plan = plan_from_config(cfg, module.model)
    module.max_steps, dm.num_batches = plan.max_steps, plan.max_steps * t.accumulate_grad_batches
    budget_cb = BudgetCallback(plan.target if plan.mode == "time" else None)
    print(
        f"glubench: ffn={model_cfg.ffn} d_model={model_cfg.d_model} n_layers={model_cfg.n_layers} "
        f"d_ff={model_cfg.d_ff} ffn_hidden={model_cfg.ffn_hidden} "
        f"(FFN params {model_cfg.ffn_matching_error:+.3%} vs non-gated baseline)\n"
        f"glubench: params total={counts.total:,} non-embedding={counts.nonembedding:,} "
        f"ffn/layer={counts.ffn_per_layer:,}; train tokens={dm.splits.train.size:,} "
        f"val tokens={dm.splits.val.size:,} vocab={model_cfg.vocab_size}"
    )

    config_dict = redact(OmegaConf.to_container(cfg, resolve=True))
    ckpt = find_checkpoint(cfg.ckpt_path, out)
    resume_step = checkpoint_step(ckpt) if ckpt is not None else None
    if ckpt is not None:
        print(f"glubench: resuming from {ckpt} (step {resume_step})")
    loggers = build_loggers(cfg, out, config_dict, resume_step)
    for lg in loggers:
        lg.log_hyperparams({"params/total": counts.total, "params/nonembedding": counts.nonembedding,
                            "params/ffn_per_layer": counts.ffn_per_layer, "params/ffn_hidden": model_cfg.ffn_hidden})
    throughput = ThroughputCallback(fpt, None, cfg.throughput.warmup_steps, t.log_every_n_steps)
    dead_units = None
    if cfg.diagnostics.dead_units:
        from glubench.analysis.dead_units import probe_batch
        from glubench.train.diagnostics import DeadUnitsCallback

        g = cfg.diagnostics
        dead_units = DeadUnitsCallback(probe_batch(dm.splits.val, model_cfg.seq_len, g.probe_batch_size),
                                       g.every_n_steps, g.eps, g.saturation_tol)
    trainer = pl.Trainer(
        accelerator=t.accelerator, devices=t.devices, num_nodes=t.num_nodes, strategy=t.strategy,
        precision=t.precision, max_steps=plan.max_steps, val_check_interval=t.val_check_interval,
        check_val_every_n_epoch=None, num_sanity_val_steps=0, log_every_n_steps=t.log_every_n_steps,
        gradient_clip_val=t.gradient_clip_val, accumulate_grad_batches=t.accumulate_grad_batches,
        deterministic=t.deterministic, enable_progress_bar=t.enable_progress_bar,
        default_root_dir=str(out), logger=loggers or False, use_distributed_sampler=False,
        callbacks=[throughput, budget_cb, ResumeState(),
                   checkpoint_callback(out, cfg.checkpoint.every_n_steps or t.val_check_interval,
                                       cfg.checkpoint.keep_all),
                   NonFiniteGuard(cfg.faults.on_nonfinite, cfg.faults.max_skips, t.precision == "16-mixed",
                                  check_every_n_steps=t.log_every_n_steps),
                   InterruptCheckpoint(out / "checkpoints" / "last.ckpt"), FitSignals()]
        # The bar reads the loss back to the host (a sync on GPU) at each refresh: refresh when logging.
        + ([ProgressBar(refresh_rate=t.log_every_n_steps)] if t.enable_progress_bar else [])
        + ([dead_units] if dead_units else []),
        plugins=[AtomicCheckpointIO()], enable_model_summary=False,
    )
    if plan.tokens_per_step != cfg.data.batch_size * model_cfg.seq_len * t.accumulate_grad_batches * trainer.world_size:
        raise ConfigError(f"trainer.devices={t.devices} started {trainer.world_size} processes, not the number "
                          "the budget assumed; set trainer.devices to a number")
    throughput.peak_flops = cfg.throughput.peak_flops or lookup_peak_flops(
        torch.cuda.get_device_name() if trainer.strategy.root_device.type == "cuda" else None, t.precision
    )
    def collect() -> None:  # also on an exception: an interrupted run reports what it has
        result.steps, result.history = trainer.global_step, module.history
        result.tokens_seen = module.tokens_seen * trainer.world_size
        train_loss = trainer.callback_metrics.get("train/loss")
        result.train_loss = float(train_loss) if train_loss is not None else None
        result.precision, result.device, result.versions = str(trainer.precision), device_name(module), versions()
        result.wall_time_s = time.perf_counter() - t_start

    try:
        trainer.fit(module, datamodule=dm, ckpt_path=ckpt, weights_only=True)
    finally:
        collect()
    if not module.history or module.history[-1]["step"] != trainer.global_step:
        trainer.validate(module, datamodule=dm, verbose=False)
        if module.last_val and (not module.history or module.history[-1]["step"] != trainer.global_step):
            module.history.append({"step": trainer.global_step, "tokens_seen": module.tokens_seen * trainer.world_size,
                                   "val_loss": module.last_val["val/loss"]})

    speed = throughput.summary() or {}
    collect()
    result.status = "completed"
    result.val_loss = module.last_val.get("val/loss")
    result.val_ppl = module.last_val.get("val/ppl")
    result.val_bpb = module.last_val.get("val/bpb")
    result.val_tokens = int(module.last_val.get("val/tokens", 0))
    result.train_tokens_per_sec = speed.get("tokens_per_sec")
    result.step_time_ms = speed.get("step_time_ms")
    result.mfu = speed.get("mfu")
    result.budget = realised(plan, result.tokens_seen, result.steps, budget_cb)
    if dead_units is not None and dead_units.history:
        result.diagnostics["dead_units"] = dead_units.summary(result.step_time_ms)
    if result.val_loss is None or not math.isfinite(result.val_loss):
        result.status = "diverged"
    return result


def run(cfg: DictConfig) -> RunResult:
    """Train, then always write ``results.json`` and close the W&B run (exit code 1 unless completed).

    A diverged run (:class:`glubench.faults.Diverged`) returns with ``status: "diverged"``, so
    the rest of a sweep goes on; Ctrl-C and SIGTERM (Lightning turns both into ``SystemExit``
    inside ``fit``) give ``status: "interrupted"`` and re-raise; anything else ``failed``.
    """
    from glubench.core.secrets import redact, redact_files, redacted_argv
    from glubench.train.faults import Diverged, sigterm_as_interrupt

    result = RunResult(status="failed", ffn=cfg.model.ffn, seed=cfg.seed,
                       config=redact(OmegaConf.to_container(cfg, resolve=True)))
    out = output_dir()
    redact_files([*(out / ".hydra").glob("*.yaml"), out.parent / "multirun.yaml"])
    try:
        with sigterm_as_interrupt(), redacted_argv():
            result = train(cfg, result)
    except Diverged as e:
        result.status, result.error = "diverged", str(e)
    except BaseException as e:
        result.status = "interrupted" if isinstance(e, (KeyboardInterrupt, SystemExit)) else "failed"
        result.error = f"{type(e).__name__}: {e}"
        raise
    finally:
        if is_global_zero():  # one results.json per run, whatever the number of processes
            result.write(out)
        if "wandb" in sys.modules:
            import wandb

            if wandb.run is not None:
                wandb.run.summary.update({"status": result.status})
                wandb.finish(exit_code=0 if result.status == "completed" else 1)
    return result
