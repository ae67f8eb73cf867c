"""Aggregate a sweep: ``results.json`` files -> results.csv, summary.md, statistics, plots, W&B summary.

Hydra-free: it reads the files any glubench run writes (:class:`glubench.train.results.RunResult`), during
or after a sweep.  ``glubench-report PATH...`` is the command line; :class:`glubench.sweep.callbacks.SweepReport`
calls :func:`report_sweep` at the end of a multirun.  Runs are grouped by every config key whose value
differs between runs (``model.ffn`` always), except the seed: seeds are replicates.  Each variant is compared
with the ``relu`` group that has the same values of the other keys: the difference of mean final validation
loss with a Welch t 95% confidence interval (Welch 1947; Satterthwaite degrees of freedom).
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import logging
import math
import sys
import warnings
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from statistics import fmean, stdev
from typing import Any, Optional

from glubench.core.io import atomic_write, atomic_write_text, sha256_text
from glubench.sweep import ladder
from glubench.sweep.fits import BASELINE
from glubench.train.results import RESULTS_FILE, RunResult

log = logging.getLogger(__name__)

VARIANT_KEY = "model.ffn"
REPLICATE_KEYS = ("seed",)  # differ between replicates; never a grouping key
JOB_ERRORS = ("failed", "interrupted", "missing")  # the job itself broke: the exit status is 1
NOT_STARTED = "not_started"  # a job folder whose job never began (a rejected config): listed, not a failure
CONFIDENCE = 0.95
PLOTS = ("val_loss_curves", "val_loss_bar", "tokens_per_sec")


@dataclass
class Run:
    """One run folder: its results and its config flattened to dotted keys (``model.ffn``)."""

    path: Path
    result: RunResult
    flat: dict[str, Any]


@dataclass
class Welch:
    """Difference of means ``a - b`` with a Welch t confidence interval (``low``, ``high``) and the
    two-sided p-value of "no difference".  With fewer than two values on a side, or no variance on
    either, every field but ``diff`` is ``None`` and ``note`` says why."""

    diff: float
    low: Optional[float] = None
    high: Optional[float] = None
    p: Optional[float] = None
    df: Optional[float] = None
    note: str = ""

    @property
    def significant(self) -> Optional[bool]:
        """``True`` when the interval excludes 0, ``None`` when it could not be computed."""
        return None if self.low is None or self.high is None else self.low > 0 or self.high < 0


def welch(a: list[float], b: list[float], confidence: float = CONFIDENCE) -> Welch:
    """Welch's unequal-variance t interval for ``mean(a) - mean(b)`` (values in any one unit, e.g. nats/token).

    By :func:`scipy.stats.ttest_ind` with ``equal_var=False``: ``se = sqrt(s_a²/n_a + s_b²/n_b)``
    (sample variances), Welch–Satterthwaite ``df = se⁴ / ((s_a²/n_a)²/(n_a-1) + (s_b²/n_b)²/(n_b-1))``
    and ``diff ± t_{df, (1+confidence)/2} · se`` (Welch 1947, Biometrika 34; Satterthwaite 1946,
    Biometrics Bulletin 2).

    Raises:
        ValueError: if ``a`` or ``b`` is empty.
    """
    if not a or not b:
        raise ValueError(f"welch: both samples need values (got n={len(a)} and n={len(b)})")
    diff = fmean(a) - fmean(b)
    if len(a) < 2 or len(b) < 2:
        return Welch(diff, note=f"n/a: needs >= 2 seeds on both sides (n={len(a)} vs {len(b)})")
    # Tested on the values, not on a computed variance, which rounding can leave a hair above 0.
    const_a, const_b = len(set(a)) == 1, len(set(b)) == 1
    if const_a and const_b:  # se = 0: scipy would give t = ±inf and a zero-width interval
        return Welch(diff, note="n/a: zero variance on both sides")
    from scipy import stats  # not at module level: scipy takes a while to import

    with warnings.catch_warnings():
        if const_a or const_b:
            # scipy warns of "catastrophic cancellation" for a constant sample; its variance is
            # exactly 0 here, so the warning would only be noise.
            warnings.filterwarnings("ignore", message="Precision loss occurred", category=RuntimeWarning)
        res = stats.ttest_ind(a, b, equal_var=False)
    ci = res.confidence_interval(confidence_level=confidence)
    return Welch(diff, float(ci.low), float(ci.high), float(res.pvalue), float(res.df))


@dataclass
class Group:
    """Completed runs that share every swept value except the seed (``values``: grouping key -> value).
    Its methods read a :class:`RunResult` field by name, dotted into its dicts (``budget.tokens``)."""

    values: dict[str, Any]
    runs: list[Run]
    params_vs_baseline: Optional[float] = None  # FFN params relative to the matching relu group
    vs_baseline: Optional[Welch] = None

    @property
    def ffn(self) -> str:
        return str(self.values[VARIANT_KEY])

    @property
    def others(self) -> dict[str, Any]:
        return {k: v for k, v in self.values.items() if k != VARIANT_KEY}

    @property
    def label(self) -> str:
        extra = " ".join(f"{k.split('.')[-1]}={v}" for k, v in self.others.items())
        return f"{self.ffn} {extra}".strip()

    @property
    def n(self) -> int:
        return len(self.runs)

    @property
    def loss_mean(self) -> float:
        return fmean(self.finite("val_loss"))

    def finite(self, name: str) -> list[float]:
        """The finite values of ``name`` over the runs (those that measured it)."""
        return [float(x) for r in self.runs if (x := _field(r.result, name)) is not None and math.isfinite(x)]

    def mean(self, name: str) -> Optional[float]:
        """Mean of :meth:`finite` (``None`` if no run measured ``name``)."""
        xs = self.finite(name)
        return fmean(xs) if xs else None

    def first(self, name: str) -> Any:
        """The first run's value of a per-variant constant (``ffn_hidden``, ``params_ffn``), skipping ``None``."""
        return next((x for r in self.runs if (x := _field(r.result, name)) is not None), None)


