"""The report as a W&B run of its own (``job_type=report``): the summary, comparison and problem tables,
the compute ladder's tables and the figures, keyed by the sweep so that two sweeps never share one."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

from glubench.core.io import sha256_text
from glubench.core.secrets import redact, redacted_argv, wandb_mode
from glubench.sweep.ladder_stats import ROW_KEYS
from glubench.sweep.runs import Report
from glubench.sweep.tables import comparison_rows, problem_rows, summary_rows


def summary_run_id(project: str, group: str, paths: list[Path]) -> str:
    """``summary-`` + 12 hex digits of sha256(project, group, the sweep folders resolved and sorted): every
    report of one sweep resumes one run, and two sweeps of the same group get two."""
    return "summary-" + sha256_text(str(project), str(group), *sorted(str(Path(p).resolve()) for p in paths))[:12]


def _ladder_tables(report: Report, wandb) -> dict[str, Any]:
    out = {}
    for r in report.ladder:  # one table per series and compute convention
        out[f"ladder/{r.label or 'multipliers'}/{r.convention}"] = wandb.Table(
            columns=list(ROW_KEYS), data=[[str(row[c]) for c in ROW_KEYS] for row in r.rows])
    return out


def log_wandb(report: Report, out_dir: Path, plots: list[Path]) -> Optional[Path]:
    """A separate W&B run of the sweep (``job_type=report``, group = the runs' group): the summary,
    comparison, problem and ladder tables as ``wandb.Table`` plus the plots as images.  Project, entity,
    group and mode come from the runs' ``logger.wandb.*``; the mode otherwise from ``$WANDB_MODE``, else
    online iff credentials exist.  The run id is :func:`summary_run_id`.  Returns the run's local folder."""
    import wandb  # heavy: only with --wandb on

    flat = report.runs[0].flat if report.runs else {}
    mode = wandb_mode(flat.get("logger.wandb.mode"))
    project = flat.get("logger.wandb.project") or "glubench"
    group = flat.get("logger.wandb.group") or flat.get("experiment_name") or "glubench"
    run_id = summary_run_id(project, group, report.paths)
    with redacted_argv():  # W&B records the command line, which may hold a secret override
        run = wandb.init(project=project, entity=flat.get("logger.wandb.entity"), group=group, mode=mode,
                         id=run_id, resume="allow", name=f"summary-{group}-{run_id[-6:]}", job_type="report",
                         dir=str(out_dir), reinit="finish_previous")
    # A later report may cover other paths: update rather than pass config= (a resumed run's
    # config keys may not change value otherwise).
    run.config.update(redact({"grouped_by": report.keys, "paths": [str(p) for p in report.paths]}),
                      allow_val_change=True)
    header, rows = summary_rows(report)
    data: dict[str, Any] = {"summary/table": wandb.Table(columns=["best", *header[1:]], data=rows)}
    for key, (columns, rows) in (("vs_baseline", comparison_rows(report)), ("not_completed", problem_rows(report)),
                                 ("not_started", problem_rows(report, report.not_started))):
        if rows:
            data[f"summary/{key}"] = wandb.Table(columns=columns, data=rows)
    data.update(_ladder_tables(report, wandb))
    data.update({f"plots/{p.stem}": wandb.Image(str(p)) for p in plots})
    run.log(data)
    if report.groups:
        run.summary.update({"best": report.groups[0].label, "best_val_loss": report.groups[0].loss_mean,
                            "n_not_completed": len(report.problems), "n_not_started": len(report.not_started)})
    folder = Path(run.dir).parent
    run.finish(exit_code=report.exit_code)
    return folder
