"""The report's tables: summary.md (the Table-1-style table, the comparison with relu, the runs that did
not complete), the end-of-sweep console text and results.csv.  The compute ladder's section is
:mod:`glubench.sweep.ladder_tables`'s."""

from __future__ import annotations

import csv
import io
import json
import math
from dataclasses import asdict, fields
from pathlib import Path
from statistics import stdev
from typing import Any, Optional

from glubench.core.io import atomic_write_text
from glubench.sweep.runs import BASELINE, Report, Run
from glubench.sweep.stats import CONFIDENCE
from glubench.train.results import RunResult

NOT_COMPARABLE = "⚠"


def fmt(x: Any, spec: str, scale: float = 1, unit: str = "") -> str:
    """A number ``x * scale`` formatted by ``spec``, then ``unit``; ``—`` for ``None`` or a non-finite float;
    anything else (a note such as ``not defined``) as ``str(x)``."""
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return "—"
    if isinstance(x, bool) or not isinstance(x, (int, float)):
        return str(x)
    return format(x * scale, spec) + unit


def summary_rows(report: Report) -> tuple[list[str], list[list[str]]]:
    """The Table-1-style table as (header, rows of strings), best row first and starred; with
    ``diagnostics.dead_units=true`` runs, also the dead-unit fraction (mean over layers, %) at the end of
    training and its maximum over training."""
    dead = "diagnostics.dead_units."
    cols = [
        ("", lambda g: "★" if g is report.groups[0] else ""),
        ("variant", lambda g: g.ffn),
        *((k, lambda g, k=k: str(g.values[k])) for k in report.keys[1:]),
        *((f"{k} (tuned)", lambda g, k=k: ", ".join(  # its distinct values: one per variant
            f"{v:.3g}" if isinstance(v, float) else str(v) for v in sorted({r.flat.get(k) for r in g.runs}, key=str)))
          for k in report.tuned),
        ("FFN hidden", lambda g: fmt(g.first("ffn_hidden"), ",")),
        ("FFN params", lambda g: fmt(g.first("params_ffn"), ",")),
        ("params vs baseline", lambda g: fmt(g.params_vs_baseline, "+.2f", 100, "%")),
        ("val loss (mean ± std)",
         lambda g: f"{g.loss_mean:.4f} " + ("(n=1)" if g.n == 1 else f"± {stdev(g.finite('val_loss')):.4f}")),
        ("val ppl", lambda g: fmt(math.exp(g.loss_mean) if g.loss_mean < 700 else None, ".3f")),
        ("val bpb", lambda g: fmt(g.mean("val_bpb"), ".4f")),
        ("n seeds", lambda g: str(g.n)),
        ("tokens/s", lambda g: fmt(g.mean("train_tokens_per_sec"), ",.0f")
         + (f" {NOT_COMPARABLE}" if g.throughput_problem and g.mean("train_tokens_per_sec") else "")),
        ("MFU", lambda g: fmt(g.mean("mfu"), ".1f", 100, "%")),
        ("budget", lambda g: str((g.first("budget") or {}).get("mode", "—"))),
        ("train tokens", lambda g: fmt(g.mean("budget.tokens"), ",.0f")),
        ("train FLOPs", lambda g: fmt(g.mean("budget.flops"), ".3g")),
        ("train s", lambda g: fmt(g.mean("budget.seconds"), ".1f")),
    ]
    if any(g.mean(dead + "dead_frac") is not None for g in report.groups):
        cols += [(f"dead units ({when})", lambda g, k=k: fmt(g.mean(dead + k), ".1f", 100, "%"))
                 for when, k in (("end", "dead_frac"), ("max", "dead_frac_max"))]
    return [h for h, _ in cols], [[cell(g) for _, cell in cols] for g in report.groups]


def comparison_rows(report: Report) -> tuple[list[str], list[list[str]]]:
    """Each variant vs its ``relu`` group: Δ mean val loss, 95% CI, p, significance."""
    extra = report.keys[1:]
    header = ["variant", *extra, f"Δ val loss vs {BASELINE}", f"{CONFIDENCE:.0%} CI (Welch t)", "p", "significant"]
    rows = []
    for g in report.groups:
        if (w := g.vs_baseline) is None:
            continue
        if w.significant is None:
            ci, p, sig = w.note, "—", "n/a"
        else:
            ci, p = f"[{w.low:+.4f}, {w.high:+.4f}]", f"{w.p:.3g}"
            sig = ("yes: better" if w.diff < 0 else "yes: worse") if w.significant else "no"
        rows.append([g.ffn, *(str(g.values[k]) for k in extra), f"{w.diff:+.4f}", ci, p, sig])
    return header, rows


def problem_rows(report: Report, runs: Optional[list[Run]] = None) -> tuple[list[str], list[list[str]]]:
    """(header, rows) listing ``runs`` (default: ``report.problems``): folder, variant, seed, status, error."""
    rows = [[str(r.path), r.result.ffn, str(r.result.seed), r.result.status,
             (r.result.error or ("val loss not finite" if r.result.status == "diverged" else ""))
             .replace("|", "/").replace("\n", " ")[:300]] for r in (report.problems if runs is None else runs)]
    return ["run", "variant", "seed", "status", "error"], rows


def markdown_table(header: list[str], rows: list[list[str]]) -> str:
    """A GitHub-flavoured markdown table."""
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(" --- " for _ in header) + "|"]
    return "\n".join(lines + ["| " + " | ".join(cells) + " |" for cells in rows])


