"""The compute ladder's figures (:data:`PLOTS`), each as PNG and SVG: loss against training FLOPs (with the
fits), non-embedding parameters and training seconds on log–log axes with the rungs named; the multipliers
with their intervals under both compute conventions; and the multiplier m(L) across the measured losses."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.ticker import FormatStrFormatter, NullFormatter

from glubench.sweep.figures import FONT, save_figures
from glubench.sweep.ladder import BASELINE, SeriesResult
from glubench.sweep.ladder_tables import MULTIPLIER_SHOWN, by_label

PLOTS = ("val_loss_vs_flops", "val_loss_vs_params", "val_loss_vs_seconds", "compute_multiplier", "multiplier_vs_loss")
AXES = {"val_loss_vs_flops": ("training compute (FLOPs, glubench's count incl. the tied head)", "flops"),
        "val_loss_vs_params": ("non-embedding parameters", "params"),
        "val_loss_vs_seconds": ("training wall-clock time (s, validation excluded)", "seconds")}
TICKS = (0.25, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0, 1.1, 1.2, 1.3, 1.4, 1.5, 1.6, 1.8, 2.0, 2.5, 3.0, 4.0, 5.0, 7.0, 10.0)
MEDIUM_TICKS = (0.1, 0.2, 0.3, 0.5, 0.7, 1.0, 1.5, 2.0, 3.0, 5.0, 7.0, 10.0)
COARSE_TICKS = (0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0, 20.0, 50.0, 100.0)  # up to shown_range's limits


def _title(experiment: str, result: SeriesResult) -> str:
    where = ", ".join(str(v) for k, v in result.setting.items() if v and k != "init")
    where = f"{where} ({result.label})" if where and result.label else where or result.label
    return f"{experiment}: {where}" if where else experiment


def _x(p, key: str):
    return p.compute.get("flops") if key == "flops" else getattr(p, key)


def shown_range(lo: float, hi: float) -> tuple[float, float]:
    """Axis limits for multipliers: (lo, hi) cut to just beyond [1/100, 100] (ratios, no units).

    An unbounded interval (a three-parameter fit on 5 rungs) would otherwise stretch the axis over tens of
    decades and squeeze every tick into its middle; the tables print such bounds as <0.01 / >100, and the
    figure lets those bars run off its edges.
    """
    return max(lo, 0.8 / MULTIPLIER_SHOWN), min(hi, 1.25 * MULTIPLIER_SHOWN)


def _plain_log_ticks(axis, lo: float, hi: float) -> None:
    """Plain-number ticks on a log axis of ratios (×2 and ÷2 look alike; 10^0.1 does not read): the finest
    tick set that puts 3–10 ticks inside [lo, hi]; failing that, the fullest set with at most 10, or the
    coarsest set when every set has more."""
    sets = [[t for t in ticks if lo <= t <= hi] for ticks in (TICKS, MEDIUM_TICKS, COARSE_TICKS)]
    shown = next((s for s in sets if 3 <= len(s) <= 10), None)
    if shown is None:
        shown = max((s for s in sets if len(s) <= 10), key=len, default=sets[-1])
    axis.set_ticks(shown)
    axis.set_major_formatter(FormatStrFormatter("%g"))  # 100, not 1e+02
    axis.set_minor_formatter(NullFormatter())


def _plain_loss_ticks(axis, lo: float, hi: float) -> None:
    """4–10 plain-number ticks (steps of 0.1 … 1 nats) on a log loss axis that spans less than a decade."""
    step = next((s for s in (0.05, 0.1, 0.2, 0.25, 0.5, 1.0, 2.0) if (hi - lo) / s <= 10), 5.0)
    axis.set_ticks(np.arange(np.ceil(lo / step) * step, hi, step))
    axis.set_major_formatter(FormatStrFormatter("%.2f" if step < 0.1 else "%.1f" if step < 1 else "%.0f"))
    axis.set_minor_formatter(NullFormatter())


def _loss_panel(ax, experiment: str, result: SeriesResult, key: str, xlabel: str, colors: dict) -> None:
    fits = {r["variant"]: r["fit"] for r in result.rows}
    handles = []
    for v in sorted({p.variant for p in result.points}):
        pts = [(x, result.loss_of(p)) for p in result.points if p.variant == v and (x := _x(p, key))]
        if not pts:
            continue
        ax.scatter(*zip(*pts), s=16, color=colors[v], alpha=0.7, linewidths=0)
        fit = fits.get(v)
        line = key == "flops" and fit is not None and fit.converged
        if line:
            cs = np.geomspace(fit.c_min, fit.c_max, 50)
            ax.plot(cs, fit.loss(cs), color=colors[v], linewidth=1.2)
        handles.append(Line2D([], [], color=colors[v], marker="o", linestyle="-" if line else "none", label=v))
    rungs: dict[str, list[float]] = {}
    for p in result.points:
        if (x := _x(p, key)) is not None:
            rungs.setdefault(p.rung, []).append(x)
    for rung, xs in rungs.items():  # the rung's name along the top edge, at its geometric-mean x
        ax.text(float(np.exp(np.mean(np.log(xs)))), 1.0, rung, transform=ax.get_xaxis_transform(), ha="center",
                va="bottom", fontsize=FONT - 1, color="0.3")
    ax.set_xscale("log")
    ax.set_yscale("log")
    lo, hi = ax.get_ylim()
    if hi / lo < 10:
        _plain_loss_ticks(ax.yaxis, lo, hi)
        ax.set_ylim(lo, hi)
    ax.set_xlabel(xlabel, fontsize=FONT)
    ax.set_ylabel(f"final {result.loss_source} loss (nats/token, log scale)", fontsize=FONT)
    ax.set_title(_title(experiment, result), fontsize=FONT + 1, pad=16)
    ax.tick_params(labelsize=FONT - 1, which="both")
    ax.grid(alpha=0.3, which="both")
    ax.legend(handles=handles, fontsize=FONT - 1, title="seeds (points), fits (lines)" if key == "flops" else "seeds",
              title_fontsize=FONT - 1)


def _multiplier_panel(ax, experiment: str, convs: dict[str, SeriesResult], colors: dict) -> None:
    """Variants down the y axis; per variant one marker per compute convention with its interval."""
    main = convs.get("flops") or next(iter(convs.values()))
    variants = [r["variant"] for r in main.rows if r["variant"] != BASELINE]
    markers = {"flops": ("o", "glubench FLOPs"), "6ND": ("s", "6·N·D")}
    for j, (conv, res) in enumerate(convs.items()):
        rows = {r["variant"]: r for r in res.rows}
        for k, v in enumerate(variants):
            r = rows.get(v)
            if r is None or r["multiplier"] is None:
                continue
            ci = r["multiplier_ci"]
            err = [[r["multiplier"] - ci[0]], [ci[1] - r["multiplier"]]] if ci else None
            ax.errorbar([r["multiplier"]], [len(variants) - 1 - k + 0.15 * (j - 0.5)], xerr=err, capsize=3,
                        fmt=markers[conv][0], color=colors.get(v, "k"), mfc="white" if j else None,
                        label=markers[conv][1] if k == 0 else None)
    ax.axvline(1.0, color="k", linewidth=0.8, linestyle="--")
    ax.set_yticks(range(len(variants)), list(reversed(variants)), fontsize=FONT)
    ax.set_ylim(-0.6, len(variants) - 0.4)
    ax.set_xscale("log")
    lo, hi = shown_range(*ax.get_xlim())
    _plain_log_ticks(ax.xaxis, lo, hi)
    ax.set_xlim(lo, hi)
    ax.set_xlabel(f"compute multiplier vs {BASELINE} (×; > 1: needs less compute)", fontsize=FONT)
    ax.set_title(_title(experiment, main) + f"\nat {BASELINE}'s loss at its largest rung (95% intervals)",
                 fontsize=FONT + 1)
    ax.tick_params(labelsize=FONT - 1)
    ax.grid(axis="x", alpha=0.3, which="both")
    ax.legend(fontsize=FONT - 1, title="compute counted as", title_fontsize=FONT - 1)


def _curve_panel(ax, experiment: str, result: SeriesResult, colors: dict) -> None:
    """m(L) with its pointwise band, loss decreasing to the right (more compute)."""
    for r in result.rows:
        c = r.get("curve")
        if r["variant"] == BASELINE or not c:
            continue
        ax.plot(c["loss"], c["multiplier"], color=colors.get(r["variant"], "k"), label=r["variant"])
        ax.fill_between(c["loss"], c["lo"], c["hi"], color=colors.get(r["variant"], "k"), alpha=0.15, linewidth=0)
    ax.axhline(1.0, color="k", linewidth=0.8, linestyle="--")
    ax.set_yscale("log")
    lo, hi = shown_range(*ax.get_ylim())
    _plain_log_ticks(ax.yaxis, lo, hi)
    ax.set_ylim(lo, hi)
    ax.invert_xaxis()
    ax.set_xlabel(f"{BASELINE}'s fitted loss L (nats/token; more compute →)", fontsize=FONT)
    ax.set_ylabel(f"compute multiplier m(L) vs {BASELINE}", fontsize=FONT)
    ax.set_title(_title(experiment, result) + "\nm(L) over the measured losses (95% pointwise band)",
                 fontsize=FONT + 1)
    ax.tick_params(labelsize=FONT - 1)
    ax.grid(alpha=0.3, which="both")
    if ax.lines[1:]:
        ax.legend(fontsize=FONT - 1)


def write_plots(experiment: str, results: list[SeriesResult], out_dir: Path) -> list[Path]:
    """The figures of :data:`PLOTS` that have data (no parameters or seconds from a table of runs), one
    panel per series; returns the PNG paths."""
    series = by_label(results)
    mains = [c.get("flops") or next(iter(c.values())) for c in series.values()]
    variants = sorted({p.variant for r in results for p in r.points})
    colors = {v: f"C{i % 10}" for i, v in enumerate(variants)}
    n = max(1, len(series))
    figs = {}
    for name, (xlabel, key) in AXES.items():
        if not any(_x(p, key) for r in mains for p in r.points):
            continue
        fig = figs[name] = Figure(figsize=(6.5 * n, 5.0), layout="constrained")
        for i, res in enumerate(mains):
            _loss_panel(fig.add_subplot(1, n, i + 1), experiment, res, key, xlabel, colors)
    fig = figs["compute_multiplier"] = Figure(figsize=(6.5 * n, 1.8 + 0.5 * len(variants)), layout="constrained")
    for i, convs in enumerate(series.values()):
        _multiplier_panel(fig.add_subplot(1, n, i + 1), experiment, convs, colors)
    fig = figs["multiplier_vs_loss"] = Figure(figsize=(6.5 * n, 4.5), layout="constrained")
    for i, res in enumerate(mains):
        _curve_panel(fig.add_subplot(1, n, i + 1), experiment, res, colors)
    return save_figures(figs, out_dir)
