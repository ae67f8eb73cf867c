"""Aggregate a sweep: ``results.json`` files -> results.csv, summary.md, statistics, plots, W&B summary.

Hydra-free: it reads the files any glubench run writes (:class:`glubench.train.results.RunResult`), so
it works on any folder of runs, during or after a sweep.  ``glubench-report PATH...`` is the
command line; :class:`glubench.sweep.callbacks.SweepReport` calls :func:`report_sweep` at the end of a
multirun.

Runs are grouped by every config key whose value differs between runs, except the seed (and
``model.ffn`` is always a grouping key), so seeds are replicates and any other swept key (a
learning rate, a width) gets its own rows.  Each variant is compared with the ``relu`` group
that has the same values of the other keys: the difference of mean final validation loss with
a Welch t 95% confidence interval (Welch 1947; Satterthwaite degrees of freedom).
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import logging
import math
import sys
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Optional

from glubench.core.io import atomic_write, atomic_write_text, sha256_text
from glubench.train.results import RESULTS_FILE, RunResult

log = logging.getLogger(__name__)

BASELINE = "relu"
VARIANT_KEY = "model.ffn"
REPLICATE_KEYS = ("seed",)  # differ between replicates; never a grouping key
JOB_ERRORS = ("failed", "interrupted", "missing")  # the job itself broke: the exit status is 1
NOT_STARTED = "not_started"  # a job folder whose job never began (a rejected config): listed, not a failure
CONFIDENCE = 0.95
PLOTS = ("val_loss_curves.png", "val_loss_bar.png", "tokens_per_sec.png")


@dataclass
class Run:
    """One run folder: its results and its config flattened to dotted keys (``model.ffn``)."""

    path: Path
    result: RunResult
    flat: dict[str, Any]

    @property
    def name(self) -> str:
        return self.path.name


@dataclass
class Welch:
    """Difference of means ``a - b`` with a Welch t confidence interval.

    ``low``/``high`` bound the ``confidence`` interval; ``p`` is the two-sided p-value of
    "no difference".  When either side has fewer than two values (no variance estimate) the
    interval cannot be computed: every field except ``diff`` is ``None`` and ``note`` says why.
    """

    diff: float
    low: Optional[float] = None
    high: Optional[float] = None
    p: Optional[float] = None
    df: Optional[float] = None
    note: str = ""

    @property
    def significant(self) -> Optional[bool]:
        """``True`` when the interval excludes 0, ``None`` when it could not be computed."""
        if self.low is None or self.high is None:
            return None
        return self.low > 0 or self.high < 0


def welch(a: list[float], b: list[float], confidence: float = CONFIDENCE) -> Welch:
    """Welch's unequal-variance t interval for ``mean(a) - mean(b)`` (values in any one unit, e.g. nats/token).

    Computed by :func:`scipy.stats.ttest_ind` with ``equal_var=False``: standard error
    ``se = sqrt(s_a²/n_a + s_b²/n_b)`` (sample variances, ddof=1), Welch–Satterthwaite degrees
    of freedom ``df = se⁴ / ((s_a²/n_a)²/(n_a-1) + (s_b²/n_b)²/(n_b-1))`` and the interval
    ``diff ± t_{df, (1+confidence)/2} · se`` (Welch 1947, Biometrika 34;
    Satterthwaite 1946, Biometrics Bulletin 2).  ``p`` is the two-sided p-value.

    Raises:
        ValueError: if ``a`` or ``b`` is empty.
    """
    if not a or not b:
        raise ValueError(f"welch: both samples need values (got n={len(a)} and n={len(b)})")
    diff = _mean(a) - _mean(b)
    if len(a) < 2 or len(b) < 2:
        return Welch(diff, note=f"n/a: needs >= 2 seeds on both sides (n={len(a)} vs {len(b)})")
    # Tested on the values, not on a computed variance, which rounding can leave a hair above 0.
    const_a, const_b = len(set(a)) == 1, len(set(b)) == 1
    if const_a and const_b:  # se = 0: scipy would give t = ±inf and a zero-width interval
        return Welch(diff, note="n/a: zero variance on both sides")
    import warnings

    from scipy import stats  # not at module level: scipy takes a while to import

    with warnings.catch_warnings():
        if const_a or const_b:
            # scipy warns of "catastrophic cancellation" for a constant sample; its variance is
            # exactly 0 here, so the warning would only be noise.
            warnings.filterwarnings("ignore", message="Precision loss occurred", category=RuntimeWarning)
        res = stats.ttest_ind(a, b, equal_var=False)
    ci = res.confidence_interval(confidence_level=confidence)
    return Welch(diff, float(ci.low), float(ci.high), float(res.pvalue), float(res.df))


def _mean(xs: list[float]) -> float:
    return sum(xs) / len(xs)


def _var(xs: list[float]) -> float:
    m = _mean(xs)
    return sum((x - m) ** 2 for x in xs) / (len(xs) - 1)


def _std(xs: list[float]) -> Optional[float]:
    return math.sqrt(_var(xs)) if len(xs) > 1 else None


def _finite(xs) -> list[float]:
    return [float(x) for x in xs if x is not None and math.isfinite(x)]


@dataclass
class Group:
    """Runs that share every swept value except the seed.

    ``values`` maps each grouping key to this group's value; ``runs`` are its completed runs.
    Aggregates are over those runs: ``loss_mean``/``loss_std`` (nats per token; sample std),
    ``ppl`` = exp(``loss_mean``), ``bpb`` mean (bits per byte), ``tokens_per_sec`` and ``mfu``
    means (``None`` where no run measured them).
    """

    values: dict[str, Any]
    runs: list[Run]
    params_vs_baseline: Optional[float] = None  # FFN params relative to the matching relu group
    vs_baseline: Optional[Welch] = None
    best: bool = False

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
    def losses(self) -> list[float]:
        return [r.result.val_loss for r in self.runs]

    @property
    def loss_mean(self) -> float:
        return _mean(self.losses)

    @property
    def loss_std(self) -> Optional[float]:
        return _std(self.losses)

    @property
    def ppl(self) -> float:
        return math.exp(self.loss_mean) if self.loss_mean < 700 else math.inf

    def mean_of(self, name: str) -> Optional[float]:
        xs = _finite(getattr(r.result, name) for r in self.runs)
        return _mean(xs) if xs else None

    def std_of(self, name: str) -> Optional[float]:
        xs = _finite(getattr(r.result, name) for r in self.runs)
        return _std(xs) if xs else None

    @property
    def seeds(self) -> list[int]:
        return sorted(r.result.seed for r in self.runs)

    def budget_mean(self, name: str) -> Optional[float]:
        """Mean over runs of a realised budget quantity (``tokens``, ``flops``, ``seconds``), or ``None``."""
        xs = _finite((r.result.budget or {}).get(name) for r in self.runs)
        return _mean(xs) if xs else None

    def values_of(self, key: str) -> str:
        """The distinct values of a config key over this group's runs (a tuned key: one per variant)."""
        vals = sorted({r.flat.get(key) for r in self.runs}, key=str)
        return ", ".join(f"{v:.3g}" if isinstance(v, float) else str(v) for v in vals)

    def first(self, name: str) -> Any:
        """The value of a per-variant constant (``ffn_hidden``, ``params_ffn``) from the first run."""
        return next((getattr(r.result, name) for r in self.runs if getattr(r.result, name) is not None), None)