def summary_markdown(report: Report, plots: list[str] = (), ladder_md: str = "") -> str:
    """The whole ``summary.md``: the table, the comparison with relu, the compute ladder (``ladder_md``,
    when the runs span several sizes or budgets), the runs that did not complete."""
    parts = [f"# glubench results: {report.experiment}",
             f"{len(report.runs)} runs under {', '.join(map(str, report.paths))}: "
             f"{sum(g.n for g in report.groups)} completed, "
             f"{len(report.problems)} did not complete{' (listed below)' if report.problems else ''}"
             + (f", {len(report.not_started)} never started (listed below; not failures)" if report.not_started
                else "") + f".  Grouped by {', '.join(report.keys)}; seeds are replicates."]
    if report.groups:
        parts += [markdown_table(*summary_rows(report)),
                  "Sorted by mean final validation loss (nats per token; ★ = lowest).  val ppl = exp(mean val "
                  "loss); val bpb = bits per UTF-8 byte; ± is the sample std over seeds; FFN params = one layer's "
                  f"FFN; params vs baseline compares with the `{BASELINE}` row; tokens/s = training throughput "
                  "(mean over seeds); MFU is blank when the device peak is unknown (CPU); budget = what was held "
                  "equal (`tokens`, `flops`, `time` or `tokens_per_param`), then the tokens, training FLOPs "
                  "(analytic) and training seconds (validation excluded) actually spent, mean over seeds"
                  + (f"; {', '.join(report.tuned)} (tuned) = the value each variant's own search chose"
                     if report.tuned else "") + "." + throughput_notes(report)]
    cmp_header, cmp = comparison_rows(report)
    if cmp:
        parts += [f"## Difference from {BASELINE}", markdown_table(cmp_header, cmp),
                  f"Δ = mean val loss of the variant minus that of `{BASELINE}` (negative = better).  "
                  f"{CONFIDENCE:.0%} confidence interval of Welch's unequal-variance t test over seeds; "
                  f"significant means the interval excludes 0 ({len(cmp)} comparisons, not corrected for "
                  "multiplicity).  With fewer than 2 seeds per variant there is no variance estimate, so no interval."]
    elif report.groups:
        parts.append(f"No comparison with `{BASELINE}`: no completed `{BASELINE}` run with the same settings.")
    if ladder_md:
        parts.append(ladder_md)
    if report.problems:
        parts += ["## Runs that did not complete", markdown_table(*problem_rows(report))]
    if report.not_started:
        parts += ["## Runs that never started", markdown_table(*problem_rows(report, report.not_started)),
                  "A job folder with its config but no job log: the job never began (e.g. its config was "
                  "rejected).  Not counted as a failure."]
    text = "\n\n".join(parts) + "\n\n"
    return text + "## Plots\n\n" + "\n".join(f"![{p}]({p})" for p in plots) + "\n" if plots else text


def throughput_notes(report: Report) -> str:
    """The sentence under the table that says which groups' tokens/s are not comparable, and why
    (:func:`glubench.sweep.stats.throughput_problem`); ``""`` when all are."""
    flagged = [(g.label, why) for g in report.groups if (why := g.throughput_problem)
               and g.mean("train_tokens_per_sec")]
    if not flagged:
        return ""
    return (f"  {NOT_COMPARABLE} tokens/s not comparable (not a property of the FFN, do not rank by it): "
            + "; ".join(f"{label}: {why}" for label, why in flagged) + ".")


def terminal_text(report: Report) -> str:
    """What the end of a sweep prints: the table, the comparison, the problems (the caller adds the ladder)."""
    parts = [f"glubench-report: {report.experiment}"]
    if report.groups:
        parts.append(markdown_table(*summary_rows(report)))
    if (cmp := comparison_rows(report))[1]:
        parts.append(markdown_table(*cmp))
    if report.problems:
        parts.append(f"{len(report.problems)} run(s) did not complete:\n" + markdown_table(*problem_rows(report)))
    if report.not_started:
        parts.append(f"{len(report.not_started)} run(s) never started (not failures):\n"
                     + markdown_table(*problem_rows(report, report.not_started)))
    return "\n\n".join(parts)


def write_csv(report: Report, path: Path) -> None:
    """One row per run (completed or not): every results.json field, ``config.*`` flattened, ``history`` as JSON."""
    nested = ("config", "versions", "history", "budget", "diagnostics", "machine")
    names = [f.name for f in fields(RunResult) if f.name not in nested]
    rows = []
    for r in report.runs:
        d = asdict(r.result)
        rows.append({"run_dir": str(r.path), **{n: d[n] for n in names}, "history": json.dumps(d["history"]),
                     **{f"budget.{k}": v for k, v in (d["budget"] or {}).items()},
                     **{f"versions.{k}": v for k, v in d["versions"].items()},
                     **{f"machine.{k}": json.dumps(v) if isinstance(v, list) else v
                        for k, v in (d.get("machine") or {}).items()},
                     **{f"config.{k}": json.dumps(v) if isinstance(v, (list, dict)) else v for k, v in r.flat.items()}})
    seen = dict.fromkeys(k for row in rows for k in row)  # first-seen order
    budget, versions, machine, config = ([k for k in seen if k.startswith(p)]
                                         for p in ("budget.", "versions.", "machine.", "config."))
    buf = io.StringIO()
    w = csv.DictWriter(buf, ["run_dir", *names, *budget, *sorted(versions), *machine, "history",
                             *sorted(config)])
    w.writeheader()
    w.writerows(rows)  # None is written as an empty cell
    atomic_write_text(path, buf.getvalue())