def _field(result: RunResult, name: str) -> Any:
    head, *keys = name.split(".")
    value = getattr(result, head)
    for k in keys:
        value = (value or {}).get(k)
    return value


@dataclass
class Report:
    """A whole sweep: groups of completed runs (sorted by mean val loss) and the runs that did not complete:
    ``problems`` (status not ``completed``, or ``missing``: killed) and ``not_started`` (not failures)."""

    keys: list[str]
    groups: list[Group]
    problems: list[Run]
    runs: list[Run] = field(default_factory=list)
    paths: list[Path] = field(default_factory=list)
    tuned: list[str] = field(default_factory=list)  # keys tuned per variant: shown, not grouped by
    not_started: list[Run] = field(default_factory=list)
    ladder: list = field(default_factory=list)  # glubench.sweep.ladder.tables when the runs span sizes

    @property
    def exit_code(self) -> int:
        """1 when any job failed, was interrupted or left no results; else 0 (a divergence is a result)."""
        return 1 if any(r.result.status in JOB_ERRORS for r in self.problems) else 0

    @property
    def experiment(self) -> str:
        return ", ".join(sorted({str(r.flat.get("experiment_name", "?")) for r in self.runs})) or "?"


def flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"model": {"ffn": "relu"}}`` -> ``{"model.ffn": "relu"}`` (lists are kept as values)."""
    out: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def _missing_run(job_dir: Path) -> Run:
    """A Hydra job folder without results.json: ``missing`` (killed) if the job began (its log has content)."""
    from omegaconf import OmegaConf

    try:
        cfg = OmegaConf.to_container(OmegaConf.load(job_dir / ".hydra" / "config.yaml"), resolve=False)
    except Exception:  # noqa: BLE001 - a corrupt config still leaves a row that names the folder
        cfg = {}
    model = cfg.get("model") if isinstance(cfg.get("model"), dict) else {}
    if any(p.is_file() and p.stat().st_size > 0 for p in job_dir.glob("*.log")):
        status, error = "missing", f"no {RESULTS_FILE} in {job_dir} (killed before it could be written?)"
    else:
        status, error = NOT_STARTED, f"no {RESULTS_FILE} and no job log in {job_dir} (never started: config rejected?)"
    result = RunResult(status=status, ffn=str(model.get("ffn", "?")), seed=cfg.get("seed", -1), error=error,
                       config=cfg)
    return Run(job_dir, result, flatten(cfg))


def load_runs(paths: list[Path]) -> list[Run]:
    """Every ``results.json`` under ``paths`` (recursively), plus Hydra job folders that lack one;
    FileNotFoundError if a path does not exist."""
    runs, seen = [], set()
    for root in map(Path, paths):
        if not root.exists():
            raise FileNotFoundError(f"PATH={root} does not exist")
        for f in [root] if root.is_file() else sorted(root.rglob(RESULTS_FILE)):
            if f.resolve() not in seen:
                seen.add(f.resolve())
                result = RunResult.read(f)
                runs.append(Run(f.parent, result, flatten(result.config)))
        for hydra_dir in sorted(root.rglob(".hydra")) if root.is_dir() else []:
            job = hydra_dir.parent
            if (hydra_dir / "config.yaml").exists() and not (job / RESULTS_FILE).exists() and job != root:
                runs.append(_missing_run(job))
    return runs


def _hashable(v: Any) -> str:
    return json.dumps(v, sort_keys=True, default=str)


def swept_keys(runs: list[Run], ignore: tuple[str, ...] = REPLICATE_KEYS) -> list[str]:
    """Config keys whose value differs between ``runs`` (``model.ffn`` always first), minus ``ignore``."""
    keys = {k for r in runs for k in r.flat}
    differing = sorted(k for k in keys if k not in ignore and k != VARIANT_KEY
                       and len({_hashable(r.flat.get(k)) for r in runs}) > 1)
    return [VARIANT_KEY, *differing]


def _completed(r: Run) -> bool:
    return r.result.status == "completed" and r.result.val_loss is not None and math.isfinite(r.result.val_loss)


def group_runs(runs: list[Run], keys: list[str]) -> list[Group]:
    """Completed runs with a finite val loss, grouped by the values of ``keys``, best (lowest) first."""
    buckets: dict[str, Group] = {}
    for r in filter(_completed, runs):
        values = {k: r.flat.get(k, r.result.ffn if k == VARIANT_KEY else None) for k in keys}
        buckets.setdefault(_hashable(values), Group(values, [])).runs.append(r)
    groups = sorted(buckets.values(), key=lambda g: (g.loss_mean, g.label))
    for g in groups:
        base = next((b for b in groups if b.ffn == BASELINE and b.others == g.others), None)
        if base is None:
            continue
        p, pb = g.first("params_ffn"), base.first("params_ffn")
        g.params_vs_baseline = (p - pb) / pb if p is not None and pb else None
        if g is not base:
            g.vs_baseline = welch(g.finite("val_loss"), base.finite("val_loss"))
    return groups


def build_report(paths: list[Path], tuned: tuple[str, ...] = ()) -> Report:
    """Load, group and compare every run under ``paths``.  ``tuned``: config keys tuned per variant
    (``optim.lr`` after a per-variant search), shown in the table but not grouped by.

    Raises:
        FileNotFoundError: a path does not exist.
        ValueError: no ``results.json`` (and no job folder) was found under ``paths``.
    """
    runs = load_runs(paths)
    if not runs:
        raise ValueError(f"no {RESULTS_FILE} found under {', '.join(map(str, paths))}")
    # Keys come from the completed runs only: a missing run's partial config must not split groups.
    keys = swept_keys([r for r in runs if _completed(r)] or runs, ignore=(*REPLICATE_KEYS, *tuned))
    groups = group_runs(runs, keys)
    grouped = {id(r) for g in groups for r in g.runs}
    left = [r for r in runs if id(r) not in grouped]
    problems = [r for r in left if r.result.status != NOT_STARTED]
    not_started = [r for r in left if r.result.status == NOT_STARTED]
    return Report(keys, groups, problems, runs, [Path(p) for p in paths], list(tuned), not_started)


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
        ("tokens/s", lambda g: fmt(g.mean("train_tokens_per_sec"), ",.0f")),
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
                     if report.tuned else "") + "."]
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


def terminal_text(report: Report) -> str:
    """What the end of a sweep prints: the table, the comparison, the problems."""
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
    if report.ladder:
        parts.append(ladder.markdown(report, report.ladder))
    return "\n\n".join(parts)


def write_csv(report: Report, path: Path) -> None:
    """One row per run (completed or not): every results.json field, ``config.*`` flattened, ``history`` as JSON."""
    nested = ("config", "versions", "history", "budget", "diagnostics")
    names = [f.name for f in fields(RunResult) if f.name not in nested]
    rows = []
    for r in report.runs:
        d = asdict(r.result)
        rows.append({"run_dir": str(r.path), **{n: d[n] for n in names}, "history": json.dumps(d["history"]),
                     **{f"budget.{k}": v for k, v in (d["budget"] or {}).items()},
                     **{f"versions.{k}": v for k, v in d["versions"].items()},
                     **{f"config.{k}": json.dumps(v) if isinstance(v, (list, dict)) else v for k, v in r.flat.items()}})
    seen = dict.fromkeys(k for row in rows for k in row)  # first-seen order
    budget, versions, config = ([k for k in seen if k.startswith(p)] for p in ("budget.", "versions.", "config."))
    buf = io.StringIO()
    w = csv.DictWriter(buf, ["run_dir", *names, *budget, *sorted(versions), "history", *sorted(config)])
    w.writeheader()
    w.writerows(rows)  # None is written as an empty cell
    atomic_write_text(path, buf.getvalue())


def write_plots(report: Report, out_dir: Path) -> list[Path]:
    """Three PNGs: val loss vs tokens seen (mean over seeds, min–max shaded), final val loss bars
    (± sample std, none at n = 1; the loss axis says where it starts), training tokens/s bars.  Each also as
    SVG.  Returns the PNG paths."""
    from matplotlib.figure import Figure  # no pyplot: no global state, no display needed

    if not report.groups:
        return []
    colors = {g.label: f"C{i % 10}" for i, g in enumerate(sorted(report.groups, key=lambda g: g.label))}
    figs = {PLOTS[0]: Figure(figsize=(8, 5), layout="constrained")}
    ax = figs[PLOTS[0]].add_subplot()
    for g in report.groups:
        at: dict[int, list[float]] = {}  # tokens_seen -> val loss of each seed
        for h in (h for r in g.runs for h in r.result.history):
            if h.get("val_loss") is not None and math.isfinite(h["val_loss"]):
                at.setdefault(int(h["tokens_seen"]), []).append(float(h["val_loss"]))
        xs, c = sorted(at), colors[g.label]
        if xs:
            ax.plot(xs, [fmean(at[x]) for x in xs], marker="o", ms=3, color=c, label=f"{g.label} (n={g.n})")
            if g.n > 1:
                ax.fill_between(xs, [min(at[x]) for x in xs], [max(at[x]) for x in xs], color=c, alpha=0.2,
                                linewidth=0)
    ax.set(xlabel="tokens seen", ylabel="validation loss (nats/token)",
           title=f"{report.experiment}: validation loss (mean over seeds; shaded: min–max)")
    ax.grid(alpha=0.3)
    if ax.lines:  # no run recorded a validation history: an empty plot, without an empty legend
        ax.legend(fontsize=8)

    for name, attr, ylabel, title in (
        (PLOTS[1], "val_loss", "final validation loss (nats/token)", "final validation loss (± std over seeds)"),
        (PLOTS[2], "train_tokens_per_sec", "training tokens/s", "training throughput (± std over seeds)"),
    ):
        shown = [g for g in report.groups if g.mean(attr) is not None]
        if not shown:
            continue
        figs[name] = Figure(figsize=(max(6, 0.9 * len(shown) + 2), 4.5), layout="constrained")
        ax = figs[name].add_subplot()
        means = [g.mean(attr) for g in shown]
        errs = [stdev(xs) if len(xs := g.finite(attr)) > 1 else None for g in shown]
        ax.bar(range(len(shown)), means, color=[colors[g.label] for g in shown])
        with_err = [i for i, e in enumerate(errs) if e is not None]
        ax.errorbar(with_err, [means[i] for i in with_err], yerr=[errs[i] for i in with_err], fmt="none",
                    ecolor="k", capsize=4)
        ax.set_xticks(range(len(shown)), [g.label for g in shown], rotation=30, ha="right")
        if attr == "val_loss":  # bars from 0 would hide differences of a few hundredths: say where they start
            lo, hi = min(m - (e or 0) for m, e in zip(means, errs)), max(m + (e or 0) for m, e in zip(means, errs))
            pad = 0.15 * (hi - lo) + 1e-3
            ax.set_ylim(lo - pad, hi + pad)
            ylabel += f" (y axis starts at {lo - pad:.3f}, not 0)"
        ax.set(ylabel=ylabel, title=f"{report.experiment}: {title}")
        ax.grid(axis="y", alpha=0.3)
    return save_figures(figs, out_dir)


def save_figures(figs: dict, out_dir: Path) -> list[Path]:
    """Write each matplotlib figure of ``{stem: Figure}`` as ``<stem>.png`` (to look at) and ``<stem>.svg``
    (vector, for a paper); returns the PNG paths."""
    for stem, fig in figs.items():
        for ext in ("png", "svg"):
            atomic_write(out_dir / f"{stem}.{ext}", lambda f, fig=fig, ext=ext: fig.savefig(f, format=ext, dpi=110))
    return [out_dir / f"{stem}.png" for stem in figs]


def log_wandb(report: Report, out_dir: Path, plots: list[Path]) -> Optional[Path]:
    """A separate W&B run of the group (``job_type=report``): the summary, comparison and problem tables
    as ``wandb.Table`` plus the plots as images.  Project, entity, group and mode come from the runs'
    ``logger.wandb.*``; the mode otherwise from ``$WANDB_MODE``, else online iff credentials exist.
    The run id is ``summary-`` + 12 hex digits of sha256(project, group): every report of a group
    resumes one run.  Returns the run's local folder."""
    import wandb

    from glubench.core.secrets import redact, redacted_argv, wandb_mode

    flat = report.runs[0].flat if report.runs else {}
    mode = wandb_mode(flat.get("logger.wandb.mode"))
    project = flat.get("logger.wandb.project") or "glubench"
    group = flat.get("logger.wandb.group") or flat.get("experiment_name") or "glubench"
    with redacted_argv():  # W&B records the command line, which may hold a secret override
        run = wandb.init(project=project, entity=flat.get("logger.wandb.entity"), group=group, mode=mode,
                         id="summary-" + sha256_text(str(project), str(group))[:12], resume="allow",
                         name=f"summary-{group}", job_type="report", dir=str(out_dir), reinit="finish_previous")
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
    for label, rows, _ in report.ladder:  # the compute-multiplier table of each series
        data[f"ladder/{label or 'multipliers'}"] = wandb.Table(
            columns=list(ladder.LADDER_COLUMNS), data=[[str(r[c]) for c in ladder.LADDER_COLUMNS] for r in rows])
    data.update({f"plots/{p.stem}": wandb.Image(str(p)) for p in plots})
    run.log(data)
    if report.groups:
        run.summary.update({"best": report.groups[0].label, "best_val_loss": report.groups[0].loss_mean,
                            "n_not_completed": len(report.problems), "n_not_started": len(report.not_started)})
    folder = Path(run.dir).parent
    run.finish(exit_code=report.exit_code)
    return folder