@dataclass
class Report:
    """A whole sweep: groups of completed runs (sorted by mean val loss) and the runs that did not complete.

    ``problems`` holds runs whose status is not ``completed`` (``failed``, ``interrupted``,
    ``diverged``) and job folders with no ``results.json`` whose job log has content (status
    ``missing``: killed).  ``not_started`` holds job folders with no ``results.json`` and no job
    log with content (status ``not_started``: the job never began, e.g. a rejected config);
    they are listed but are not failures.
    """

    keys: list[str]
    groups: list[Group]
    problems: list[Run]
    runs: list[Run] = field(default_factory=list)
    paths: list[Path] = field(default_factory=list)
    tuned: list[str] = field(default_factory=list)  # keys tuned per variant: shown, not grouped by
    not_started: list[Run] = field(default_factory=list)

    @property
    def exit_code(self) -> int:
        """1 when any job failed, was interrupted or left no results; else 0 (a divergence is a result)."""
        return 1 if any(r.result.status in JOB_ERRORS for r in self.problems) else 0

    @property
    def experiment(self) -> str:
        names = sorted({str(r.flat.get("experiment_name", "?")) for r in self.runs})
        return ", ".join(names) or "?"


def flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"model": {"ffn": "relu"}}`` -> ``{"model.ffn": "relu"}`` (lists are kept as values)."""
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(flatten(v, key + "."))
        else:
            out[key] = v
    return out


def _job_started(job_dir: Path) -> bool:
    """Whether the job in a Hydra job folder began: a job log (``<job name>.log``) with content.

    Hydra writes ``.hydra/config.yaml`` before the job runs and its job log as the job runs; a
    folder with no log, or only empty ones, is a job that never began.
    """
    return any(p.is_file() and p.stat().st_size > 0 for p in job_dir.glob("*.log"))


def _missing_run(job_dir: Path) -> Run:
    """A job folder Hydra created whose ``results.json`` never appeared: status ``missing`` when the
    job began (killed, out of memory), ``not_started`` when it never did (see :func:`_job_started`)."""
    from omegaconf import OmegaConf

    cfg: dict[str, Any] = {}
    try:
        cfg = OmegaConf.to_container(OmegaConf.load(job_dir / ".hydra" / "config.yaml"), resolve=False)
    except Exception:  # noqa: BLE001 - a corrupt config still leaves a row that names the folder
        pass
    model = cfg.get("model") if isinstance(cfg.get("model"), dict) else {}
    if _job_started(job_dir):
        status, error = "missing", f"no {RESULTS_FILE} in {job_dir} (killed before it could be written?)"
    else:
        status, error = NOT_STARTED, f"no {RESULTS_FILE} and no job log in {job_dir} (never started: config rejected?)"
    result = RunResult(status=status, ffn=str(model.get("ffn", "?")), seed=cfg.get("seed", -1), error=error,
                       config=cfg)
    return Run(job_dir, result, flatten(cfg))


def load_runs(paths: list[Path]) -> list[Run]:
    """Every ``results.json`` under ``paths`` (recursively), plus Hydra job folders that lack one.

    Raises:
        FileNotFoundError: a path does not exist.
    """
    runs, seen = [], set()
    for root in map(Path, paths):
        if not root.exists():
            raise FileNotFoundError(f"PATH={root} does not exist")
        files = [root] if root.is_file() else sorted(root.rglob(RESULTS_FILE))
        for f in files:
            if f.resolve() in seen:
                continue
            seen.add(f.resolve())
            result = RunResult.read(f)
            runs.append(Run(f.parent, result, flatten(result.config)))
        if root.is_dir():
            for hydra_dir in sorted(root.rglob(".hydra")):
                job = hydra_dir.parent
                if (hydra_dir / "config.yaml").exists() and not (job / RESULTS_FILE).exists() \
                        and (job / RESULTS_FILE).resolve() not in seen and job != root:
                    runs.append(_missing_run(job))
    return runs


def _hashable(v: Any) -> str:
    return json.dumps(v, sort_keys=True, default=str)


def swept_keys(runs: list[Run], ignore: tuple[str, ...] = REPLICATE_KEYS) -> list[str]:
    """Config keys whose value differs between ``runs`` (``model.ffn`` always first), minus ``ignore``."""
    keys: set[str] = set()
    for r in runs:
        keys.update(r.flat)
    differing = sorted(k for k in keys if k not in ignore and k != VARIANT_KEY
                       and len({_hashable(r.flat.get(k)) for r in runs}) > 1)
    return [VARIANT_KEY, *differing]


def _completed(r: Run) -> bool:
    return r.result.status == "completed" and r.result.val_loss is not None and math.isfinite(r.result.val_loss)


def group_runs(runs: list[Run], keys: list[str]) -> list[Group]:
    """Completed runs with a finite val loss, grouped by the values of ``keys``, best (lowest) first."""
    buckets: dict[str, Group] = {}
    for r in runs:
        if not _completed(r):
            continue
        values = {k: r.flat.get(k, r.result.ffn if k == VARIANT_KEY else None) for k in keys}
        g = buckets.setdefault(_hashable(values), Group(values, []))
        g.runs.append(r)
    groups = sorted(buckets.values(), key=lambda g: (g.loss_mean, g.label))
    if groups:
        groups[0].best = True
    for g in groups:
        base = next((b for b in groups if b.ffn == BASELINE and b.others == g.others), None)
        if base is None:
            continue
        p, pb = g.first("params_ffn"), base.first("params_ffn")
        g.params_vs_baseline = (p - pb) / pb if p is not None and pb else None
        if g is not base:
            g.vs_baseline = welch(g.losses, base.losses)
    return groups


def build_report(paths: list[Path], tuned: tuple[str, ...] = ()) -> Report:
    """Load, group and compare every run under ``paths``.

    ``tuned`` names config keys tuned separately for each variant (``optim.lr`` after a
    per-variant search): they are not grouping keys, so each variant keeps one row and is
    compared with ``relu`` at its own tuned value, and the table shows them next to the variant.

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
    left = [r for r in runs if not _in_groups(r, groups)]
    problems = [r for r in left if r.result.status != NOT_STARTED]
    not_started = [r for r in left if r.result.status == NOT_STARTED]
    return Report(keys, groups, problems, runs, [Path(p) for p in paths], list(tuned), not_started)


