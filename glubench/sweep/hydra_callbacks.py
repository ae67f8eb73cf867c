"""Hydra glue for sweeps: check every job and estimate the total time before a multirun starts,
run :mod:`glubench.sweep.report` when it ends, and make failed jobs results rather than aborts.

Why: Hydra 1.3's BasicSweeper re-raises the first failed job after the others ran, so
``on_multirun_end`` never runs.  With :class:`SweepReport` configured (``hydra.callbacks.glubench_report``),
the job function (:func:`glubench.cli.main.main`) records a failure in its ``results.json`` and returns;
the report at the end lists it and the command exits with status 1.  Without it, jobs raise as in Hydra.
"""

from __future__ import annotations

import logging
import math
import sys
import time
from pathlib import Path
from typing import Any, Optional

from hydra import compose
from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.experimental.callback import Callback
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

from glubench.core.errors import ConfigError
from glubench.nn.flops import flops_per_token
from glubench.train.budget import plan_from_config
from glubench.train.config_rules import validate_config
from glubench.train.devices import resolve_accelerator, world_size

log = logging.getLogger(__name__)


def collects_job_failures() -> bool:
    """True inside a multirun job whose sweep has a :class:`SweepReport` (which reports failures)."""
    if not HydraConfig.initialized() or (hc := HydraConfig.get()).mode != RunMode.MULTIRUN:
        return False
    return any(OmegaConf.select(cb, "_target_") == f"{__name__}.SweepReport" for cb in (hc.callbacks or {}).values())


def job_overrides(config: DictConfig) -> Optional[list[list[str]]]:
    """The override list of every job Hydra's BasicSweeper will launch, in its order, or ``None`` for
    another sweeper: ``hydra.sweeper.params`` then the command line, parsed by Hydra's override parser and
    expanded by the BasicSweeper's own ``split_arguments``, as ``BasicSweeper.sweep`` does.

    Raises:
        ConfigError: a sweep that cannot be enumerated (``interval(...)``: only a search sweeper can).
    """
    # BasicSweeper lives in hydra._internal (hydra-core 1.3): the sweeper itself, so that this list is its list
    if not str(OmegaConf.select(config, "hydra.sweeper._target_", default="")).endswith(".BasicSweeper"):
        return None
    params = OmegaConf.select(config, "hydra.sweeper.params") or {}
    args = [f"{k}={v}" for k, v in params.items()]
    args += list(OmegaConf.to_container(config.hydra.overrides.task, resolve=False))
    gh = GlobalHydra.instance()  # the config loader expands glob(...) sweeps over config groups
    parser = OverridesParser.create(config_loader=gh.config_loader() if gh.is_initialized() else None)
    overrides = parser.parse_overrides(args)
    # Hydra's own error names only the sweep type; ours names the override, before any job runs.
    for o in overrides:
        if o.is_sweep_override() and not o.is_discrete_sweep():
            raise ConfigError(f"{o.input_line}: the basic sweeper runs only choice and range sweeps, not "
                              f"{o.value_type.name if o.value_type else 'this'} (use a search sweeper)")
    (jobs,) = BasicSweeper.split_arguments(overrides, max_batch_size=None)  # one batch: every job
    return jobs


