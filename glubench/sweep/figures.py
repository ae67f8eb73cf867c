"""The report's figures at one size: validation loss curves, final validation loss per group (a dot plot:
every seed, the mean and its 95% interval) and training throughput; each as PNG and SVG."""

from __future__ import annotations

import math
from pathlib import Path
from statistics import fmean, stdev

from glubench.core.io import atomic_write
from glubench.sweep.runs import Report
from glubench.sweep.stats import CONFIDENCE

PLOTS = ("val_loss_curves", "val_loss_bar", "tokens_per_sec")
FONT = 10  # points: tick labels and legends stay readable when a figure is shrunk into a paper column


def save_figures(figs: dict, out_dir: Path) -> list[Path]:
    """Write each matplotlib figure of ``{stem: Figure}`` as ``<stem>.png`` (to look at) and ``<stem>.svg``
    (vector, for a paper); returns the PNG paths."""
    for stem, fig in figs.items():
        for ext in ("png", "svg"):
            atomic_write(out_dir / f"{stem}.{ext}", lambda f, fig=fig, ext=ext: fig.savefig(f, format=ext, dpi=110))
    return [out_dir / f"{stem}.png" for stem in figs]


def _curves(report: Report, colors: dict):
    from matplotlib.figure import Figure  # heavy: only when plots are drawn (--no-plots skips it)

    fig = Figure(figsize=(8, 5), layout="constrained")
    ax = fig.add_subplot()
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
        ax.legend(fontsize=FONT)
    return fig


def mean_interval(xs: list[float], confidence: float = CONFIDENCE) -> tuple[float, float] | None:
    """Student-t interval of the mean of ``xs`` (``None`` with fewer than 2 values)."""
    if len(xs) < 2:
        return None
    from scipy import stats  # heavy: only when plots are drawn (--no-plots skips it)

    half = float(stats.t.ppf(0.5 + confidence / 2, len(xs) - 1)) * stdev(xs) / math.sqrt(len(xs))
    return fmean(xs) - half, fmean(xs) + half


def _dots(report: Report, colors: dict):
    """Final val loss: one row per group (best at the top), every seed as a dot, the mean and its interval."""
    from matplotlib.figure import Figure  # heavy: only when plots are drawn (--no-plots skips it)

    shown = [g for g in report.groups if g.finite("val_loss")]
    fig = Figure(figsize=(7, 1.2 + 0.45 * len(shown)), layout="constrained")
    ax = fig.add_subplot()
    for k, g in enumerate(shown):
        y, xs, c = len(shown) - 1 - k, g.finite("val_loss"), colors[g.label]
        ax.scatter(xs, [y + 0.22] * len(xs), s=20, color=c, alpha=0.7, linewidths=0,  # a row above the mean
                   label="seeds" if k == 0 else None)
        ci = mean_interval(xs)
        err = [[fmean(xs) - ci[0]], [ci[1] - fmean(xs)]] if ci else None
        ax.errorbar([fmean(xs)], [y], xerr=err, fmt="D", color=c, ms=6, capsize=4, mec="k",
                    label=f"mean, {CONFIDENCE:.0%} t interval" if k == 0 else None)
    ax.set_yticks(range(len(shown)), [f"{g.label} (n={g.n})" for g in reversed(shown)], fontsize=FONT)
    ax.set_xlabel("final validation loss (nats/token)", fontsize=FONT)
    ax.set_title(f"{report.experiment}: final validation loss", fontsize=FONT + 1)
    ax.tick_params(labelsize=FONT)
    ax.grid(axis="x", alpha=0.3)
    ax.legend(fontsize=FONT - 1, loc="best")
    return fig


def _throughput(report: Report, colors: dict):
    """Training tokens/s per group (± std over seeds); groups whose throughput is not comparable are grey
    and hatched, with the reason under their name."""
    from matplotlib.figure import Figure  # heavy: only when plots are drawn (--no-plots skips it)

    shown = [g for g in report.groups if g.mean("train_tokens_per_sec") is not None]
    if not shown:
        return None
    fig = Figure(figsize=(7.5, 1.2 + 0.6 * len(shown)), layout="constrained")
    ax = fig.add_subplot()
    ys = list(range(len(shown) - 1, -1, -1))
    labels = []
    for y, g in zip(ys, shown):
        xs, why = g.finite("train_tokens_per_sec"), g.throughput_problem
        ax.barh(y, fmean(xs), xerr=stdev(xs) if len(xs) > 1 and not why else None, capsize=3,
                color="0.85" if why else colors[g.label], hatch="//" if why else None, edgecolor="0.4")
        labels.append(f"{g.label}\n(not comparable: {why})" if why else g.label)
    ax.set_xlim(left=0)
    ax.set_yticks(ys, labels, fontsize=FONT)
    ax.set_xlabel("training tokens/s (mean ± std over seeds)", fontsize=FONT)
    ax.set_title(f"{report.experiment}: training throughput", fontsize=FONT + 1)
    ax.tick_params(labelsize=FONT)
    ax.grid(axis="x", alpha=0.3)
    return fig


def write_plots(report: Report, out_dir: Path) -> list[Path]:
    """The figures of :data:`PLOTS` that have data, each as PNG and SVG; returns the PNG paths."""
    if not report.groups:
        return []
    colors = {g.label: f"C{i % 10}" for i, g in enumerate(sorted(report.groups, key=lambda g: g.label))}
    figs = {PLOTS[0]: _curves(report, colors), PLOTS[1]: _dots(report, colors), PLOTS[2]: _throughput(report, colors)}
    return save_figures({k: f for k, f in figs.items() if f is not None}, out_dir)