def _in_groups(run: Run, groups: list[Group]) -> bool:
    return any(run is x for g in groups for x in g.runs)


# ---------------------------------------------------------------------------------------------------- formatting


def _fmt(x: Optional[float], spec: str, none: str = "—") -> str:
    return none if x is None or (isinstance(x, float) and not math.isfinite(x)) else format(x, spec)


def _int(x: Optional[int]) -> str:
    return "—" if x is None else f"{x:,}"


def _dead(g: Group, key: str) -> Optional[float]:
    """Mean over the group's runs of ``diagnostics.dead_units[key]`` (``None`` when no run measured it)."""
    xs = _finite((r.result.diagnostics or {}).get("dead_units", {}).get(key) for r in g.runs)
    return _mean(xs) if xs else None


def summary_rows(report: Report) -> tuple[list[str], list[list[str]]]:
    """The Table-1-style table as (header, rows of strings), best row first and starred.

    With ``diagnostics.dead_units=true`` runs, two more columns: the dead-unit fraction (mean over
    layers) at the end of training and its maximum over training, in percent.
    """
    extra = report.keys[1:]
    header = ["", "variant", *extra, *(f"{k} (tuned)" for k in report.tuned), "FFN hidden", "FFN params",
              "params vs baseline", "val loss (mean ± std)", "val ppl", "val bpb", "n seeds", "tokens/s", "MFU",
              "budget", "train tokens", "train FLOPs", "train s"]
    dead = any(_dead(g, "dead_frac") is not None for g in report.groups)
    if dead:
        header += ["dead units (end)", "dead units (max)"]
    rows = []
    for g in report.groups:
        std = g.loss_std
        loss = f"{g.loss_mean:.4f} ± {std:.4f}" if std is not None else f"{g.loss_mean:.4f} (n=1)"
        mfu = g.mean_of("mfu")
        rows.append([
            "★" if g.best else "", g.ffn, *(str(g.values[k]) for k in extra), *(g.values_of(k) for k in report.tuned),
            _int(g.first("ffn_hidden")), _int(g.first("params_ffn")),
            _fmt(None if g.params_vs_baseline is None else 100 * g.params_vs_baseline, "+.2f") + (
                "%" if g.params_vs_baseline is not None else ""),
            loss, _fmt(g.ppl, ".3f"), _fmt(g.mean_of("val_bpb"), ".4f"), str(g.n),
            _fmt(g.mean_of("train_tokens_per_sec"), ",.0f"), _fmt(None if mfu is None else 100 * mfu, ".1f") + (
                "%" if mfu is not None else ""),
            str(g.first("budget").get("mode", "—")) if g.first("budget") else "—",
            _fmt(g.budget_mean("tokens"), ",.0f"), _fmt(g.budget_mean("flops"), ".3g"),
            _fmt(g.budget_mean("seconds"), ".1f"),
        ])
        if dead:
            rows[-1] += [_fmt(None if (d := _dead(g, k)) is None else 100 * d, ".1f") + ("%" if d is not None else "")
                         for k in ("dead_frac", "dead_frac_max")]
    return header, rows


