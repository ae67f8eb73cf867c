"""The compute ladder in a report: runs of several sizes or budgets, fitted per variant against training FLOPs.

A *series* is one setting apart from the model size: the variant's block (``model.norm``, ``model.pos``),
corpus, tokenizer, init and every other swept key that does not grow with the size (:data:`SIZE_KEYS`).
Within a series each variant's runs (all sizes, all seeds) are fitted by :mod:`glubench.sweep.fits` and
compared with ``relu``'s: the compute multiplier at relu's loss at its largest budget, its bootstrap
interval, the crossover if the curves cross.  Series never mix: a Llama-style and a GPT-2-style block
are two fits.  Figures: val loss against training FLOPs (with the fits), non-embedding parameters and
training seconds, and the multipliers with their intervals; each as PNG and SVG.
"""

from __future__ import annotations

from pathlib import Path

from glubench.sweep.fits import BASELINE, LADDER_COLUMNS, LadderRun, fit_runs, ladder_table

SIZE_KEYS = ("model.d_model", "model.n_layers", "model.n_heads", "model.d_ff", "model.seq_len", "ladder.size",
             "optim.lr", "optim.warmup_steps", "trainer.max_steps", "budget.value", "data.batch_size")
"""Config keys that change with the rung of a ladder, not with the setting being compared."""
PLOTS = ("val_loss_vs_flops", "val_loss_vs_params", "val_loss_vs_seconds", "compute_multiplier")


def series(report) -> dict[str, dict[str, list]]:
    """``{series label: {variant: [completed Run]}}`` over the report's groups (label ``""`` when only the
    variant and sizes are swept)."""
    out: dict[str, dict[str, list]] = {}
    for g in report.groups:
        label = " ".join(f"{k.split('.')[-1]}={v}" for k, v in g.others.items() if k not in SIZE_KEYS)
        out.setdefault(label, {}).setdefault(g.ffn, []).extend(g.runs)
    return out


def setting(runs: list) -> str:
    """What a series holds fixed, for a figure's title: block, corpus and tokenizer of its first run
    (e.g. ``GPT-2-style block, pydocs, bpe 2048``); ``""`` when the runs carry no config."""
    c = runs[0].flat if runs else {}
    if not c:
        return ""
    norm, pos = c.get("model.norm", "layernorm"), c.get("model.pos", "learned")
    block = {("layernorm", "learned"): "GPT-2-style block", ("rmsnorm", "rope"): "Llama-style block"}.get(
        (norm, pos), f"{norm} + {pos} block")
    files = c.get("data.files") or []
    files = [files] if isinstance(files, str) else files
    corpus = "/".join(Path(str(files[0])).parts[-2:]) if c.get("data.name") == "text" and files else c.get("data.name")
    tok = c.get("data.tokenizer")
    tok = f"{tok} {c.get('data.vocab_size')}" if tok == "bpe" else tok
    return ", ".join(str(x) for x in (block, corpus, tok) if x)


def _where(label: str, by_variant: dict[str, list]) -> str:
    return label or setting([r for runs in by_variant.values() for r in runs])


def _ladder_runs(runs: list) -> list[LadderRun]:
    return [LadderRun(flops=r.result.budget["flops"], loss=r.result.val_loss, size=str(r.result.params_nonembedding),
                      seed=r.result.seed)
            for r in runs if (r.result.budget or {}).get("flops")]


def is_ladder(report) -> bool:
    """Whether some variant's runs span more than one size or training budget."""
    return any(len({(r.result.params_nonembedding, round((r.result.budget or {}).get("flops") or 0, -3))
                    for r in runs}) > 1
               for by_variant in series(report).values() for runs in by_variant.values())


def tables(report, n_boot: int = 1000) -> list[tuple[str, list[dict], list[str]]]:
    """Per series with a ``relu`` baseline: ``(label, rows keyed by fits.LADDER_COLUMNS, messages)``."""
    out = []
    for label, by_variant in series(report).items():
        if BASELINE in by_variant:
            rows, messages = ladder_table({v: _ladder_runs(r) for v, r in by_variant.items()}, BASELINE, n=n_boot)
            out.append((label, rows, messages))
    return out


def markdown(report, computed: list[tuple[str, list[dict], list[str]]]) -> str:
    """The ``## Compute ladder`` section of summary.md: one multiplier table per series, then the notes."""
    from glubench.sweep.report import fmt, markdown_table

    def interval(row: dict, key: str, spec: str) -> str:
        lo, hi = row[f"{key}_lo"], row[f"{key}_hi"]
        return fmt(row[key], spec) + (f" [{fmt(lo, spec)}, {fmt(hi, spec)}]" if lo is not None else "")

    parts = ["## Compute ladder: compute-equivalent gain over relu"]
    header = ["variant", "fit", "α", "E", "compute multiplier [95% CI]", "crossover (FLOPs) [95% CI]", "RMSE (nats)",
              "sizes", "runs", "seed spread (nats)"]
    for label, rows, messages in computed:
        body = []
        for r in rows:
            m, c = interval(r, "multiplier", ".3f"), interval(r, "crossover", ".2e")
            c += " (extrapolated)" if r["extrapolated"] else ""
            body.append([r["variant"], str(r["form"]), fmt(r["alpha"], ".4f"), fmt(r["E"], ".3f"), m, c,
                         fmt(r["rmse"], ".4f"), str(r["n_sizes"]), str(r["n_runs"]), fmt(r["seed_spread"], ".4f")])
        parts += [f"### {label or report.experiment}", markdown_table(header, body)]
        parts += [f"- {m}" for m in messages]
    parts.append(
        "Each variant's final val loss L (nats/token) is fitted against its training FLOPs C with "
        "L = E + A·C^−α (Kaplan et al. 2020; Hoffmann et al. 2022), or the pure power law (E = 0, `log-linear`) when "
        "the ladder cannot pin E down.  Compute multiplier = C_relu(L*) / C_variant(L*) at L* = relu's fitted loss "
        "at its largest budget: > 1 means the variant reaches that loss with less compute.  Intervals: 95% "
        "percentile bootstrap over the seeds of each size (approximate with 3 seeds: resampling 3 runs "
        "understates the spread).  A crossover is where the two fitted curves meet; outside the runs' compute "
        "range it is an extrapolation, not a measurement.  Seed spread: the mean over sizes of the standard "
        "deviation across seeds, to read each gap against.")
    return "\n\n".join(parts)


