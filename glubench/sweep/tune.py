"""Tuned comparisons: one Optuna LR study per FFN variant, then the best LR re-run over seeds.

``glubench experiment=tuned_variants_cpu`` (any config with ``tune.variants``) runs this driver instead of
one training job.  Per variant it launches ``glubench --multirun hparams_search=lr_optuna model.ffn=<v>``
(Hydra's Optuna sweeper, into ``<dir>/search/<v>``), then ``model.ffn=<v> optim.lr=<best> seed=<seeds>``
into ``<dir>/tuned/<v>`` and, with ``tune.shared_lr=true``, the shared ``optim.lr`` into ``<dir>/shared/<v>``
(did tuning change the ranking?).  Rerunning with ``tune.dir=<dir>`` redoes only unfinished steps.
"""

from __future__ import annotations

import logging
import math
import subprocess
import sys
import time
from pathlib import Path

from omegaconf import OmegaConf

from glubench.core.io import atomic_write_json
from glubench.sweep.report import markdown_table, report_sweep
from glubench.train.results import RESULTS_FILE, RunResult

SUMMARY_FILE = "tuned.json"
EDGE_FACTOR = 1.25

log = logging.getLogger(__name__)


def _completed_results(folder: Path) -> list[RunResult]:
    return [r for p in sorted(folder.glob(f"*/{RESULTS_FILE}")) if (r := RunResult.read(p)).status == "completed"]


def _glubench(args: list[str], log_file: Path) -> None:
    """Run ``python -m glubench --multirun ARGS``, appending its output to ``log_file``; raise on failure."""
    cmd = [sys.executable, "-m", "glubench", "--multirun", *args]
    log.info("glubench tune: " + " ".join(cmd[1:]))
    log_file.parent.mkdir(parents=True, exist_ok=True)
    with open(log_file, "a") as f:
        proc = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT)
    if proc.returncode != 0:
        raise RuntimeError(f"exit {proc.returncode}: {' '.join(cmd[1:])} (log: {log_file})")


def at_bound(lr: float, lr_range) -> str | None:
    """``"upper"``/``"lower"`` when ``lr`` is within :data:`EDGE_FACTOR` of that end of ``lr_range``, else
    ``None``: a best value at the edge of a search interval says only that the optimum is at or beyond it."""
    lo, hi = lr_range
    return "upper" if lr * EDGE_FACTOR >= hi else "lower" if lr <= lo * EDGE_FACTOR else None


def ranking(results: dict[str, list[RunResult]]) -> list[str]:
    """Variants sorted by mean final val loss over their completed seeds (best first)."""
    means = {v: sum(r.val_loss for r in rs) / len(rs) for v, rs in results.items() if rs}
    return sorted(means, key=lambda v: means[v])


def study_best_lr(study: Path, variant: str, tune, base: list[str], log_file: Path) -> tuple[float, float]:
    """``(best optim.lr, its val loss)`` of ``variant``'s Optuna study in ``study``: ``tune.n_trials`` trials,
    log-uniform over ``tune.lr_range``, every child with the overrides ``base``.  The study runs unless it has
    finished (its ``optimization_results.yaml`` exists); an interrupted one is set aside and started afresh.

    Raises:
        RuntimeError: the study's sweep failed (``log_file`` holds its output).
    """
    if not (study / "optimization_results.yaml").exists():
        if study.exists():  # an interrupted study: keep its trials aside, start a fresh one
            study.rename(study.with_name(f"{variant}.interrupted-{time.strftime('%Y%m%d-%H%M%S')}"))
        lo, hi = tune.lr_range
        search = [o for o in base if not o.startswith("optim.lr=")]  # the study owns optim.lr
        _glubench([*search, "hparams_search=lr_optuna", f"model.ffn={variant}",
                   f"hydra.sweeper.n_trials={tune.n_trials}", f"optim.lr=tag(log, interval({lo!r}, {hi!r}))",
                   f"hydra.sweep.dir={study}"], log_file)
    best = OmegaConf.load(study / "optimization_results.yaml")  # the Optuna sweeper's result
    return float(best.best_params["optim.lr"]), float(best.best_value)