def comparison_rows(report: Report) -> tuple[list[str], list[list[str]]]:
    """Each variant vs its ``relu`` group: Δ mean val loss, 95% CI, p, significance."""
    extra = report.keys[1:]
    header = ["variant", *extra, f"Δ val loss vs {BASELINE}", f"{int(CONFIDENCE * 100)}% CI (Welch t)", "p",
              "significant"]
    rows = []
    for g in report.groups:
        w = g.vs_baseline
        if w is None:
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
    header = ["run", "variant", "seed", "status", "error"]
    rows = [[str(r.path), r.result.ffn, str(r.result.seed), r.result.status,
             (r.result.error or ("val loss not finite" if r.result.status == "diverged" else "")).replace("|", "/")
             .replace("\n", " ")[:300]] for r in (report.problems if runs is None else runs)]
    return header, rows


def markdown_table(header: list[str], rows: list[list[str]]) -> str:
    """A GitHub-flavoured markdown table."""
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(" --- " for _ in header) + "|"]
    lines += ["| " + " | ".join(cells) + " |" for cells in rows]
    return "\n".join(lines)


def summary_markdown(report: Report, plots: list[str] = ()) -> str:
    """The whole ``summary.md``: the table, the comparison with relu, the runs that did not complete."""
    n_ok = sum(g.n for g in report.groups)
    out = io.StringIO()
    out.write(f"# glubench results: {report.experiment}\n\n")
    out.write(f"{len(report.runs)} runs under {', '.join(map(str, report.paths))}: {n_ok} completed, "
              f"{len(report.problems)} did not complete{' (listed below)' if report.problems else ''}"
              + (f", {len(report.not_started)} never started (listed below; not failures)" if report.not_started
                 else "") + ".  "
              f"Grouped by {', '.join(report.keys)}; seeds are replicates.\n\n")
    if report.groups:
        out.write(markdown_table(*summary_rows(report)) + "\n\n")
        out.write("Sorted by mean final validation loss (nats per token; ★ = lowest).  val ppl = exp(mean val "
                  "loss); val bpb = bits per UTF-8 byte; ± is the sample std over seeds; FFN params = one layer's "
                  f"FFN; params vs baseline compares with the `{BASELINE}` row; tokens/s = training throughput "
                  "(mean over seeds); MFU is blank when the device peak is unknown (CPU); budget = what was held "
                  "equal (`tokens`, `flops` or `time`), then the tokens, training FLOPs (analytic) and training "
                  "seconds (validation excluded) actually spent, mean over seeds"
                  + (f"; {', '.join(report.tuned)} (tuned) = the value each variant's own search chose"
                     if report.tuned else "") + ".\n\n")
    cmp_header, cmp = comparison_rows(report)
    if cmp:
        k = len(cmp)
        out.write(f"## Difference from {BASELINE}\n\n" + markdown_table(cmp_header, cmp) + "\n\n")
        out.write(f"Δ = mean val loss of the variant minus that of `{BASELINE}` (negative = better).  "
                  f"{int(CONFIDENCE * 100)}% confidence interval of Welch's unequal-variance t test over seeds; "
                  f"significant means the interval excludes 0 ({k} comparisons, not corrected for multiplicity).  "
                  "With fewer than 2 seeds per variant there is no variance estimate, so no interval.\n\n")
    elif report.groups:
        out.write(f"No comparison with `{BASELINE}`: no completed `{BASELINE}` run with the same settings.\n\n")
    if report.problems:
        out.write("## Runs that did not complete\n\n" + markdown_table(*problem_rows(report)) + "\n\n")
    if report.not_started:
        out.write("## Runs that never started\n\n" + markdown_table(*problem_rows(report, report.not_started))
                  + "\n\nA job folder with its config but no job log: the job never began (e.g. its config was "
                  "rejected).  Not counted as a failure.\n\n")
    if plots:
        out.write("## Plots\n\n" + "\n".join(f"![{p}]({p})" for p in plots) + "\n")
    return out.getvalue()


