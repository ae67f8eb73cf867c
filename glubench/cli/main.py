"""The ``glubench`` and ``glubench-eval`` commands (Hydra apps).

``glubench`` validates the config (one line and exit 2 on a bad value, before anything heavy
loads), then runs one training job (:func:`glubench.train.task.run`) or, for a driver
experiment such as ``tuned_variants_cpu``, the tuned-variants driver.  ``glubench-eval`` scores a
checkpoint (:func:`glubench.train.evaluate.evaluate`).  Importing this module loads neither torch
nor Lightning: ``--help``, tab completion and config errors stay fast.
"""

from __future__ import annotations

import logging
import math
import shlex
import sys
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

from glubench.cli import help as _help
from glubench.cli.overrides import check_overrides
from glubench.cli.rejected import reject
from glubench.core.errors import ConfigError, WriteFailed
from glubench.core.paths import CONF_DIR
from glubench.core.secrets import redact, redacted_stdout
from glubench.sweep.cluster import check_job_launch
from glubench.sweep.hydra_callbacks import collects_job_failures
from glubench.train.config_rules import check_output_dir, output_dir, validate_config
from glubench.train.results import RESULTS_FILE, RunResult
from glubench.train.schema import register_configs

log = logging.getLogger("glubench")
_help.register()  # the resolvers of glubench --help's template
# The typed schemas and the configs' resolvers, when the command's module loads rather than in cli(): a
# submitit worker (hydra/launcher=slurm) unpickles main from here and composes the job's config again.
register_configs()


@hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name="config")
def main(cfg: DictConfig) -> float | None:
    """``glubench`` console script; returns the final ``val_loss`` (the sweep objective).

    Exit codes: 2 for a bad config (one line on stderr, before any heavy work, and no run folder
    left behind; in a sweep the job fails and the others go on), 1 for a failed or diverged single
    run (a diverged job in a sweep lets the sweep go on), 130 (Ctrl-C) or 128 + the signal's number
    (143 SIGTERM, 138 SIGUSR1, 140 SIGUSR2) for an interrupted run.  Messages and a failed job's
    traceback also reach ``<run dir>/train.log``.
    """
    try:
        model_cfg = validate_config(cfg)
        check_job_launch(cfg)
        if not cfg.tune.variants:
            if _in_multirun() and (done := _completed(output_dir(), cfg.overwrite)) is not None:
                return done  # a resubmitted sweep keeps its completed jobs
            check_output_dir(output_dir(), cfg.overwrite)
    except ConfigError as e:
        return _config_error(e)
    _log_config()
    if cfg.tune.variants:  # a driver experiment (e.g. tuned_variants_cpu): studies + seed runs, no job here
        from glubench.sweep.tune import run_tuned_variants  # its report loads scipy: only for a driver

        run_tuned_variants(cfg, list(HydraConfig.get().overrides.task))
        return None
    # The one lazy boundary: torch and Lightning load here, after the config is validated (--help, config errors
    # and tab completion stay fast).
    from glubench.train.console import summary_line
    from glubench.train.faults import Interrupts, describe
    from glubench.train.task import run

    interrupts = Interrupts()  # the signals this run receives
    try:
        result = run(cfg, model_cfg, interrupts)
    except ConfigError as e:  # rules that need the tokenized data (e.g. seq_len vs a split)
        return _config_error(e)
    except (KeyboardInterrupt, SystemExit):  # run() has written status "interrupted" and the checkpoint
        log.error(redact(f"glubench: interrupted by {describe(interrupts.received)} -> "
                         f"{output_dir() / RESULTS_FILE}; {resume_hint()}"))
        interrupts.forward_preemption()  # under submitit: requeue the job now that everything is saved
        sys.exit(interrupts.exit_status())
    except WriteFailed as e:  # disk full, permission lost: one line, the previous files are intact
        log.error(f"glubench: error: {e}")
        sys.exit(1)
    except Exception:
        # results.json already says "failed"; the traceback goes to the console and train.log.
        log.error("glubench: job failed", exc_info=True)
        if not collects_job_failures():
            sys.exit(1)
        log.error(f"glubench: job failed (recorded in {output_dir() / RESULTS_FILE}); the sweep goes on")
        return None  # the sweep's report lists it and sets the exit status
    log.info(summary_line(result, output_dir() / RESULTS_FILE))
    if result.status == "diverged":
        log.error(f"glubench: diverged: {result.error}")
        if not _in_multirun():
            sys.exit(1)
    if result.val_loss is None or not math.isfinite(result.val_loss):
        return math.inf  # a diverged run is the worst objective; Optuna rejects NaN and aborts the study
    return result.val_loss


@hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name="eval")
def eval_main(cfg: DictConfig) -> float | None:
    """``glubench-eval ckpt_path=... [split=val|train] [data=...]``: score a checkpoint; exit 2 on bad input."""
    from glubench.train.evaluate import evaluate  # the lazy boundary, as in main()

    try:
        record = evaluate(cfg)
    except ConfigError as e:
        reject("glubench-eval", e)
    return record["loss"]


def _completed(out: Path, overwrite: bool) -> float | None:
    """The ``val_loss`` of a completed run in ``out`` that is kept (``overwrite=false``), else ``None``."""
    path = out / RESULTS_FILE
    if overwrite or not path.is_file():
        return None
    try:
        done = RunResult.read(path)
    except (OSError, ValueError, TypeError):
        return None
    if done.status != "completed" or done.val_loss is None:
        return None
    log.info(f"glubench: {out} holds a completed run (val_loss={done.val_loss:.4f}); kept")
    return done.val_loss


def resume_hint() -> str:
    """What resumes this interrupted job: the command with its overrides and the run dir, e.g.
    ``to resume: glubench experiment=ci hydra.run.dir=outputs/ci/2026-01-02/10-11-12-123456``.

    The default run dir is timestamped, so running the same command again would start afresh.  A
    multirun job resumes with its sweep: the sweep's own overrides (kept in ``<sweep dir>/multirun.yaml``)
    and ``hydra.sweep.dir``; its completed jobs are kept.
    """
    out = output_dir()
    if not HydraConfig.initialized():
        return f"to resume, run it again in {out}"
    hc = HydraConfig.get()
    own = ("hydra.run.dir=", "hydra.sweep.dir=", "hydra.mode=")  # set below, or Hydra's own
    hydra_args = [o for o in hc.overrides.hydra if not o.startswith(own)]
    if not _in_multirun():
        args = [*hc.overrides.task, *hydra_args, f"hydra.run.dir={out}"]
        return "to resume: glubench " + shlex.join(args)
    sweep = next((p for p in out.parents if (p / "multirun.yaml").is_file()), out.parent)
    task = OmegaConf.select(OmegaConf.load(sweep / "multirun.yaml"), "hydra.overrides.task") or []
    args = ["--multirun", *task, *hydra_args, f"hydra.sweep.dir={sweep}"]
    return "to resume the sweep (its completed jobs are kept): glubench " + shlex.join(args)


def _config_error(e: ConfigError) -> None:
    """Report the one-line error; exit 2 in a single run (leaving no run folder), fail just this job in a sweep."""
    if _in_multirun():
        log.error(f"glubench: error: {e}")
        return None  # a failed job, not SystemExit: the sweep goes on to its other jobs
    reject("glubench", e)  # redacted: the bad value may be a mistyped key


def _log_config() -> None:
    """DEBUG (``debug=default``): the group choices and overrides the config was composed from, and where it is."""
    if HydraConfig.initialized():
        hc = HydraConfig.get()
        choices = " ".join(f"{k}={v}" for k, v in hc.runtime.choices.items() if v is not None and "/" not in k)
        log.debug(f"glubench: config: {choices}; overrides: {' '.join(hc.overrides.task) or 'none'}; "
                  f"composed config: {output_dir() / (hc.output_subdir or '.hydra') / 'config.yaml'}")


def _in_multirun() -> bool:
    return HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN


def _with_redacted_printouts(app) -> None:
    """Run ``app``; ``--cfg``/``-c`` and ``--info`` print the composed config with secret values as ``***``."""
    prints_config = any(a in ("--cfg", "-c", "--info", "-i") or a.startswith(("--cfg=", "--info="))
                        for a in sys.argv[1:])
    if not prints_config:
        app()
        return
    with redacted_stdout():
        app()


def _check_overrides(prog: str, config_name: str) -> None:
    """Exit 2 with one line for an override Hydra would refuse with a traceback or a paragraph
    (:func:`glubench.cli.overrides.check_overrides`), before Hydra starts."""
    error = check_overrides(sys.argv[1:], config_name)
    if error:
        print(redact(f"{prog}: error: {error}"), file=sys.stderr)
        sys.exit(2)


def cli() -> None:
    """The ``glubench`` console script (:func:`main`)."""
    _check_overrides("glubench", "config")
    _with_redacted_printouts(main)


def eval_cli() -> None:
    """The ``glubench-eval`` console script (:func:`eval_main`)."""
    _check_overrides("glubench-eval", "eval")
    _with_redacted_printouts(eval_main)


if __name__ == "__main__":
    cli()