def report_sweep(paths: list[Path], out_dir: Optional[Path] = None, plots: bool = True,
                 wandb_choice: str = "auto", tuned: tuple[str, ...] = ()) -> Report:
    """Build the report for ``paths`` and write results.csv, summary.md, the plots and a W&B summary run
    (``wandb_choice``: ``on``, ``off`` or ``auto``: iff the runs logged to W&B) into ``out_dir`` (default:
    the single PATH).

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
    report.ladder = ladder.tables(report) if ladder.is_ladder(report) else []
    if report.ladder and plots:
        written += ladder.write_plots(report, out_dir, report.ladder)
    ladder_md = ladder.markdown(report, report.ladder) if report.ladder else ""
    atomic_write_text(out_dir / "summary.md", summary_markdown(report, [p.name for p in written], ladder_md))
    runs_logged = any(k.startswith("logger.wandb.") for r in report.runs for k in r.flat)
    if wandb_choice == "on" or (wandb_choice == "auto" and runs_logged):
        try:
            log_wandb(report, out_dir, written)
        except Exception as e:  # noqa: BLE001 - the files above are the report; W&B is a copy
            log.warning(f"glubench-report: warning: W&B summary run not logged ({type(e).__name__}: {e})")
    return report


def main(argv: Optional[list[str]] = None) -> int:
    """``glubench-report PATH... [--out DIR] [--tuned KEY]... [--no-plots] [--wandb auto|on|off]``; returns
    the exit status: 1 when any run failed, was interrupted or left no results.json (a job that never
    started is listed, not a failure), 2 on bad arguments, else 0."""
    from glubench.core.logging import configure

    configure()
    parser = argparse.ArgumentParser(prog="glubench-report", description=(
        "Aggregate glubench runs: results.csv, summary.md (table + Welch t CIs vs relu), PNG plots and a W&B "
        "summary run.  Exit 1 if any run failed."))
    parser.add_argument("paths", nargs="+", type=Path, help="sweep folders (searched recursively) or results.json")
    parser.add_argument("--out", type=Path, default=None, help="where to write (default: the single PATH)")
    parser.add_argument("--tuned", action="append", default=[], metavar="KEY",
                        help="a config key tuned per variant (e.g. optim.lr): shown per variant, not grouped by")
    parser.add_argument("--no-plots", action="store_true", help="skip the PNG plots")
    parser.add_argument("--wandb", choices=("auto", "on", "off"), default="auto",
                        help="W&B summary run: auto = only if the runs logged to W&B (default)")
    args = parser.parse_args(argv)
    try:
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