def terminal_text(report: Report) -> str:
    """What the end of a sweep prints: the table, the comparison, the problems."""
    parts = [f"glubench-report: {report.experiment}"]
    if report.groups:
        parts.append(markdown_table(*summary_rows(report)))
    cmp = comparison_rows(report)
    if cmp[1]:
        parts.append(markdown_table(*cmp))
    if report.problems:
        parts.append(f"{len(report.problems)} run(s) did not complete:\n" + markdown_table(*problem_rows(report)))
    if report.not_started:
        parts.append(f"{len(report.not_started)} run(s) never started (not failures):\n"
                     + markdown_table(*problem_rows(report, report.not_started)))
    return "\n\n".join(parts)


# ---------------------------------------------------------------------------------------------------- files


def write_csv(report: Report, path: Path) -> None:
    """One row per run (completed or not): every results.json field, ``config.*`` flattened, ``history`` as JSON."""
    skip = ("config", "versions", "history", "budget", "diagnostics")
    names = [f.name for f in fields(RunResult) if f.name not in skip]
    rows, config_keys, version_keys, budget_keys = [], set(), set(), {}
    for r in report.runs:
        d = asdict(r.result)
        config_keys.update(r.flat)
        version_keys.update(d["versions"])
        budget_keys.update(dict.fromkeys(d.get("budget") or {}))
        rows.append((r, d))
    header = ["run_dir", *names, *(f"budget.{k}" for k in budget_keys),
              *sorted(f"versions.{k}" for k in version_keys), "history",
              *sorted(f"config.{k}" for k in config_keys)]
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(header)
    for r, d in rows:
        cells = {"run_dir": str(r.path), **{n: d[n] for n in names}, "history": json.dumps(d["history"]),
                 **{f"budget.{k}": v for k, v in (d.get("budget") or {}).items()},
                 **{f"versions.{k}": v for k, v in d["versions"].items()},
                 **{f"config.{k}": (json.dumps(v) if isinstance(v, (list, dict)) else v) for k, v in r.flat.items()}}
        w.writerow(["" if cells.get(h) is None else cells[h] for h in header])
    atomic_write_text(path, buf.getvalue())


