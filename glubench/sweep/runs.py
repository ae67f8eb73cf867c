"""The runs of a sweep: ``results.json`` files (and job folders without one) loaded, their configs
flattened, completed runs grouped by every swept key but the seed, each group compared with the ``relu``
group of the same other values (:func:`glubench.sweep.stats.welch`).  Hydra-free, torch-free."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from statistics import fmean
from typing import Any, Optional

from glubench.sweep.fits import BASELINE
from glubench.sweep.stats import Welch, throughput_problem, welch
from glubench.train.results import RESULTS_FILE, RunResult

VARIANT_KEY = "model.ffn"
REPLICATE_KEYS = ("seed",)  # differ between replicates; never a grouping key
JOB_ERRORS = ("failed", "interrupted", "missing")  # the job itself broke: the exit status is 1
NOT_STARTED = "not_started"  # a job folder whose job never began (a rejected config): listed, not a failure


@dataclass
class Run:
    """One run folder: its results and its config flattened to dotted keys (``model.ffn``)."""

    path: Path
    result: RunResult
    flat: dict[str, Any]



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

    @property
    def throughput_problem(self) -> Optional[str]:
        """Why this group's tokens/s is not comparable with other groups' (``None``: it is;
        :func:`glubench.sweep.stats.throughput_problem`)."""
        return throughput_problem([r.result for r in self.runs], self.finite("train_tokens_per_sec"))

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
    ladder: list = field(default_factory=list)  # glubench.sweep.ladder.SeriesResult when the runs span rungs

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
    from omegaconf import OmegaConf  # the report stays free of the config stack: only for a run without results.json

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