def write_plots(report, out_dir: Path, computed) -> list[Path]:
    """The four ladder figures (:data:`PLOTS`), each as PNG and SVG; returns the PNG paths."""
    from matplotlib.figure import Figure  # no pyplot: no global state, no display needed
    from matplotlib.ticker import FormatStrFormatter

    from glubench.sweep.report import save_figures

    by_series = series(report)
    variants = sorted({v for s in by_series.values() for v in s})
    colors = {v: f"C{i % 10}" for i, v in enumerate(variants)}
    axes_for = [("val_loss_vs_flops", "training compute (FLOPs, analytic 6N + 12LdT per token)",
                 lambda r: r.result.budget.get("flops")),
                ("val_loss_vs_params", "non-embedding parameters", lambda r: r.result.params_nonembedding),
                ("val_loss_vs_seconds", "training wall-clock time (s, validation excluded)",
                 lambda r: r.result.budget.get("seconds"))]
    # The lines are the fits of the multiplier table (its forms: all log-linear when the forms differ).
    fitted = {label: {r["variant"]: r["fit"] for r in rows} for label, rows, _ in computed}
    figs = {}
    for name, xlabel, x_of in axes_for:
        fig = Figure(figsize=(6.5 * len(by_series), 4.8), layout="constrained")
        for i, (label, by_variant) in enumerate(by_series.items()):
            ax = fig.add_subplot(1, len(by_series), i + 1)
            for v, runs in sorted(by_variant.items()):
                pts = [(x, r.result.val_loss) for r in runs if (x := x_of(r))]
                ax.scatter(*zip(*pts), s=12, color=colors[v], alpha=0.7, label=v)
                fit = None
                if name == "val_loss_vs_flops":
                    fit = fitted.get(label, {}).get(v) or fit_runs(_ladder_runs(runs))  # no relu: no table
                if fit is not None and fit.converged:
                    cs = [fit.c_min * (fit.c_max / fit.c_min) ** (k / 49) for k in range(50)]
                    ax.plot(cs, [fit.loss(c) for c in cs], color=colors[v], linewidth=1)
            where = _where(label, by_variant)
            ax.set(xscale="log", xlabel=xlabel, ylabel="final validation loss (nats/token)",
                   title=f"{report.experiment}: {where}" if where else report.experiment)
            ax.grid(alpha=0.3, which="both")
            ax.legend(fontsize=7, title="seeds as points" + (", fits as lines" if name == "val_loss_vs_flops" else ""),
                      title_fontsize=7)
        figs[name] = fig
    fig = Figure(figsize=(6.5 * max(1, len(computed)), 4.2), layout="constrained")
    for i, (label, rows, _) in enumerate(computed):
        ax = fig.add_subplot(1, max(1, len(computed)), i + 1)
        shown = [r for r in rows if isinstance(r["multiplier"], float) and r["variant"] != BASELINE]
        for k, r in enumerate(shown):
            lo, hi = r["multiplier_lo"], r["multiplier_hi"]
            err = [[r["multiplier"] - lo], [hi - r["multiplier"]]] if lo is not None else None
            ax.errorbar([k], [r["multiplier"]], yerr=err, fmt="o", color=colors.get(r["variant"], "k"), capsize=4)
        ax.axhline(1.0, color="k", linewidth=0.8, linestyle="--")
        ax.set_xticks(range(len(shown)), [r["variant"] for r in shown], rotation=30, ha="right")
        ax.set(yscale="log", ylabel="compute multiplier vs relu (×; > 1: needs less compute)",
               title=f"{_where(label, by_series[label]) or report.experiment}:\n"
                     "at relu's loss at its largest budget (95% CI)")
        # Ratios near 1: a log axis (×2 and ÷2 look alike) with plain-number ticks where the data is.
        lo, hi = ax.get_ylim()
        ax.set_yticks([t for t in (0.25, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0, 1.1, 1.2, 1.3, 1.4, 1.5, 1.6, 1.8, 2.0, 2.5,
                                   3.0, 4.0, 5.0, 7.0, 10.0) if lo <= t <= hi], minor=False)
        ax.yaxis.set_major_formatter(FormatStrFormatter("%.2g"))
        ax.yaxis.set_minor_formatter(FormatStrFormatter(""))
        ax.set_ylim(lo, hi)
        ax.grid(axis="y", alpha=0.3, which="both")
    figs["compute_multiplier"] = fig
    return save_figures(figs, out_dir)


__all__ = ["LADDER_COLUMNS", "PLOTS", "SIZE_KEYS", "is_ladder", "markdown", "series", "setting", "tables",
           "write_plots"]
