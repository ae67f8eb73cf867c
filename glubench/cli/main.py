"""The ``glubench`` command (a Hydra app): validate, then one training job or a tuned-variants driver."""

from __future__ import annotations

import math
import sys

import hydra
from omegaconf import DictConfig

import glubench.train.schema  # noqa: F401  (registers the typed schema)
from glubench.core.paths import CONF_DIR
from glubench.sweep.cluster import check_job_launch
from glubench.train.task import output_dir, run
from glubench.train.validate import ConfigError, check_output_dir, validate_config


@hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name="config")
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

        from glubench.sweep.tune import run_tuned_variants

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
        from glubench.sweep.callbacks import collects_job_failures

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
    from glubench.core.secrets import redacted_stdout

    with redacted_stdout():
        main()


if __name__ == "__main__":
    cli()