def _curves(g: Group) -> tuple[list[float], list[float], list[float], list[float]]:
    """Mean, min and max val loss over seeds at each ``tokens_seen`` that a run recorded."""
    at: dict[int, list[float]] = {}
    for r in g.runs:
        for h in r.result.history:
            if h.get("val_loss") is not None and math.isfinite(h["val_loss"]):
                at.setdefault(int(h["tokens_seen"]), []).append(float(h["val_loss"]))
    xs = sorted(at)
    return xs, [_mean(at[x]) for x in xs], [min(at[x]) for x in xs], [max(at[x]) for x in xs]


def write_plots(report: Report, out_dir: Path) -> list[Path]:
    """Three PNGs: val loss vs tokens seen (mean over seeds, min–max shaded), final val loss bars
    (± sample std), training tokens/s bars (± sample std).  Returns the paths written."""
    from matplotlib.figure import Figure  # no pyplot: no global state, no display needed

    groups = report.groups
    if not groups:
        return []
    written = []
    colors = {g.label: f"C{i % 10}" for i, g in enumerate(sorted(groups, key=lambda g: g.label))}

    fig = Figure(figsize=(8, 5), layout="constrained")
    ax = fig.add_subplot()
    for g in groups:
        xs, mean, lo, hi = _curves(g)
        if not xs:
            continue
        c = colors[g.label]
        ax.plot(xs, mean, marker="o", ms=3, color=c, label=f"{g.label} (n={g.n})")
        if g.n > 1:
            ax.fill_between(xs, lo, hi, color=c, alpha=0.2, linewidth=0)
    ax.set_xlabel("tokens seen")
    ax.set_ylabel("validation loss (nats/token)")
    ax.set_title(f"{report.experiment}: validation loss (mean over seeds; shaded: min–max)")
    ax.grid(alpha=0.3)
    if ax.lines:  # no run recorded a validation history: an empty plot, without an empty legend
        ax.legend(fontsize=8)
    written.append(_save(fig, out_dir / PLOTS[0]))

    for name, attr, ylabel, title in (
        (PLOTS[1], "val_loss", "final validation loss (nats/token)", "final validation loss (± std over seeds)"),
        (PLOTS[2], "train_tokens_per_sec", "training tokens/s", "training throughput (± std over seeds)"),
    ):
        shown = [g for g in groups if g.mean_of(attr) is not None]
        if not shown:
            continue
        fig = Figure(figsize=(max(6, 0.9 * len(shown) + 2), 4.5), layout="constrained")
        ax = fig.add_subplot()
        means = [g.mean_of(attr) for g in shown]
        errs = [g.std_of(attr) or 0.0 for g in shown]
        ax.bar(range(len(shown)), means, yerr=errs, capsize=4, color=[colors[g.label] for g in shown])
        ax.set_xticks(range(len(shown)), [g.label for g in shown], rotation=30, ha="right")
        if attr == "val_loss":  # bars from 0 would hide differences of a few hundredths
            lo = min(m - e for m, e in zip(means, errs))
            hi = max(m + e for m, e in zip(means, errs))
            pad = 0.15 * (hi - lo) + 1e-3
            ax.set_ylim(lo - pad, hi + pad)
        ax.set_ylabel(ylabel)
        ax.set_title(f"{report.experiment}: {title}")
        ax.grid(axis="y", alpha=0.3)
        written.append(_save(fig, out_dir / name))
    return written


