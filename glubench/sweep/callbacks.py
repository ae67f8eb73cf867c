"""Hydra glue for sweeps: check every job and estimate the total time before a multirun starts,
run :mod:`glubench.sweep.report` when it ends, and make failed jobs results rather than aborts.

Why a callback: with Hydra 1.3's BasicLauncher, ``run_job`` catches an ``Exception`` raised by a
job and the remaining jobs still run, but BasicSweeper then re-raises the first failure, so
``on_multirun_end`` is never called and no report is written.  ``SystemExit`` and
``KeyboardInterrupt`` are not caught at all and abort the sweep.  So, when this callback is
configured (``hydra.callbacks.glubench_report`` in ``conf/config.yaml``), the job function
(:func:`glubench.cli.main.main`) records a failure in its ``results.json`` and returns instead of
raising; :meth:`SweepReport.on_multirun_end` reads every ``results.json``, prints the table and
exits with status 1 if any job failed.  Without the callback, jobs raise as in plain Hydra.
"""

from __future__ import annotations

import itertools
import logging
import math
import sys
import time
from pathlib import Path
from typing import Any, Optional

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

from glubench.train.devices import resolve_accelerator, world_size

CALLBACK_TARGET = "glubench.sweep.callbacks.SweepReport"

log = logging.getLogger(__name__)