def run_tuned_variants(cfg, overrides: list[str]) -> dict:
    """Search, re-run and report for every variant in ``cfg.tune.variants`` (``optim.lr``: the shared LR);
    every child gets the driver's command-line ``overrides``.  Returns the ``tuned.json`` record.

    Raises:
        RuntimeError: a child sweep failed (its log is named); finished work is kept.
    """
    t = cfg.tune
    root = Path(t.dir or f"multirun/{cfg.experiment_name}/{time.strftime('%Y-%m-%d/%H-%M-%S')}").resolve()
    root.mkdir(parents=True, exist_ok=True)
    base = [o for o in overrides if not o.lstrip("+~").startswith(("tune.", "hydra.sweep", "seed="))]
    base.append("tune.variants=[]")  # the children are single training jobs

    def seed_runs(kind: str, v: str, *args: str) -> list[RunResult]:
        """``v`` over every seed into ``root/kind/v``, unless already done: the completed results."""
        out = root / kind / v
        if len(_completed_results(out)) < len(t.seeds):
            _glubench([*base, f"model.ffn={v}", *args, f"seed={','.join(map(str, t.seeds))}",
                       f"hydra.sweep.dir={out}"], root / "logs" / f"{kind}_{v}.log")
        return _completed_results(out)

    record: dict = {"dir": str(root), "n_trials": t.n_trials, "seeds": list(t.seeds), "shared_lr": None,
                    "lr_range": list(t.lr_range), "variants": {}}
    tuned, shared = {}, {}
    for v in t.variants:
        lr, search_loss = study_best_lr(root / "search" / v, v, t, base, root / "logs" / f"search_{v}.log")
        if edge := at_bound(lr, t.lr_range):
            log.warning(f"glubench tune: warning: the tuned optim.lr={lr:.3g} for {v} is within a factor "
                        f"{EDGE_FACTOR} of the {edge} bound of tune.lr_range={list(t.lr_range)}; the best LR may "
                        "lie outside the range: widen it")
        tuned[v] = seed_runs("tuned", v, f"optim.lr={lr!r}")
        record["variants"][v] = {"tuned_lr": lr, "search_best_val_loss": search_loss, "lr_at_bound": edge,
                                 "val_loss": [r.val_loss for r in tuned[v]]}
        if t.shared_lr:
            shared[v] = seed_runs("shared", v)
            record["shared_lr"] = shared[v][0].config["optim"]["lr"] if shared[v] else None
            record["variants"][v]["shared_lr_val_loss"] = [r.val_loss for r in shared[v]]
        atomic_write_json(root / SUMMARY_FILE, record)  # after every variant: a crash keeps the rest

    record["ranking_tuned"] = ranking(tuned)
    report_sweep([root / "tuned"], out_dir=root / "tuned", plots=True, wandb_choice="off", tuned=("optim.lr",))
    if t.shared_lr:
        record["ranking_shared"] = ranking(shared)
        record["ranking_changed"] = record["ranking_tuned"] != record["ranking_shared"]
        report_sweep([root / "shared"], out_dir=root / "shared", plots=True, wandb_choice="off")
    atomic_write_json(root / SUMMARY_FILE, record)
    print(summary_text(record))  # the command's result table: primary output
    return record


def summary_text(record: dict) -> str:
    """The closing lines: tuned LR and mean val loss per variant, and the two rankings."""
    def mean(xs):
        xs = [x for x in xs if x is not None and math.isfinite(x)]
        return f"{sum(xs) / len(xs):.4f}" if xs else "—"

    rows = []
    for v in record.get("ranking_tuned") or record["variants"]:
        d = record["variants"][v]
        edge = f" (at the {d['lr_at_bound']} bound)" if d.get("lr_at_bound") else ""
        rows.append([v, f"{d['tuned_lr']:.3g}{edge}", mean(d["val_loss"]), mean(d.get("shared_lr_val_loss", []))])
    header = ["variant", "tuned lr", "val loss (tuned, mean)", "val loss (shared lr, mean)"]
    lines = [f"glubench tune: {record['dir']}", markdown_table(header, rows),
             "ranking with tuned LRs:  " + " < ".join(record.get("ranking_tuned", []))]
    if record.get("ranking_shared") is not None:
        lines.append(f"ranking at shared lr={record['shared_lr']}: " + " < ".join(record["ranking_shared"]))
        lines.append("ranking changed: " + ("yes" if record["ranking_changed"] else "no"))
    return "\n".join(lines)