def _save(fig, path: Path) -> Path:
    atomic_write(path, lambda f: fig.savefig(f, format="png", dpi=110))
    return path


def _wandb_settings(report: Report) -> dict[str, Any]:
    """project/entity/group/mode for the summary run, from the runs' own ``logger.wandb.*`` config."""
    import os

    from glubench.core.secrets import credentials_present

    flat = report.runs[0].flat if report.runs else {}
    mode = flat.get("logger.wandb.mode") or os.environ.get("WANDB_MODE")
    if not mode:
        mode = "online" if credentials_present() else "offline"
    project = flat.get("logger.wandb.project") or "glubench"
    group = flat.get("logger.wandb.group") or flat.get("experiment_name") or "glubench"
    return {"project": project, "entity": flat.get("logger.wandb.entity"), "group": group, "mode": mode,
            "id": summary_run_id(project, group)}


def summary_run_id(project: str, group: str) -> str:
    """The W&B run id of a group's summary run: ``summary-`` + 12 hex digits of sha256(project, group).

    Deterministic, so every report of the same group resumes one run instead of adding one; hex
    digits and ``-`` are within W&B's allowed run-id characters whatever the group is called.
    """
    return "summary-" + sha256_text(str(project), str(group))[:12]


def log_wandb(report: Report, out_dir: Path, plots: list[Path]) -> Optional[Path]:
    """A separate W&B run of the group (``job_type=report``): the summary and comparison tables as
    ``wandb.Table`` plus the plots as images.  Offline unless credentials exist (or
    ``logger.wandb.mode`` / ``$WANDB_MODE`` say otherwise).  Every report of the same project and group
    logs to the same run (id :func:`summary_run_id`, resumed if it exists).  Returns the run's
    local folder."""
    import wandb

    from glubench.core.secrets import redact, redacted_argv

    s = _wandb_settings(report)
    with redacted_argv():  # W&B records the command line, which may hold a secret override
        run = wandb.init(project=s["project"], entity=s["entity"], group=s["group"], id=s["id"], resume="allow",
                         name=f"summary-{s['group']}", job_type="report", dir=str(out_dir), mode=s["mode"],
                         reinit="finish_previous")
    # A later report may cover other paths: update rather than pass config= (a resumed run's
    # config keys may not change value otherwise).
    run.config.update(redact({"grouped_by": report.keys, "paths": [str(p) for p in report.paths]}),
                      allow_val_change=True)
    header, rows = summary_rows(report)
    data: dict[str, Any] = {"summary/table": wandb.Table(columns=["best", *header[1:]], data=rows)}
    cmp_header, cmp = comparison_rows(report)
    if cmp:
        data["summary/vs_baseline"] = wandb.Table(columns=cmp_header, data=cmp)
    if report.problems:
        data["summary/not_completed"] = wandb.Table(*reversed(problem_rows(report)))
    if report.not_started:
        data["summary/not_started"] = wandb.Table(*reversed(problem_rows(report, report.not_started)))
    for p in plots:
        data[f"plots/{p.stem}"] = wandb.Image(str(p))
    run.log(data)
    if report.groups:
        run.summary.update({"best": report.groups[0].label, "best_val_loss": report.groups[0].loss_mean,
                            "n_not_completed": len(report.problems), "n_not_started": len(report.not_started)})
    folder = Path(run.dir).parent
    run.finish(exit_code=report.exit_code)
    return folder