class SweepReport(Callback):
    """Before a multirun: validate every job's config and log an estimated total time.  After it: write
    the report (:func:`glubench.sweep.report.report_sweep`; ``plots``, ``wandb``: ``auto``, ``on``, ``off``)
    into the sweep dir, print the table, and exit with status 1 if any job failed.  For the estimate only:
    ``gpu_mfu``, the assumed model FLOPs utilisation on a GPU, and ``job_overhead_s``, the assumed seconds
    per job outside training and validation (setup, checkpoint).
    """

    def __init__(self, plots: bool = True, wandb: str = "auto", gpu_mfu: float = 0.35,
                 job_overhead_s: float = 3.0) -> None:
        self.plots, self.wandb = plots, wandb
        self.gpu_mfu, self.job_overhead_s = gpu_mfu, job_overhead_s
        self.t_start: Optional[float] = None

    def on_multirun_start(self, config: DictConfig, config_name: Optional[str] = None, **kwargs: Any) -> None:
        self.t_start = time.perf_counter()
        if (jobs := job_overrides(config)) is None:
            return
        cfgs, model_cfgs = [], []
        for i, overrides in enumerate(jobs):
            cfgs.append(compose(config_name=config_name, overrides=overrides))
            try:
                model_cfgs.append(validate_config(cfgs[-1]))
            except ConfigError as e:
                # Before any job runs: one bad job would otherwise fail only after the others trained.
                # The command's final error line: stderr whatever logging Hydra has set up.
                print(f"glubench: error: job #{i} ({' '.join(overrides)}): {e}", file=sys.stderr)
                sys.exit(2)
        log.info(f"glubench: sweep of {len(jobs)} jobs -> {config.hydra.sweep.dir}")
        if cfgs:
            try:
                seconds, how = self.estimate_seconds(cfgs, model_cfgs)
                log.info(f"glubench: estimated total time: ~{_duration(seconds)} for {len(cfgs)} jobs "
                         f"(an estimate: {how})")
            except Exception as e:  # noqa: BLE001 - an estimate must never stop a sweep
                log.warning(f"glubench: (no time estimate: {type(e).__name__}: {e})")

    def estimate_seconds(self, cfgs: list[DictConfig], model_cfgs: list[Any]) -> tuple[float, str]:
        """Seconds for the jobs ``cfgs`` (``model_cfgs``: what :func:`glubench.train.config_rules.validate_config`
        returned for each) and how: ``Σ_jobs (train_tokens·fpt/train_flops + n_val·val_tokens·(fpt/3)/val_flops
        + job_overhead_s)``, ``fpt`` = :func:`glubench.nn.flops.flops_per_token`, the FLOP/s measured by a few
        steps of the first job's model on a CPU, or the dense peak (:func:`glubench.train.metrics.peak_flops`)
        times ``gpu_mfu`` on a GPU.  ValueError when no GPU peak is known or the two lists differ in length.
        """
        import torch  # heavy: Hydra loads this callback at every start, before validation

        from glubench.nn.transformer import Transformer, count_params
        first = cfgs[0]
        val_tokens = _val_tokens(first)
        if resolve_accelerator(str(first.trainer.accelerator)) == "cuda":
            from glubench.train.metrics import peak_flops  # heavy

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
        counts: dict[str, Any] = {}  # repr(model config) -> parameter counts, on the meta device
        for cfg, mc in zip(cfgs, model_cfgs, strict=True):
            if (key := repr(mc)) not in counts:
                with torch.device("meta"):
                    counts[key] = count_params(Transformer(mc))
            fpt = flops_per_token(counts[key].matmul, mc.n_layers, mc.d_model, mc.seq_len)
            t = cfg.trainer
            plan = plan_from_config(cfg, mc, counts[key].matmul, world_size(t), counts[key].nonembedding)
            train_s = plan.target if plan.mode == "time" else plan.max_steps * plan.tokens_per_step * fpt / train_rate
            v = t.val_check_interval  # validations: every v steps (ceil), or 1/v per epoch for a fraction
            n_val = round(1 / v) if isinstance(v, float) else -(-plan.max_steps // v)
            total += train_s + n_val * val_tokens * fpt / 3 / val_rate + self.job_overhead_s
        return total, how

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        from glubench.sweep.report import JOB_ERRORS, report_sweep, terminal_text  # heavy

        sweep_dir = Path(str(config.hydra.sweep.dir))
        wall = time.perf_counter() - self.t_start if self.t_start is not None else math.nan
        try:
            report = report_sweep([sweep_dir], sweep_dir, plots=self.plots, wandb_choice=self.wandb)
        except Exception as e:  # noqa: BLE001 - Hydra would only warn and exit 0: a lost report must fail
            # The command's final lines go straight to stderr: Hydra's logging config (hydra_logging,
            # then the last job's job_logging) sends every level to stdout.
            print(f"glubench: no report: {type(e).__name__}: {e}", file=sys.stderr)
            sys.exit(1)
        print("\n" + terminal_text(report), flush=True)  # the table the sweep is for: primary output
        log.info(f"glubench: sweep wall time {_duration(wall)}; report: {sweep_dir / 'summary.md'} "
                 f"(+ results.csv, plots)")
        if report.exit_code:  # SystemExit passes through Hydra's callback and error handlers: exit 1
            failed = sum(r.result.status in JOB_ERRORS for r in report.problems)
            print(f"glubench: {failed} job(s) failed; exit status {report.exit_code}", file=sys.stderr, flush=True)
            sys.exit(report.exit_code)


def _duration(seconds: float) -> str:
    if not math.isfinite(seconds):
        return "?"
    if seconds < 90:
        return f"{seconds:.0f} s"
    return f"{seconds / 60:.0f} min" if seconds < 5400 else f"{seconds / 3600:.1f} h"


def _val_tokens(cfg: DictConfig) -> int:
    """Size of the validation split (prepares the token cache, which the first job needs anyway)."""
    from glubench.data.cache import prepare_splits  # this module loads at every Hydra start

    return int(prepare_splits(cfg.data)[1].val.size)


def _measure_cpu_flops(cfg: DictConfig, mc: Any, steps: int = 3) -> tuple[float, float]:
    """(training, validation) FLOP/s of model config ``mc`` on this CPU, timed on random tokens."""
    import torch  # heavy: Hydra loads this callback at every start, before validation
    import torch.nn.functional as F

    from glubench.nn.transformer import Transformer, count_params

    torch.manual_seed(0)
    model = Transformer(mc)
    fpt = flops_per_token(count_params(model).matmul, mc.n_layers, mc.d_model, mc.seq_len)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    b, vb, T = cfg.data.batch_size, cfg.data.val_batch_size, mc.seq_len
    x, xv = torch.randint(0, mc.vocab_size, (b, T + 1)), torch.randint(0, mc.vocab_size, (vb, T + 1))

    def train_step() -> None:
        F.cross_entropy(model(x[:, :-1]).flatten(0, 1), x[:, 1:].flatten()).backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)

    @torch.no_grad()
    def val_step() -> None:
        F.cross_entropy(model(xv[:, :-1]).flatten(0, 1), xv[:, 1:].flatten(), reduction="sum")

    def seconds(step) -> float:
        step()  # warm-up
        t0 = time.perf_counter()
        for _ in range(steps):
            step()
        return time.perf_counter() - t0

    return steps * b * T * fpt / seconds(train_step), steps * vb * T * fpt / 3 / seconds(val_step)


class SweepDirCallback(Callback):
    """Hydra callback: create ``hydra.sweep.dir`` when a multirun starts, for the Optuna sweeper, which opens
    ``<sweep dir>/optuna.db`` before the launcher creates the dir ("unable to open database file")."""

    def on_multirun_start(self, config: DictConfig, **kwargs) -> None:
        Path(str(config.hydra.sweep.dir)).mkdir(parents=True, exist_ok=True)
