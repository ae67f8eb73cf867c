"""The Hydra entry point: validate -> data -> model -> fit -> results.json.

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

import hydra
from hydra.experimental.callback import Callback as HydraCallback
from omegaconf import DictConfig, OmegaConf

from glubench.cluster import check_job_launch, is_global_zero
from glubench.config import register_configs
from glubench.results import RunResult
from glubench.validate import ConfigError, check_output_dir, validate_config

register_configs()


def conf_dir() -> str:
    """Absolute path of the ``conf/`` folder (beside the package in a checkout)."""
    here = Path(__file__).resolve().parent
    for candidate in (here / "conf", here.parent / "conf"):
        if candidate.is_dir():
            return str(candidate)
    raise FileNotFoundError(f"glubench: no conf/ folder next to {here}")


def output_dir() -> Path:
    """This job's Hydra output dir (the current dir outside Hydra)."""
    from hydra.core.hydra_config import HydraConfig

    if HydraConfig.initialized():
        return Path(HydraConfig.get().runtime.output_dir)
    return Path.cwd()


def _credentials_present() -> bool:
    if os.environ.get("WANDB_API_KEY"):
        return True
    try:
        import netrc

        return netrc.netrc().authenticators("api.wandb.ai") is not None
    except (OSError, netrc.NetrcParseError):
        return False


def wandb_mode(cfg: DictConfig) -> str:
    """``logger.mode``, else ``$WANDB_MODE``, else online iff W&B credentials exist (else offline)."""
    if cfg.logger.mode:
        return cfg.logger.mode
    if os.environ.get("WANDB_MODE"):
        return os.environ["WANDB_MODE"]
    if _credentials_present():
        return "online"
    print("glubench: no W&B credentials found; logging to W&B in offline mode (wandb sync later)")
    return "offline"


def build_loggers(cfg: DictConfig, out: Path, config_dict: dict, resume_step: int | None = None) -> list:
    """CSV and W&B loggers; when resuming from step ``resume_step`` both continue their history."""
    from lightning.pytorch.loggers import CSVLogger, WandbLogger

    from glubench.redaction import redact
    from glubench.resume import keep_csv_history, wandb_run_id

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

    from glubench.budget import BudgetCallback, plan_from_config, realised
    from glubench.callbacks import ProgressBar, ThroughputCallback
    from glubench.data import LMDataModule, local_rank
    from glubench.faults import AtomicCheckpointIO, FitSignals, InterruptCheckpoint, NonFiniteGuard
    from glubench.metrics import flops_per_token, lookup_peak_flops
    from glubench.model import count_params
    from glubench.module import LanguageModel
    from glubench.redaction import redact
    from glubench.resume import ResumeState, checkpoint_callback, checkpoint_step, find_checkpoint

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
        from glubench.analysis.dead_units import DeadUnitsCallback, probe_batch

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
    from glubench.faults import Diverged, sigterm_as_interrupt
    from glubench.redaction import redact, redact_files, redacted_argv

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


class SweepDirCallback(HydraCallback):
    """Hydra callback: create ``hydra.sweep.dir`` when a multirun starts.

    The Optuna sweeper opens its sqlite storage (``<sweep dir>/optuna.db``) before the launcher
    creates the sweep dir; without this, sqlite fails with "unable to open database file".
    """

    def on_multirun_start(self, config: DictConfig, **kwargs) -> None:
        Path(str(config.hydra.sweep.dir)).mkdir(parents=True, exist_ok=True)


@hydra.main(version_base="1.3", config_path=conf_dir(), config_name="config")
def main(cfg: DictConfig) -> float | None:
    """``glubench`` console script; returns the final ``val_loss`` (the sweep objective).

    Exit codes: 2 for a bad config (one line on stderr, before any heavy work; in a sweep the
    job fails and the others go on), 1 for a diverged single run (a diverged job in a sweep lets
    the sweep go on), 130 (Ctrl-C) or 143 (SIGTERM) for an interrupted run.
    """
    try:
        validate_config(cfg)
        check_job_launch(cfg)
        if not cfg.tune.variants:
            check_output_dir(output_dir(), cfg.overwrite)
    except ConfigError as e:
        return _config_error(e)
    if cfg.tune.variants:  # a driver experiment (e.g. tuned_variants_cpu): studies + seed runs, no job here
        from hydra.core.hydra_config import HydraConfig

        from glubench.tune import run_tuned_variants

        run_tuned_variants(cfg, list(HydraConfig.get().overrides.task))
        return None
    try:
        result = run(cfg)
    except ConfigError as e:  # rules that need the tokenized data (e.g. seq_len vs a split)
        return _config_error(e)
    except (KeyboardInterrupt, SystemExit) as e:  # run() has written status "interrupted"
        print(f"glubench: interrupted -> {output_dir() / 'results.json'}", file=sys.stderr)
        sys.exit(143 if "SIGTERM" in f"{type(e).__name__} {e}" else 130)
    except Exception:
        from glubench.sweep import collects_job_failures

        if not collects_job_failures():
            raise
        # results.json already says "failed"; the sweep's report lists it and sets the exit status.
        import traceback

        traceback.print_exc()
        print(f"glubench: job failed (recorded in {output_dir() / 'results.json'}); the sweep goes on",
              file=sys.stderr)
        return None
    nan = float("nan")
    print(
        f"glubench: {result.status}: ffn={result.ffn} val_loss={result.val_loss or nan:.4f} "
        f"val_ppl={result.val_ppl or nan:.3f} val_bpb={result.val_bpb or nan:.4f} "
        f"tokens/s={result.train_tokens_per_sec or nan:,.0f} wall={result.wall_time_s or nan:.1f}s "
        f"-> {output_dir() / 'results.json'}"
    )
    if result.status == "diverged":
        print(f"glubench: diverged: {result.error}", file=sys.stderr)
        if not _in_multirun():
            sys.exit(1)
    if result.val_loss is None or not math.isfinite(result.val_loss):
        return math.inf  # a diverged run is the worst objective; Optuna rejects NaN and aborts the study
    return result.val_loss


def _config_error(e: ConfigError) -> None:
    """Print the one-line error; exit 2 in a single run, fail just this job in a sweep."""
    print(f"glubench: error: {e}", file=sys.stderr)
    if _in_multirun():
        return None  # a failed job, not SystemExit: the sweep goes on to its other jobs
    sys.exit(2)


def _in_multirun() -> bool:
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    return HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN


def cli() -> None:
    """The ``glubench`` console script: :func:`main`, with secrets hidden from Hydra's own printouts.

    ``--cfg``/``-c`` (and ``--info``) make Hydra print the composed config and exit without a job;
    values from secret environment variables (``${oc.env:...}``) are printed as ``***``.
    """
    prints_config = any(a in ("--cfg", "-c", "--info", "-i") or a.startswith(("--cfg=", "--info="))
                        for a in sys.argv[1:])
    if not prints_config:
        main()
        return
    from glubench.redaction import redacted_stdout

    with redacted_stdout():
        main()


if __name__ == "__main__":
    cli()
