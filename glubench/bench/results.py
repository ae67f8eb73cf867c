"""The benchmark's numbers: rates from step times, medians over repeats, ratios paired within a repeat,
and ``bench.md``'s tables (torch-free)."""

from __future__ import annotations

from statistics import median, quantiles

from glubench.bench.config import HF_PEERS, BenchConfig
from glubench.nn.flops import mfu
from glubench.sweep.tables import markdown_table

TARGETS = {"lightning / plain": 0.97, "plain / hf-gpt2": 1.0, "plain / hf-llama": 1.0,
           "lightning / hf-gpt2": 1.0, "lightning / hf-llama": 1.0}
"""Ratio -> the target it is held to (framework overhead <= 3%; glubench >= the Hugging Face peer)."""


def summarize(step_seconds: list[float], tokens_per_step: int) -> dict[str, float]:
    """Rates from measured step times (seconds).

    ``tokens_per_sec`` is over the whole window (total tokens / total seconds);
    ``tokens_per_sec_median_step`` is ``tokens_per_step / median step``, which a few steps
    stalled by other processes do not move; step-time median and quartiles are in ms.

    Raises:
        ValueError: no steps.
    """
    if not step_seconds:
        raise ValueError("no measured steps")
    total = sum(step_seconds)
    ms = sorted(1e3 * s for s in step_seconds)
    q = quantiles(ms, n=4, method="inclusive") if len(ms) > 1 else [ms[0]] * 3
    return {"tokens_per_sec": tokens_per_step * len(step_seconds) / total,
            "tokens_per_sec_median_step": tokens_per_step / (median(ms) / 1e3),
            "step_ms_median": median(ms), "step_ms_p25": q[0], "step_ms_p75": q[2],
            "measured_steps": len(step_seconds), "measured_seconds": total}


def aggregate(cfg: BenchConfig, runs: list[dict], fpt: dict[str, float], peak: float | None) -> dict:
    """Median over repeats per (ffn, contender), and tokens/s ratios paired within each repeat then medianed.

    ``fpt``: FLOPs per token of each variant; ``peak``: the device's FLOP/s (``None``: no MFU).
    Ratios use ``tokens_per_sec_median_step`` (see :func:`summarize`) so that a contender whose
    window happened to contain a stall from another process is not penalised.
    """
    groups: dict[tuple[str, str], list[dict]] = {}
    for r in runs:
        groups.setdefault((r["ffn"], r["contender"]), []).append(r)
    rows = []
    for (ffn, contender), rs in groups.items():
        tps = [r["tokens_per_sec"] for r in rs]
        rows.append({"ffn": ffn, "contender": contender, "repeats": len(rs), "tokens_per_sec": median(tps),
                     "tokens_per_sec_min": min(tps), "tokens_per_sec_max": max(tps),
                     **{k: median([r[k] for r in rs]) for k in ("step_ms_median", "step_ms_p25", "step_ms_p75")},
                     "peak_mem_mib": max(r["peak_mem_mib"] for r in rs), "mfu": mfu(median(tps), fpt[ffn], peak)})
    ratios = []
    for ffn in cfg.ffns:
        peer = HF_PEERS.get(ffn)  # None: no runs match, no ratio
        for num, den in (("lightning", "plain"), ("plain", "plain-split"), ("plain", peer), ("lightning", peer)):
            by_rep: dict[int, dict[str, float]] = {}
            for r in runs:
                if r["ffn"] == ffn and r["contender"] in (num, den):
                    by_rep.setdefault(r["repeat"], {})[r["contender"]] = r["tokens_per_sec_median_step"]
            paired = [d[num] / d[den] for d in by_rep.values() if len(d) == 2]
            if paired:
                ratios.append({"ffn": ffn, "ratio": f"{num} / {den}", "median": median(paired),
                               "min": min(paired), "max": max(paired), "n": len(paired)})
    return {"rows": rows, "ratios": ratios}


def markdown(result: dict) -> str:
    """The result as a markdown table of contenders and one of ratios (with targets)."""
    m = result["meta"]
    rows = [[r["ffn"], r["contender"], f"{r['tokens_per_sec']:,.0f}",
             f"{r['tokens_per_sec_min']:,.0f}–{r['tokens_per_sec_max']:,.0f}",
             f"{r['step_ms_median']:.1f} [{r['step_ms_p25']:.1f}–{r['step_ms_p75']:.1f}]",
             f"{r['peak_mem_mib']:,.0f}", "–" if r["mfu"] is None else f"{100 * r['mfu']:.1f}%"]
            for r in result["summary"]["rows"]]
    ratios = []
    for r in result["summary"]["ratios"]:
        t = TARGETS.get(r["ratio"])
        target, met = ("–", "–") if t is None else (f"≥ {t:.2f}", "yes" if r["median"] >= t else "**no**")
        ratios.append([r["ffn"], r["ratio"], f"{r['median']:.3f}", f"{r['min']:.3f}–{r['max']:.3f}", target, met])
    return "\n\n".join([
        f"Device: {m['device']}; torch {m['versions']['torch']}; precision {m['precision']}; "
        f"compile {m['compile']}; " + "B={batch_size} T={seq_len} d_model={d_model} n_layers={n_layers} "
        "n_heads={n_heads} vocab={vocab_size}; {warmup} warmup + {steps} measured steps × {repeats} "
        "interleaved repeats (medians).".format_map(m["config"]),
        "Ratios are paired within a repeat (B·T / median step time) and medianed over repeats.",
        markdown_table(["ffn", "contender", "tokens/s (median)", "min–max", "step ms median [p25–p75]",
                        "peak mem MiB", "MFU"], rows),
        markdown_table(["ffn", "ratio (tokens/s)", "median", "min–max", "target", "met"], ratios),
    ]) + "\n"
