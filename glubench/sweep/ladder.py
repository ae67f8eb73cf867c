"""The compute ladder of a report: runs of several sizes, grouped into series, the LR chosen per variant and
rung, fitted per variant against training compute under two conventions, written to ``ladder.json``.

A *series* is one setting apart from the model size and learning rate: the variant's block
(``model.norm``, ``model.pos``), corpus, tokenizer, init and every other swept key that does not grow with
the rung (:data:`SIZE_KEYS`) and is not the learning-rate grid (:data:`LR_KEYS`).  Series never mix: a
Llama-style and a GPT-2-style block are two fits.  Within a series, variant and rung, runs that differ in
the learning rate are *candidates*, never extra seeds: the LR with the lowest mean validation loss over
seeds wins, and the fits use the winners' **test** loss when every winner has one (the split played no
part in the choice), else their validation loss (and the report says so).  The statistics are
:mod:`glubench.sweep.ladder_stats`'s; the same :class:`Point` records come from ``results.json`` files
(:func:`points_from_report`) or from a table of runs (:mod:`glubench.sweep.ladder_table`).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from statistics import fmean
from typing import Any, Optional

from glubench.core.io import atomic_write_json
from glubench.sweep.fits import BASELINE, SEARCH_DECADES, LadderRun
from glubench.sweep.ladder_stats import CONFIDENCE, N_DRAWS, ROW_KEYS, ladder_table

log = logging.getLogger(__name__)

SIZE_KEYS = ("model.d_model", "model.n_layers", "model.n_heads", "model.d_ff", "model.seq_len", "ladder.size",
             "optim.warmup_steps", "trainer.max_steps", "budget.value", "data.batch_size")
"""Config keys that change with the rung of a ladder, not with the setting being compared."""
LR_KEYS = ("optim.lr", "ladder.lr_scale")
"""The learning-rate grid: candidates of one rung, selected on validation loss (label: ``ladder.lr_scale``)."""
CONVENTIONS = {
    "flops": "glubench's training FLOPs (budget.flops: 6·N per token for every matmul incl. the tied head, "
             "plus attention)",
    "6ND": "Kaplan et al. 2020's 6·N·D: 6 × non-embedding parameters × training tokens",
}
"""Compute conventions: name -> what it counts.  The multiplier depends on it (the head is 33–62% of a
small rung's FLOPs)."""
JSON_FILE = "ladder.json"


@dataclass
class Point:
    """One completed run as the ladder sees it: its ``series`` label, ``variant``, ``rung`` and ``seed``;
    validation and test loss (nats/token; test ``None`` without a test split); ``compute`` per convention
    (FLOPs); the LR candidate (``lr`` label, ``lr_value`` to order the grid); non-embedding ``params``
    and training ``seconds`` for the figures; ``flat`` its config (dotted keys)."""

    series: str
    variant: str
    rung: str
    seed: int
    val_loss: float
    test_loss: Optional[float] = None
    compute: dict[str, float] = field(default_factory=dict)
    lr: Optional[str] = None
    lr_value: Optional[float] = None
    params: Optional[float] = None
    seconds: Optional[float] = None
    flat: dict[str, Any] = field(default_factory=dict)


def _lr(flat: dict) -> tuple[Optional[str], Optional[float]]:
    scale, lr = flat.get("ladder.lr_scale"), flat.get("optim.lr")
    if scale is not None:
        return f"×{float(scale):g}", float(scale)
    return (f"{float(lr):.3g}", float(lr)) if lr is not None else (None, None)


def _point(series: str, run) -> Optional[Point]:
    r, flat = run.result, run.flat
    budget = r.budget or {}
    compute = {}
    if budget.get("flops"):
        compute["flops"] = float(budget["flops"])
    tokens = budget.get("tokens") or r.tokens_seen
    if r.params_nonembedding and tokens:
        compute["6ND"] = 6.0 * r.params_nonembedding * float(tokens)
    if not compute:
        return None
    lr, lr_value = _lr(flat)
    rung = flat.get("ladder.size")
    return Point(series, r.ffn, str(rung if rung is not None else r.params_nonembedding), int(r.seed),
                 float(r.val_loss), r.test_loss, compute, lr, lr_value,
                 r.params_nonembedding, budget.get("seconds"), flat)


def series_label(values: dict[str, Any]) -> str:
    """``"norm=rmsnorm data=text"``: the swept keys of a group that are neither rung nor LR keys."""
    return " ".join(f"{k.split('.')[-1]}={v}" for k, v in values.items() if k not in SIZE_KEYS + LR_KEYS)


def points_from_report(report) -> list[Point]:
    """A :class:`Point` per completed run of ``report`` (a :class:`glubench.sweep.runs.Report`) that
    recorded its compute."""
    return [p for g in report.groups for run in g.runs if (p := _point(series_label(g.others), run)) is not None]


def is_ladder(points: list[Point]) -> bool:
    """Whether some variant of some series spans more than one rung."""
    rungs: dict[tuple[str, str], set] = {}
    for p in points:
        rungs.setdefault((p.series, p.variant), set()).add(p.rung)
    return any(len(r) > 1 for r in rungs.values())


def setting_fields(flat: dict[str, Any]) -> dict[str, Optional[str]]:
    """What a series holds fixed: ``block`` (GPT-2-style, Llama-style or norm + pos), ``corpus``,
    ``tokenizer`` (with its vocabulary size for BPE) and ``init``; ``None`` where the config has no value."""
    if not flat:
        return dict.fromkeys(("block", "corpus", "tokenizer", "init"))
    norm, pos = flat.get("model.norm", "layernorm"), flat.get("model.pos", "learned")
    block = {("layernorm", "learned"): "GPT-2-style block", ("rmsnorm", "rope"): "Llama-style block"}.get(
        (norm, pos), f"{norm} + {pos} block")
    files = flat.get("data.files") or []
    files = [files] if isinstance(files, str) else files
    corpus = ("/".join(Path(str(files[0])).parts[-2:]) if flat.get("data.name") == "text" and files
              else flat.get("data.name"))
    tok = flat.get("data.tokenizer")
    tok = f"{tok} {flat.get('data.vocab_size')}" if tok == "bpe" else tok
    return {"block": block, "corpus": corpus, "tokenizer": tok, "init": flat.get("model.init")}


def setting(runs: list) -> str:
    """What a series holds fixed, for a figure's title: block, corpus and tokenizer of its first run (a
    ``Run`` or :class:`Point` with ``flat``), e.g. ``GPT-2-style block, pydocs, bpe 2048``; ``""`` without."""
    c = runs[0].flat if runs else {}
    if not c:
        return ""
    f = setting_fields(c)
    return ", ".join(str(x) for x in (f["block"], f["corpus"], f["tokenizer"]) if x)


def select_lr(points: list[Point]) -> tuple[list[Point], list[dict]]:
    """Per (series, variant, rung): the runs of the LR with the lowest mean validation loss over seeds, and
    one record per selection that had a choice: ``series``, ``variant``, ``rung``, ``grid`` (labels in
    increasing LR), ``means`` (label -> mean val loss), ``chosen`` and ``edge`` (the winner is the
    smallest or largest LR tried: the optimum may lie outside the grid)."""
    cells: dict[tuple, dict[Optional[str], list[Point]]] = {}
    for p in points:
        cells.setdefault((p.series, p.variant, p.rung), {}).setdefault(p.lr, []).append(p)
    chosen, records = [], []
    for (series, variant, rung), by_lr in cells.items():
        means = {lr: fmean(p.val_loss for p in ps) for lr, ps in by_lr.items()}
        best = min(means, key=lambda lr: (means[lr], str(lr)))
        chosen += by_lr[best]
        if len(by_lr) > 1:
            grid = sorted(by_lr, key=lambda lr: by_lr[lr][0].lr_value or 0.0)
            records.append({"series": series, "variant": variant, "rung": rung, "grid": grid, "means": means,
                            "chosen": best, "edge": best in (grid[0], grid[-1])})
    return chosen, records


@dataclass
class SeriesResult:
    """One series under one compute convention: its ``rows`` (:func:`glubench.sweep.ladder_stats.ladder_table`),
    ``messages``, the LR ``choices`` (:func:`select_lr`), which loss was fitted (``loss_source``: ``test``
    or ``val``), the baseline's ``target_loss`` L* and the chosen ``points`` (for the figures)."""

    label: str
    convention: str
    setting: dict[str, Optional[str]]
    loss_source: str
    rows: list[dict]
    messages: list[str]
    choices: list[dict]
    points: list[Point]
    target_loss: Optional[float] = None

    def loss_of(self, p: Point) -> float:
        """The loss that went into the fit for ``p`` (nats/token)."""
        return p.test_loss if self.loss_source == "test" else p.val_loss


def _analyse_series(label: str, points: list[Point], baseline: str, n_draws: int, confidence: float,
                    extras: bool) -> list[SeriesResult]:
    chosen, choices = select_lr(points)
    source = "test" if all(p.test_loss is not None for p in chosen) else "val"
    out = []
    for conv in CONVENTIONS:
        use = [p for p in chosen if conv in p.compute]
        if len(use) < len(chosen) or not use:
            continue
        result = SeriesResult(label, conv, setting_fields(use[0].flat), source, [], [], choices, use)
        by_variant: dict[str, list[LadderRun]] = {}
        for p in use:
            by_variant.setdefault(p.variant, []).append(LadderRun(p.compute[conv], result.loss_of(p), p.rung, p.seed))
        result.rows, result.messages = ladder_table(by_variant, baseline, n_draws, confidence=confidence,
                                                    extras=extras)
        base = result.rows[0]["fit"]
        result.target_loss = float(base.loss(base.c_max)) if base.converged else None
        out.append(result)
    return out


def analyse(points: list[Point], baseline: str = BASELINE, n_draws: int = N_DRAWS, confidence: float = CONFIDENCE,
            extras: bool = True) -> list[SeriesResult]:
    """Every series with a ``baseline`` variant (sorted by label), under each compute convention all its
    chosen runs recorded (series without the baseline are skipped, with a log line)."""
    by_series: dict[str, list[Point]] = {}
    for p in points:
        by_series.setdefault(p.series, []).append(p)
    out = []
    for label, pts in sorted(by_series.items()):
        if not any(p.variant == baseline for p in pts):
            log.info(f"glubench-report: ladder series {label or '(all runs)'!r} has no {baseline} runs: not fitted")
            continue
        out += _analyse_series(label, pts, baseline, n_draws, confidence, extras)
    return out


def _variant_json(row: dict, choices: list[dict]) -> dict[str, Any]:
    d = {k: row[k] for k in ROW_KEYS if k != "variant"}
    for k in ("multiplier_ci", "dalpha_ci", "crossover_ci"):
        d[k] = list(d[k]) if d[k] is not None else None
    d["lr"] = {c["rung"]: {"chosen": c["chosen"], "grid": c["grid"], "edge": c["edge"]}
               for c in choices if c["variant"] == row["variant"]}
    d["multiplier_vs_loss"] = row.get("curve")
    return d


def _finite(x: Any) -> Any:
    """``x`` with every non-finite float (NaN, ±inf) replaced by ``None``: strict JSON has neither."""
    if isinstance(x, float):
        return x if x == x and abs(x) != float("inf") else None
    if isinstance(x, dict):
        return {k: _finite(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_finite(v) for v in x]
    return x


def to_json(results: list[SeriesResult], baseline: str = BASELINE, n_draws: int = N_DRAWS,
            confidence: float = CONFIDENCE) -> dict[str, Any]:
    """The content of ``ladder.json``: the method's constants, then per series and convention its setting,
    the fitted loss, L* and per variant the keys of :data:`glubench.sweep.ladder_stats.ROW_KEYS`."""
    return {
        "baseline": baseline, "confidence": confidence, "n_draws": n_draws, "crossover_search_decades": SEARCH_DECADES,
        "method": "rung-level residuals, paired between variants, Student-t scaled draws (glubench.sweep.ladder_stats)",
        "series": [{"label": r.label, **r.setting, "compute": r.convention,
                    "compute_definition": CONVENTIONS[r.convention], "loss": r.loss_source,
                    "target_loss": r.target_loss, "messages": r.messages,
                    "variants": {row["variant"]: _variant_json(row, r.choices) for row in r.rows}}
                   for r in results]}


def write_json(path: Path, results: list[SeriesResult], **kwargs: Any) -> Path:
    """Write :func:`to_json` atomically to ``path``; returns it."""
    atomic_write_json(Path(path), _finite(to_json(results, **kwargs)))
    return Path(path)