def use_wandb(report: Report, choice: str) -> bool:
    """``on``/``off``, or ``auto``: on iff the runs themselves logged to W&B (``logger.wandb``)."""
    if choice in ("on", "off"):
        return choice == "on"
    return any(k.startswith("logger.wandb.") for r in report.runs for k in r.flat)


def report_sweep(paths: list[Path], out_dir: Optional[Path] = None, plots: bool = True,
                 wandb_choice: str = "auto", tuned: tuple[str, ...] = ()) -> Report:
    """Build the report for ``paths`` and write results.csv, summary.md, the plots and (optionally)
    a W&B summary run into ``out_dir`` (default: the single PATH).

    Raises:
        FileNotFoundError: a path does not exist.
        ValueError: nothing to report, or several paths and no ``out_dir``.
    """
    paths = [Path(p) for p in paths]
    for p in paths:
        if not p.exists():
            raise FileNotFoundError(f"PATH={p} does not exist")
    if out_dir is None:
        if len(paths) != 1 or not paths[0].is_dir():
            raise ValueError("--out DIR is required unless exactly one sweep folder is given")
        out_dir = paths[0]
    report = build_report(paths, tuned)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    write_csv(report, out_dir / "results.csv")
    written = write_plots(report, out_dir) if plots else []
    atomic_write_text(out_dir / "summary.md", summary_markdown(report, [p.name for p in written]))
    if use_wandb(report, wandb_choice):
        try:
            log_wandb(report, out_dir, written)
        except Exception as e:  # noqa: BLE001 - the files above are the report; W&B is a copy
            log.warning(f"glubench-report: warning: W&B summary run not logged ({type(e).__name__}: {e})")
    return report


def main(argv: Optional[list[str]] = None) -> int:
    """``glubench-report PATH... [--out DIR] [--tuned KEY]... [--no-plots] [--wandb auto|on|off]``.

    Exit status: 0, or 1 when any run failed, was interrupted or left no results.json (they are
    listed in the report; a job that never started is listed but is not a failure), or 2 on bad
    arguments.
    """
    from glubench.core.logging import configure

    configure()
    parser = argparse.ArgumentParser(
        prog="glubench-report",
        description="Aggregate glubench runs: results.csv, summary.md (table + Welch t CIs vs relu), PNG plots "
                    "and a W&B summary run.  Exit 1 if any run failed.")
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
    print(f"glubench-report: wrote results.csv, summary.md and plots to {args.out or args.paths[0]}")
    return report.exit_code


def cli() -> None:
    """Console-script wrapper: exit with :func:`main`'s status."""
    sys.exit(main())


if __name__ == "__main__":
    cli()
