"""Aggregate a sweep: ``results.json`` files -> results.csv, summary.md, ladder.json, plots, W&B summary.

Hydra-free: it reads the files any glubench run writes (:class:`glubench.train.results.RunResult`), during
or after a sweep.  ``glubench-report PATH...`` is the command line (``--table runs.csv`` for a compute
ladder from anywhere); :class:`glubench.sweep.hydra_callbacks.SweepReport` calls :func:`report_sweep` at the end
of a multirun.  This module only puts the parts together:

- :mod:`glubench.sweep.runs`: loading and grouping (seeds are replicates);
- :mod:`glubench.sweep.stats`: each variant against ``relu`` (Welch's t), comparable throughput;
- :mod:`glubench.sweep.tables` and :mod:`glubench.sweep.figures`: summary.md, results.csv, the figures;
- :mod:`glubench.sweep.ladder` (with :mod:`~glubench.sweep.ladder_stats`, :mod:`~glubench.sweep.ladder_tables`,
  :mod:`~glubench.sweep.ladder_figures`, :mod:`~glubench.sweep.ladder_csv`): the compute ladder;
- :mod:`glubench.sweep.wandb_summary`: the W&B summary run.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import Optional

from glubench.core.io import atomic_write_text
from glubench.core.logging import configure
from glubench.sweep import ladder, ladder_tables, tables
from glubench.sweep.figures import save_figures, write_plots
from glubench.sweep.fits import BASELINE
from glubench.sweep.ladder_csv import read_table
from glubench.sweep.ladder_stats import N_DRAWS
from glubench.sweep.runs import JOB_ERRORS, NOT_STARTED, Group, Report, Run, build_report, flatten, load_runs
from glubench.sweep.stats import CONFIDENCE, Welch, welch
from glubench.sweep.tables import (
    comparison_rows,
    fmt,
    markdown_table,
    problem_rows,
    summary_markdown,
    summary_rows,
    write_csv,
)
from glubench.sweep.wandb_summary import log_wandb

log = logging.getLogger(__name__)

__all__ = ["BASELINE", "CONFIDENCE", "Group", "JOB_ERRORS", "NOT_STARTED", "Report", "Run", "Welch", "build_report",
           "comparison_rows", "flatten", "fmt", "load_runs", "log_wandb", "main", "markdown_table", "problem_rows",
           "report_sweep", "report_table", "save_figures", "summary_markdown", "summary_rows", "terminal_text",
           "welch", "write_csv", "write_plots"]


def terminal_text(report: Report) -> str:
    """What the end of a sweep prints: the table, the comparison, the problems, the compute ladder."""
    text = tables.terminal_text(report)
    return text + "\n\n" + ladder_tables.markdown(report.experiment, report.ladder) if report.ladder else text


def _ladder_outputs(experiment: str, results: list, out_dir: Path, plots: bool) -> list[Path]:
    """ladder.json (always) and the ladder figures (``plots``); returns the PNG paths."""
    from glubench.sweep import ladder_figures  # matplotlib: only when there is a ladder to draw

    ladder.write_json(out_dir / ladder.JSON_FILE, results)
    return ladder_figures.write_plots(experiment, results, out_dir) if plots else []


def report_sweep(paths: list[Path], out_dir: Optional[Path] = None, plots: bool = True,
                 wandb_choice: str = "auto", tuned: tuple[str, ...] = (), n_draws: int = N_DRAWS) -> Report:
    """Build the report for ``paths`` and write results.csv, summary.md, the plots, ``ladder.json`` (when the
    runs span several rungs) and a W&B summary run (``wandb_choice``: ``on``, ``off`` or ``auto``: iff the
    runs logged to W&B) into ``out_dir`` (default: the single PATH).  ``n_draws``: the ladder's draws.

    Raises:
        FileNotFoundError: a path does not exist.
        ValueError: nothing to report, or several paths and no ``out_dir``.
    """
    paths = [Path(p) for p in paths]
    if missing := [p for p in paths if not p.exists()]:
        raise FileNotFoundError(f"PATH={missing[0]} does not exist")
    if out_dir is None and (len(paths) != 1 or not paths[0].is_dir()):
        raise ValueError("--out DIR is required unless exactly one sweep folder is given")
    report = build_report(paths, tuned)
    out_dir = Path(out_dir or paths[0])
    out_dir.mkdir(parents=True, exist_ok=True)
    write_csv(report, out_dir / "results.csv")
    written = write_plots(report, out_dir) if plots else []
    points = ladder.points_from_report(report)
    report.ladder = ladder.analyse(points, n_draws=n_draws) if ladder.is_ladder(points) else []
    if report.ladder:
        written += _ladder_outputs(report.experiment, report.ladder, out_dir, plots)
    ladder_md = ladder_tables.markdown(report.experiment, report.ladder) if report.ladder else ""
    atomic_write_text(out_dir / "summary.md", summary_markdown(report, [p.name for p in written], ladder_md))
    runs_logged = any(k.startswith("logger.wandb.") for r in report.runs for k in r.flat)
    if wandb_choice == "on" or (wandb_choice == "auto" and runs_logged):
        try:
            log_wandb(report, out_dir, written)
        except Exception as e:  # noqa: BLE001 - the files above are the report; W&B is a copy
            log.warning(f"glubench-report: warning: W&B summary run not logged ({type(e).__name__}: {e})")
    return report


def report_table(table: Path, out_dir: Optional[Path] = None, plots: bool = True, baseline: str = BASELINE,
                 n_draws: int = N_DRAWS) -> tuple[list, str]:
    """The compute ladder of a CSV of runs (:mod:`glubench.sweep.ladder_csv`): summary.md, ladder.json and
    the figures into ``out_dir`` (default: the CSV's folder).  Returns the series results and the markdown.

    Raises:
        FileNotFoundError: the CSV does not exist.
        ValueError: a bad CSV (one line naming the column or line), or no series with ``baseline`` runs.
    """
    points = read_table(table)
    if not any(p.variant == baseline for p in points):
        variants = sorted({p.variant for p in points})
        raise ValueError(f"{Path(table).name}: no runs of the baseline {baseline!r} (variants: {variants}); "
                         "name another with --baseline")
    out_dir = Path(out_dir or Path(table).parent)
    out_dir.mkdir(parents=True, exist_ok=True)
    results = ladder.analyse(points, baseline=baseline, n_draws=n_draws)
    written = _ladder_outputs(Path(table).name, results, out_dir, plots)
    md = ladder_tables.markdown(Path(table).name, results)
    text = f"# glubench compute ladder: {table}\n\n{md}\n\n"
    if written:
        text += "## Plots\n\n" + "\n".join(f"![{p.name}]({p.name})" for p in written) + "\n"
    atomic_write_text(out_dir / "summary.md", text)
    return results, md


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="glubench-report", description=(
        "Aggregate glubench runs: results.csv, summary.md (table + Welch t CIs vs relu; the compute ladder with "
        "ladder.json when the runs span several rungs), plots and a W&B summary run.  Exit 1 if any run failed."))
    parser.add_argument("paths", nargs="*", type=Path, help="sweep folders (searched recursively) or results.json")
    parser.add_argument("--table", type=Path, default=None, metavar="CSV",
                        help="a compute ladder from a CSV of runs instead (columns variant, rung, seed, compute "
                             "[FLOPs], loss; optional series, compute_6nd, lr, test_loss)")
    parser.add_argument("--baseline", default=BASELINE, help=f"with --table: the variant compared with (default "
                                                             f"{BASELINE})")
    parser.add_argument("--out", type=Path, default=None, help="where to write (default: the single PATH)")
    parser.add_argument("--tuned", action="append", default=[], metavar="KEY",
                        help="a config key tuned per variant (e.g. optim.lr): shown per variant, not grouped by")
    parser.add_argument("--no-plots", action="store_true", help="skip the PNG plots")
    parser.add_argument("--wandb", choices=("auto", "on", "off"), default="auto",
                        help="W&B summary run: auto = only if the runs logged to W&B (default)")
    return parser


def main(argv: Optional[list[str]] = None) -> int:
    """``glubench-report PATH... [--out DIR] [--tuned KEY]... [--no-plots] [--wandb auto|on|off]`` or
    ``glubench-report --table runs.csv [--baseline NAME] [--out DIR] [--no-plots]``; returns the exit status:
    1 when any run failed, was interrupted or left no results.json (a job that never started is listed, not
    a failure), 2 on bad arguments or a bad table, else 0."""
    configure()
    args = _parser().parse_args(argv)
    try:
        if (args.table is None) == (not args.paths):
            raise ValueError("give sweep folders (PATH...) or --table CSV, not both and not neither")
        if args.table is not None:
            _, md = report_table(args.table, args.out, plots=not args.no_plots, baseline=args.baseline)
            print(md)
            log.info(f"glubench-report: wrote summary.md, ladder.json and plots to {args.out or args.table.parent}")
            return 0
        report = report_sweep(args.paths, args.out, plots=not args.no_plots, wandb_choice=args.wandb,
                              tuned=tuple(args.tuned))
    except (FileNotFoundError, ValueError) as e:
        print(f"glubench-report: error: {e}", file=sys.stderr)
        return 2
    print(terminal_text(report))
    log.info(f"glubench-report: wrote results.csv, summary.md and plots to {args.out or args.paths[0]}")
    return report.exit_code


def cli() -> None:
    """Console-script wrapper: exit with :func:`main`'s status."""
    sys.exit(main())


if __name__ == "__main__":
    cli()