def collects_job_failures() -> bool:
    """True inside a multirun job whose sweep has a :class:`SweepReport` (which reports failures)."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    if not HydraConfig.initialized():
        return False
    hc = HydraConfig.get()
    if hc.mode != RunMode.MULTIRUN:
        return False
    return any(OmegaConf.select(cb, "_target_") == CALLBACK_TARGET for cb in (hc.callbacks or {}).values())


def job_overrides(config: DictConfig) -> Optional[list[list[str]]]:
    """The override list of every job Hydra's BasicSweeper will launch, in its order, or ``None`` for
    another sweeper.

    As the BasicSweeper does: ``hydra.sweeper.params`` then the command-line overrides, parsed by
    Hydra's override parser; a later override of the same key replaces the earlier one in the
    earlier one's place; the jobs are the Cartesian product of each key's values (a fixed override
    has one), the first key varying slowest.

    Raises:
        ConfigError: an override is a sweep that cannot be enumerated (``interval(...)``), which
            only a search sweeper (Optuna) can run.
    """
    from hydra.core.global_hydra import GlobalHydra
    from hydra.core.override_parser.overrides_parser import OverridesParser

    from glubench.core.errors import ConfigError

    if not str(OmegaConf.select(config, "hydra.sweeper._target_", default="")).endswith(".BasicSweeper"):
        return None
    params = OmegaConf.select(config, "hydra.sweeper.params") or {}
    args = [f"{k}={v}" for k, v in params.items()]
    args += list(OmegaConf.to_container(config.hydra.overrides.task, resolve=False))
    gh = GlobalHydra.instance()  # the config loader expands glob(...) sweeps over config groups
    parser = OverridesParser.create(config_loader=gh.config_loader() if gh.is_initialized() else None)
    choices: dict[str, list[str]] = {}
    for o in parser.parse_overrides(args):
        key = o.get_key_element()
        if not o.is_sweep_override():
            choices[key] = [f"{key}={o.get_value_element_as_str()}"]
        elif o.is_discrete_sweep():
            choices[key] = [f"{key}={v}" for v in o.sweep_string_iterator()]
        else:
            raise ConfigError(f"{o.input_line}: the basic sweeper runs only choice and range sweeps, not "
                              f"{o.value_type.name if o.value_type else 'this'} (use a search sweeper)")
    return [list(job) for job in itertools.product(*choices.values())]


def _model_counts(model_cfg) -> Any:
    """Parameter counts without allocating weights (the model is built on the meta device)."""
    import torch

    from glubench.nn.transformer import Transformer, count_params

    with torch.device("meta"):
        return count_params(Transformer(model_cfg))


class SweepReport(Callback):
    """Before a multirun: validate every job's config and print an estimated total time.  After it:
    write the report (:func:`glubench.sweep.report.report_sweep`) into the sweep dir, print the table,
    and exit with status 1 if any job failed.

    The time estimate is ``Σ_jobs (train_tokens·fpt/train_flops + n_val·val_tokens·(fpt/3)/val_flops
    + job_overhead_s)`` with ``fpt`` = :func:`glubench.nn.flops.flops_per_token`.  On a CPU the
    achieved FLOP/s are measured by a few steps of the first job's model before the sweep starts
    (so a busy machine gives a longer estimate); on a GPU they are the device's dense peak
    (:func:`glubench.train.metrics.peak_flops`) times ``gpu_mfu``.

    Args:
        report: run the report at the end.
        estimate: print the estimated total time at the start.
        plots: write the PNG plots.
        wandb: ``auto`` (a W&B summary run iff the jobs logged to W&B), ``on`` or ``off``.
        gpu_mfu: assumed model FLOPs utilisation on a GPU, for the estimate only.
        job_overhead_s: assumed seconds per job outside training and validation (setup, checkpoint).
    """

    def __init__(self, report: bool = True, estimate: bool = True, plots: bool = True, wandb: str = "auto",
                 gpu_mfu: float = 0.35, job_overhead_s: float = 3.0) -> None:
        self.report, self.estimate, self.plots, self.wandb = report, estimate, plots, wandb
        self.gpu_mfu, self.job_overhead_s = gpu_mfu, job_overhead_s
        self.t_start: Optional[float] = None

    # ------------------------------------------------------------------------------------------------ start
    def on_multirun_start(self, config: DictConfig, config_name: Optional[str] = None, **kwargs: Any) -> None:
        self.t_start = time.perf_counter()
        jobs = job_overrides(config)
        if jobs is None:
            return
        from hydra import compose

        from glubench.train.validate import ConfigError, validate_config

        cfgs, model_cfgs = [], []
        for i, overrides in enumerate(jobs):
            cfg = compose(config_name=config_name, overrides=overrides)
            try:
                model_cfgs.append(validate_config(cfg))
            except ConfigError as e:
                # Before any job runs: one bad job would otherwise fail only after the others trained.
                # The command's final error line: stderr whatever logging Hydra has set up.
                print(f"glubench: error: job #{i} ({' '.join(overrides)}): {e}", file=sys.stderr)
                sys.exit(2)
            cfgs.append(cfg)
        log.info(f"glubench: sweep of {len(jobs)} jobs -> {config.hydra.sweep.dir}")
        if self.estimate and cfgs:
            try:
                log.info(self.estimate_text(cfgs, model_cfgs))
            except Exception as e:  # noqa: BLE001 - an estimate must never stop a sweep
                log.warning(f"glubench: (no time estimate: {type(e).__name__}: {e})")

    def estimate_text(self, cfgs: list[DictConfig], model_cfgs: list[Any]) -> str:
        """One line: the estimated total wall time of ``cfgs`` and how (see :meth:`estimate_seconds`)."""
        seconds, how = self.estimate_seconds(cfgs, model_cfgs)
        return (f"glubench: estimated total time: ~{_duration(seconds)} for {len(cfgs)} jobs "
                f"(an estimate: {how})")

    def estimate_seconds(self, cfgs: list[DictConfig], model_cfgs: list[Any]) -> tuple[float, str]:
        """Estimated seconds for all jobs and a short description of the method.

        Args:
            cfgs: the composed job configs.
            model_cfgs: each job's validated model config (what
                :func:`glubench.train.validate.validate_config` returned for it, with the
                tokenizer's vocabulary), in the order of ``cfgs``; not validated again here.
        """
        from glubench.nn.flops import flops_per_token

        if len(model_cfgs) != len(cfgs):
            raise ValueError(f"estimate_seconds: {len(cfgs)} configs but {len(model_cfgs)} model configs")
        first = cfgs[0]
        gpu = _uses_gpu(first)
        val_tokens = _val_tokens(first)
        if gpu:
            import torch

            from glubench.train.metrics import peak_flops

            peak = first.throughput.peak_flops or peak_flops(torch.device("cuda"), str(first.trainer.precision))
            if not peak:
                raise ValueError("no GPU peak FLOP/s known here (set throughput.peak_flops)")
            train_rate = val_rate = peak * self.gpu_mfu
            how = f"FLOPs per token at {self.gpu_mfu:.0%} MFU of {peak / 1e12:.0f} TFLOP/s"
        else:
            train_rate, val_rate = _measure_cpu_flops(first, model_cfgs[0])
            how = (f"FLOPs per token at {train_rate / 1e9:.3g} GFLOP/s training, {val_rate / 1e9:.3g} GFLOP/s "
                   f"validation, measured just now on this CPU, + {self.job_overhead_s:.0f} s per job")
        total = 0.0
        counts: dict[str, Any] = {}
        for cfg, mc in zip(cfgs, model_cfgs):
            key = repr(mc)
            if key not in counts:
                counts[key] = _model_counts(mc)
            fpt = flops_per_token(counts[key].matmul, mc.n_layers, mc.d_model, mc.seq_len)
            t = cfg.trainer
            tokens = (t.max_steps * t.accumulate_grad_batches * cfg.data.batch_size * mc.seq_len
                      * world_size(t))
            n_val = t.max_steps // t.val_check_interval + (1 if t.max_steps % t.val_check_interval else 0)
            total += tokens * fpt / train_rate + n_val * val_tokens * fpt / 3 / val_rate + self.job_overhead_s
        return total, how

    # ------------------------------------------------------------------------------------------------ end
    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        if not self.report:
            return
        from glubench.sweep.report import JOB_ERRORS, report_sweep, terminal_text

        sweep_dir = Path(str(config.hydra.sweep.dir))
        wall = time.perf_counter() - self.t_start if self.t_start is not None else math.nan
        try:
            report = report_sweep([sweep_dir], sweep_dir, plots=self.plots, wandb_choice=self.wandb)
        except Exception as e:  # noqa: BLE001 - Hydra would only warn and exit 0: a lost report must fail
            # The command's final line before it exits: straight to stderr, because Hydra's logging
            # config (hydra_logging, then the last job's job_logging) sends every level to stdout.
            print(f"glubench: no report: {type(e).__name__}: {e}", file=sys.stderr)
            sys.exit(1)
        print("\n" + terminal_text(report), flush=True)  # the table the sweep is for: primary output
        log.info(f"glubench: sweep wall time {_duration(wall)}; report: {sweep_dir / 'summary.md'} "
                 f"(+ results.csv, plots)")
        if report.exit_code:
            # SystemExit passes through Hydra's callback and error handlers: the process exits 1.
            failed = sum(r.result.status in JOB_ERRORS for r in report.problems)
            # The final line before exiting: stderr directly, as for "no report" above.
            print(f"glubench: {failed} job(s) failed; exit status {report.exit_code}", file=sys.stderr, flush=True)
            sys.exit(report.exit_code)


def _duration(seconds: float) -> str:
    if not math.isfinite(seconds):
        return "?"
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def _uses_gpu(cfg: DictConfig) -> bool:
    return resolve_accelerator(str(cfg.trainer.accelerator)) == "cuda"


def _val_tokens(cfg: DictConfig) -> int:
    """Size of the validation split (prepares the token cache, which the first job needs anyway)."""
    from glubench.data.cache import prepare_splits

    return int(prepare_splits(cfg.data)[1].val.size)


def _measure_cpu_flops(cfg: DictConfig, mc: Any, steps: int = 3) -> tuple[float, float]:
    """Achieved FLOP/s of ``cfg``'s model (``mc``: its validated model config) on this CPU:
    (training step, validation forward), in FLOP/s.

    Times ``steps`` AdamW steps on random tokens after one warm-up step, and ``steps``
    no-grad forwards at the validation batch size; FLOPs are counted as in
    :func:`glubench.nn.flops.flops_per_token` (a forward is a third of a training step).
    """
    import torch
    import torch.nn.functional as F

    from glubench.nn.flops import flops_per_token
    from glubench.nn.transformer import Transformer, count_params

    torch.manual_seed(0)
    model = Transformer(mc)
    fpt = flops_per_token(count_params(model).matmul, mc.n_layers, mc.d_model, mc.seq_len)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    b, vb, T = cfg.data.batch_size, cfg.data.val_batch_size, mc.seq_len
    x = torch.randint(0, mc.vocab_size, (b, T + 1))

    def train_step() -> None:
        loss = F.cross_entropy(model(x[:, :-1]).flatten(0, 1), x[:, 1:].flatten())
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)

    train_step()
    t0 = time.perf_counter()
    for _ in range(steps):
        train_step()
    train_rate = steps * b * T * fpt / (time.perf_counter() - t0)
    xv = torch.randint(0, mc.vocab_size, (vb, T + 1))
    with torch.no_grad():
        model(xv[:, :-1])
        t0 = time.perf_counter()
        for _ in range(steps):
            F.cross_entropy(model(xv[:, :-1]).flatten(0, 1), xv[:, 1:].flatten(), reduction="sum")
        val_rate = steps * vb * T * fpt / 3 / (time.perf_counter() - t0)
    return train_rate, val_rate


class SweepDirCallback(Callback):
    """Hydra callback: create ``hydra.sweep.dir`` when a multirun starts.

    The Optuna sweeper opens its sqlite storage (``<sweep dir>/optuna.db``) before the launcher
    creates the sweep dir; without this, sqlite fails with "unable to open database file".
    """

    def on_multirun_start(self, config: DictConfig, **kwargs) -> None:
        Path(str(config.hydra.sweep.dir)).mkdir(parents=True, exist_ok=True)
