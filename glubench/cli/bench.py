"""Training-throughput benchmark: glubench under Lightning, in a plain loop, and Hugging Face peers.

Every contender trains the same shapes (batch ``B`` × context ``T``, width, depth, heads,
vocabulary) on the same pre-generated random token batches, with the same optimizer
(AdamW, weight decay on matrices only, the glubench LR schedule) and gradient clipping at
1.0, so that what differs is the model code or the loop around it:

* ``lightning``: :class:`glubench.module.LanguageModel` under ``lightning.Trainer`` (what
  ``glubench`` runs; no logger, checkpointing or progress bar unless asked for);
* ``plain``: the same :class:`glubench.model.Transformer` in a hand-written loop (forward,
  cross-entropy, backward, clip, AdamW step, scheduler step): the floor for loop overhead;
* ``plain-split`` (gated variants, ``--split-gated``): the plain loop with the fused gate/value
  projection replaced by two separate Linears, to measure what the fusion buys;
* ``hf-gpt2`` (for ``gelu``) and ``hf-llama`` (for ``swiglu``): ``transformers``'
  ``GPT2LMHeadModel`` / ``LlamaForCausalLM`` at equal shapes in the plain loop (the optional
  ``[bench]`` extra; skipped with a message when ``transformers`` is not installed).

Contenders run interleaved (each repeat runs every variant × contender once, in a rotated
order) in one process, so slow drifts in machine load hit all of them alike; ratios are
taken within a repeat and the median over repeats is reported.

Timing: a mark is taken at the end of every optimizer step (``time.perf_counter`` on CPU; a
CUDA event on GPU, read after one final synchronisation, so no per-step host sync is added).
Step ``i``'s time is ``mark[i] - mark[i-1]``, which includes all loop overhead (data loading,
hooks); the first ``warmup`` steps (which include ``torch.compile``'s compilation) are
excluded.  ``tokens/s = B·T·steps / (mark[last] - mark[warmup])``.
"""

from __future__ import annotations

import argparse
import gc
import logging
import math
import os
import platform
import resource
import statistics
import sys
import time
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from glubench.core.io import atomic_write_bytes, atomic_write_json
from glubench.core.logging import configure as configure_logging
from glubench.nn.config import ModelConfig
from glubench.nn.ffn import FFN_REGISTRY, GatedMLP
from glubench.nn.flops import flops_per_token, mfu
from glubench.nn.transformer import Transformer, count_params
from glubench.train.callbacks import ProgressBar
from glubench.train.metrics import peak_flops
from glubench.train.module import COMPILE_OPTIONS, LanguageModel, build_optimizer
from glubench.train.schema import OptimConfig

CONTENDERS = ("lightning", "plain", "plain-split", "hf")
HF_PEERS = {"gelu": "hf-gpt2", "swiglu": "hf-llama"}
"""glubench variant -> the Hugging Face model that is its peer."""


@dataclass
class BenchConfig:
    """What to benchmark; mirrors the command-line flags of :func:`main`."""

    ffns: list[str] = field(default_factory=lambda: ["relu", "gelu", "swiglu"])
    contenders: list[str] = field(default_factory=lambda: ["lightning", "plain", "hf"])
    d_model: int = 128
    n_layers: int = 4
    n_heads: int = 4
    seq_len: int = 128
    vocab_size: int = 256
    batch_size: int = 16
    warmup: int = 3
    steps: int = 10
    repeats: int = 3
    compile: bool = False
    bf16: bool = False
    device: str = "auto"
    threads: int | None = None
    peak_flops: float | None = None
    progress_bar: bool = False
    seed: int = 0

    def check(self) -> None:
        """Raise ``ValueError`` with one line naming the bad flag, its value and what is allowed."""
        for name in self.ffns:
            if name not in FFN_REGISTRY:
                raise ValueError(f"--ffn {name!r} is not a known FFN variant; valid: {', '.join(FFN_REGISTRY)}")
        for name in self.contenders:
            if name not in CONTENDERS:
                raise ValueError(f"--contenders {name!r} is not known; valid: {', '.join(CONTENDERS)}")
        for key in ("d_model", "n_layers", "n_heads", "seq_len", "vocab_size", "batch_size", "steps", "repeats"):
            if getattr(self, key) <= 0:
                raise ValueError(f"--{key.replace('_', '-')}={getattr(self, key)} must be a positive integer")
        if self.warmup < (2 if self.compile else 1):
            raise ValueError(f"--warmup={self.warmup} must be >= {2 if self.compile else 1} "
                             f"(the first steps {'compile and ' if self.compile else ''}allocate)")
        if self.device not in ("auto", "cpu", "cuda"):
            raise ValueError(f"--device={self.device!r} is not known; valid: auto, cpu, cuda")
        if self.device == "cuda" and not torch.cuda.is_available():
            raise ValueError("--device=cuda but torch.cuda.is_available() is False")
        if self.peak_flops is not None and not self.peak_flops > 0:
            raise ValueError(f"--peak-flops={self.peak_flops} must be positive")
        ModelConfig(vocab_size=self.vocab_size, d_model=self.d_model, n_layers=self.n_layers,
                    n_heads=self.n_heads, seq_len=self.seq_len)  # raises on inconsistent sizes

    def model_config(self, ffn: str) -> ModelConfig:
        return ModelConfig(vocab_size=self.vocab_size, d_model=self.d_model, n_layers=self.n_layers,
                           n_heads=self.n_heads, seq_len=self.seq_len, ffn=ffn)


# ---------------------------------------------------------------------------- timing and memory


def _rss_bytes() -> int:
    """Current resident set size of this process (Linux ``/proc``; elsewhere the peak so far)."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except OSError:
        scale = 1 if sys.platform == "darwin" else 1024
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale


class StepMarks:
    """End-of-step time marks: CUDA events on GPU (no host sync per step), ``perf_counter`` on CPU.

    On CPU it also samples the process RSS at each mark (one small ``/proc`` read), whose
    maximum is the CPU stand-in for peak memory.
    """

    def __init__(self, device: torch.device) -> None:
        self.cuda = device.type == "cuda"
        self.marks: list = []
        self.peak_rss = 0

    def mark(self) -> None:
        if self.cuda:
            ev = torch.cuda.Event(enable_timing=True)
            ev.record()
            self.marks.append(ev)
        else:
            self.marks.append(time.perf_counter())
            self.peak_rss = max(self.peak_rss, _rss_bytes())

    def step_seconds(self) -> list[float]:
        """Seconds of each step after the first mark (one synchronisation on CUDA)."""
        if self.cuda:
            torch.cuda.synchronize()
            return [a.elapsed_time(b) / 1e3 for a, b in zip(self.marks, self.marks[1:])]
        return [b - a for a, b in zip(self.marks, self.marks[1:])]


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
    q = statistics.quantiles(ms, n=4, method="inclusive") if len(ms) > 1 else [ms[0]] * 3
    return {
        "tokens_per_sec": tokens_per_step * len(step_seconds) / total,
        "tokens_per_sec_median_step": tokens_per_step / (statistics.median(ms) / 1e3),
        "step_ms_median": statistics.median(ms),
        "step_ms_p25": q[0],
        "step_ms_p75": q[2],
        "measured_steps": len(step_seconds),
        "measured_seconds": total,
    }


# ---------------------------------------------------------------------------- models and loops


def make_batches(cfg: BenchConfig, device: torch.device, n: int = 4) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """``n`` random ``(x, y)`` int64 batches of shape ``(batch_size, seq_len)``, already on ``device``."""
    g = torch.Generator().manual_seed(cfg.seed)
    out = []
    for _ in range(n):
        w = torch.randint(0, cfg.vocab_size, (cfg.batch_size, cfg.seq_len + 1), generator=g)
        out.append((w[:, :-1].contiguous().to(device), w[:, 1:].contiguous().to(device)))
    return out


def optimizer_for(model: nn.Module, total_steps: int):
    """AdamW + schedule as ``glubench`` builds them (:func:`glubench.train.module.build_optimizer`, default
    ``optim.*`` with a one-step warmup)."""
    return build_optimizer(model, OptimConfig(warmup_steps=1), max_steps=total_steps)


class SplitGatedMLP(nn.Module):
    """A gated FFN with ``W`` and ``V`` as two separate Linears (the unfused reference)."""

    def __init__(self, fused: GatedMLP) -> None:
        super().__init__()
        d, h = fused.d_model, fused.hidden
        self.act = fused.act
        self.w_gate = nn.Linear(d, h, bias=False)
        self.w_value = nn.Linear(d, h, bias=False)
        self.w_out = fused.w_out
        with torch.no_grad():
            self.w_gate.weight.copy_(fused.gate_weight)
            self.w_value.weight.copy_(fused.value_weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.w_out(self.act(self.w_gate(x)) * self.w_value(x))


def glubench_model(cfg: BenchConfig, ffn: str, split: bool = False) -> nn.Module:
    torch.manual_seed(cfg.seed)
    model = Transformer(cfg.model_config(ffn))
    if split:
        for block in model.blocks:
            block.ffn = SplitGatedMLP(block.ffn)
    return model


def hf_available() -> bool:
    try:
        import transformers  # noqa: F401
    except ImportError:
        return False
    return True


def hf_model(cfg: BenchConfig, peer: str) -> nn.Module:
    """The Hugging Face peer at glubench's shapes: GPT-2 (exact-erf GELU, d_ff = 4·d) or Llama (SwiGLU).

    Differences that stay: GPT-2 has biases in every Linear and LayerNorm (glubench has none);
    Llama uses RMSNorm and rotary positions instead of LayerNorm and learned positions.  Both
    tie the output head to the token embedding and use the SDPA attention kernel, like glubench.
    """
    import transformers as tf

    torch.manual_seed(cfg.seed)
    if peer == "hf-gpt2":
        conf = tf.GPT2Config(vocab_size=cfg.vocab_size, n_positions=cfg.seq_len, n_embd=cfg.d_model,
                             n_layer=cfg.n_layers, n_head=cfg.n_heads, n_inner=4 * cfg.d_model,
                             activation_function="gelu", resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,
                             use_cache=False, tie_word_embeddings=True)
        model = tf.GPT2LMHeadModel._from_config(conf, attn_implementation="sdpa")
    elif peer == "hf-llama":
        hidden = cfg.model_config("swiglu").ffn_hidden
        conf = tf.LlamaConfig(vocab_size=cfg.vocab_size, hidden_size=cfg.d_model, intermediate_size=hidden,
                              num_hidden_layers=cfg.n_layers, num_attention_heads=cfg.n_heads,
                              num_key_value_heads=cfg.n_heads, max_position_embeddings=cfg.seq_len,
                              hidden_act="silu", attention_bias=False, mlp_bias=False, use_cache=False,
                              tie_word_embeddings=True)
        model = tf.LlamaForCausalLM._from_config(conf, attn_implementation="sdpa")
    else:
        raise ValueError(f"unknown Hugging Face peer {peer!r}; valid: {', '.join(HF_PEERS.values())}")
    return model


class _HFLogits(nn.Module):
    """Adapts a Hugging Face causal LM to ``idx (B, T) -> logits (B, T, V)``."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        return self.model(input_ids=idx, use_cache=False).logits


def _autocast(cfg: BenchConfig, device: torch.device):
    return torch.autocast(device.type, dtype=torch.bfloat16) if cfg.bf16 else nullcontext()


def run_plain(cfg: BenchConfig, model: nn.Module, batches, device: torch.device) -> StepMarks:
    """Forward, cross-entropy, backward, clip at 1.0, AdamW step, scheduler step; one mark per step."""
    model.to(device).train()
    if cfg.compile:
        model.compile(**COMPILE_OPTIONS)
    total = cfg.warmup + cfg.steps
    opt, sched = optimizer_for(model, total)
    marks = StepMarks(device)
    marks.mark()
    for i in range(total):
        x, y = batches[i % len(batches)]
        with _autocast(cfg, device):
            logits = model(x)
            loss = F.cross_entropy(logits.flatten(0, 1), y.flatten())
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
        marks.mark()
    return marks


def run_lightning(cfg: BenchConfig, ffn: str, batches, device: torch.device) -> StepMarks:
    """:class:`LanguageModel` under ``lightning.Trainer`` with the Trainer options ``glubench`` uses."""
    import lightning.pytorch as pl

    marks = StepMarks(device)

    class _Marker(pl.Callback):
        def on_train_start(self, trainer, pl_module):
            marks.mark()

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            marks.mark()

    class _Batches(torch.utils.data.Dataset):
        def __len__(self):
            return cfg.warmup + cfg.steps

        def __getitem__(self, i):
            return batches[i % len(batches)]

    total = cfg.warmup + cfg.steps
    torch.manual_seed(cfg.seed)
    mcfg = cfg.model_config(ffn)
    mcfg.compile = cfg.compile
    module = LanguageModel(mcfg, OptimConfig(warmup_steps=1), max_steps=total)
    trainer = pl.Trainer(
        accelerator=device.type, devices=1, precision="bf16-mixed" if cfg.bf16 else "32-true",
        max_steps=total, logger=False, enable_checkpointing=False, enable_model_summary=False,
        enable_progress_bar=cfg.progress_bar, gradient_clip_val=1.0, log_every_n_steps=10,
        num_sanity_val_steps=0, limit_val_batches=0,
        callbacks=[_Marker()] + ([ProgressBar(refresh_rate=10)] if cfg.progress_bar else []),  # as train.py
    )
    trainer.fit(module, train_dataloaders=torch.utils.data.DataLoader(_Batches(), batch_size=None))
    return marks


# ---------------------------------------------------------------------------- the benchmark


def pick_device(cfg: BenchConfig) -> torch.device:
    if cfg.device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(cfg.device)


def device_label(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"cpu ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"


def plan(cfg: BenchConfig, have_hf: bool) -> list[tuple[str, str]]:
    """The ``(ffn, contender)`` pairs one repeat runs, in order."""
    pairs = []
    for ffn in cfg.ffns:
        for c in cfg.contenders:
            if c == "hf":
                if ffn in HF_PEERS and have_hf:
                    pairs.append((ffn, HF_PEERS[ffn]))
            elif c == "plain-split":
                if FFN_REGISTRY[ffn].gated:
                    pairs.append((ffn, c))
            else:
                pairs.append((ffn, c))
    return pairs


def run_one(cfg: BenchConfig, ffn: str, contender: str, batches, device: torch.device) -> dict:
    """Train ``warmup + steps`` steps of one contender; its rates, peak memory and recompiles after warmup."""
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
    if cfg.compile:
        torch._dynamo.reset()  # a fresh model instance would otherwise count against the recompile limit
    from torch._dynamo.utils import counters

    if contender == "lightning":
        marks = run_lightning(cfg, ffn, batches, device)
    elif contender in ("plain", "plain-split"):
        marks = run_plain(cfg, glubench_model(cfg, ffn, split=contender == "plain-split"), batches, device)
    else:
        marks = run_plain(cfg, _HFLogits(hf_model(cfg, contender)), batches, device)
    seconds = marks.step_seconds()
    if len(seconds) != cfg.warmup + cfg.steps:
        raise RuntimeError(f"{contender}/{ffn}: {len(seconds)} step marks, expected {cfg.warmup + cfg.steps}")
    row = {"ffn": ffn, "contender": contender, **summarize(seconds[cfg.warmup:], cfg.batch_size * cfg.seq_len)}
    if device.type == "cuda":
        row["peak_mem_mib"] = torch.cuda.max_memory_allocated(device) / 2**20
        row["peak_mem_kind"] = "cuda_max_allocated"
    else:
        row["peak_mem_mib"] = marks.peak_rss / 2**20
        row["peak_mem_kind"] = "process_rss"
    row["dynamo_unique_graphs"] = counters["stats"]["unique_graphs"] if cfg.compile else None
    return row


def _median(values: list[float]) -> float | None:
    values = [v for v in values if v is not None and math.isfinite(v)]
    return statistics.median(values) if values else None


def aggregate(cfg: BenchConfig, runs: list[dict], fpt: dict[str, float], peak: float | None) -> dict:
    """Median over repeats per (ffn, contender), and tokens/s ratios paired within each repeat then medianed.

    Ratios use ``tokens_per_sec_median_step`` (see :func:`summarize`) so that a contender whose
    window happened to contain a stall from another process is not penalised.
    """
    table: dict[tuple[str, str], dict] = {}
    for r in runs:
        table.setdefault((r["ffn"], r["contender"]), []).append(r)
    rows = []
    for (ffn, contender), rs in table.items():
        tps = _median([r["tokens_per_sec"] for r in rs])
        rows.append({
            "ffn": ffn, "contender": contender, "repeats": len(rs),
            "tokens_per_sec": tps,
            "tokens_per_sec_min": min(r["tokens_per_sec"] for r in rs),
            "tokens_per_sec_max": max(r["tokens_per_sec"] for r in rs),
            "step_ms_median": _median([r["step_ms_median"] for r in rs]),
            "step_ms_p25": _median([r["step_ms_p25"] for r in rs]),
            "step_ms_p75": _median([r["step_ms_p75"] for r in rs]),
            "peak_mem_mib": max(r["peak_mem_mib"] for r in rs),
            "mfu": mfu(tps, fpt[ffn], peak),
        })

    def paired(ffn: str, num: str, den: str) -> dict | None:
        by_rep: dict[int, dict[str, float]] = {}
        for r in runs:
            if r["ffn"] == ffn and r["contender"] in (num, den):
                by_rep.setdefault(r["repeat"], {})[r["contender"]] = r["tokens_per_sec_median_step"]
        ratios = [d[num] / d[den] for d in by_rep.values() if num in d and den in d]
        if not ratios:
            return None
        return {"ffn": ffn, "ratio": f"{num} / {den}", "median": statistics.median(ratios),
                "min": min(ratios), "max": max(ratios), "n": len(ratios)}

    ratios = []
    for ffn in cfg.ffns:
        ratios.append(paired(ffn, "lightning", "plain"))
        ratios.append(paired(ffn, "plain", "plain-split"))
        if ffn in HF_PEERS:
            ratios.append(paired(ffn, "plain", HF_PEERS[ffn]))
            ratios.append(paired(ffn, "lightning", HF_PEERS[ffn]))
    return {"rows": rows, "ratios": [r for r in ratios if r is not None]}


TARGETS = {"lightning / plain": 0.97, "plain / hf-gpt2": 1.0, "plain / hf-llama": 1.0,
           "lightning / hf-gpt2": 1.0, "lightning / hf-llama": 1.0}
"""Ratio -> the issue's target (framework overhead <= 3%; glubench >= the Hugging Face peer)."""


def markdown(result: dict) -> str:
    """The result as a markdown table of contenders and one of ratios (with targets)."""
    m = result["meta"]
    lines = [
        f"Device: {m['device']}; torch {m['versions']['torch']}; precision {m['precision']}; "
        f"compile {m['compile']}; B={m['config']['batch_size']} T={m['config']['seq_len']} "
        f"d_model={m['config']['d_model']} n_layers={m['config']['n_layers']} n_heads={m['config']['n_heads']} "
        f"vocab={m['config']['vocab_size']}; {m['config']['warmup']} warmup + {m['config']['steps']} measured "
        f"steps × {m['config']['repeats']} interleaved repeats (medians).",
        "",
        "Ratios are paired within a repeat (B·T / median step time) and medianed over repeats.",
        "",
        "| ffn | contender | tokens/s (median) | min–max | step ms median [p25–p75] | peak mem MiB | MFU |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in result["summary"]["rows"]:
        mfu_s = f"{100 * r['mfu']:.1f}%" if r["mfu"] is not None else "–"
        lines.append(
            f"| {r['ffn']} | {r['contender']} | {r['tokens_per_sec']:,.0f} | "
            f"{r['tokens_per_sec_min']:,.0f}–{r['tokens_per_sec_max']:,.0f} | "
            f"{r['step_ms_median']:.1f} [{r['step_ms_p25']:.1f}–{r['step_ms_p75']:.1f}] | "
            f"{r['peak_mem_mib']:,.0f} | {mfu_s} |"
        )
    lines += ["", "| ffn | ratio (tokens/s) | median | min–max | target | met |",
              "| --- | --- | ---: | ---: | ---: | --- |"]
    for r in result["summary"]["ratios"]:
        target = TARGETS.get(r["ratio"])
        met = "–" if target is None else ("yes" if r["median"] >= target else "**no**")
        t_s = f"≥ {target:.2f}" if target is not None else "–"
        lines.append(f"| {r['ffn']} | {r['ratio']} | {r['median']:.3f} | {r['min']:.3f}–{r['max']:.3f} "
                     f"| {t_s} | {met} |")
    return "\n".join(lines) + "\n"


def benchmark(cfg: BenchConfig, out: Path | None = None, log: Callable[[str], None] | None = None) -> dict:
    """Run the interleaved benchmark; write ``bench.json`` and ``bench.md`` to ``out`` after every run.

    Returns the result dict: ``meta`` (device, versions, config), ``runs`` (one row per
    repeat × variant × contender) and ``summary`` (medians and paired ratios).

    Raises:
        ValueError: a bad config value (see :meth:`BenchConfig.check`).
    """
    log = log or logging.getLogger(__name__).info
    cfg.check()
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    device = pick_device(cfg)
    have_hf = hf_available()
    if "hf" in cfg.contenders and not have_hf:
        log("glubench-bench: transformers is not installed; skipping the Hugging Face peers "
            "(pip install 'glubench[bench]' torch==<your torch>)")
    pairs = plan(cfg, have_hf)
    precision = "bf16-mixed" if cfg.bf16 else "32-true"
    peak = cfg.peak_flops or peak_flops(device, precision)
    fpt = {}
    for ffn in cfg.ffns:
        mc = cfg.model_config(ffn)
        fpt[ffn] = flops_per_token(count_params(Transformer(mc)).matmul, mc.n_layers, mc.d_model, mc.seq_len)
    import lightning

    result = {
        "meta": {
            "device": device_label(device), "precision": precision, "compile": cfg.compile,
            "peak_flops": peak, "flops_per_token": fpt, "hf_available": have_hf,
            "versions": {"python": platform.python_version(), "torch": torch.__version__,
                         "lightning": lightning.__version__,
                         "transformers": __import__("transformers").__version__ if have_hf else None},
            "config": asdict(cfg), "command": " ".join(sys.argv),
            "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        },
        "runs": [],
        "summary": {"rows": [], "ratios": []},
    }
    batches = make_batches(cfg, device)
    for rep in range(cfg.repeats):
        k = rep % len(pairs)
        for ffn, contender in pairs[k:] + pairs[:k]:  # rotate so no contender always runs first
            row = run_one(cfg, ffn, contender, batches, device)
            row["repeat"] = rep
            result["runs"].append(row)
            log(f"glubench-bench: repeat {rep} {ffn:>8} {contender:<11} {row['tokens_per_sec']:>12,.0f} tok/s  "
                f"step {row['step_ms_median']:.1f} ms  mem {row['peak_mem_mib']:,.0f} MiB")
            result["summary"] = aggregate(cfg, result["runs"], fpt, peak)
            if out is not None:
                write(result, out)
    return result


def write(result: dict, out: Path) -> None:
    """``out/bench.json`` and ``out/bench.md``, each written atomically."""
    out = Path(out)
    atomic_write_json(out / "bench.json", result)
    atomic_write_bytes(out / "bench.md", markdown(result).encode())


def parse_args(argv: list[str] | None = None) -> tuple[BenchConfig, Path]:
    p = argparse.ArgumentParser(prog="glubench-bench", description=__doc__.split("\n\n")[0])
    p.add_argument("--ffn", nargs="+", default=["relu", "gelu", "swiglu"], help="FFN variants (model.ffn names)")
    p.add_argument("--contenders", nargs="+", default=["lightning", "plain", "hf"],
                   help=f"subset of {', '.join(CONTENDERS)}")
    p.add_argument("--split-gated", action="store_true", help="add the plain-split contender (unfused W, V)")
    for key, default in (("d-model", 128), ("n-layers", 4), ("n-heads", 4), ("seq-len", 128), ("vocab-size", 256),
                         ("batch-size", 16), ("warmup", 3), ("steps", 10), ("repeats", 3)):
        p.add_argument(f"--{key}", type=int, default=default)
    p.add_argument("--compile", action="store_true", help="torch.compile every model (compile time is in warmup)")
    p.add_argument("--bf16", action="store_true", help="bf16 autocast (Lightning: precision=bf16-mixed)")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    p.add_argument("--peak-flops", type=float, default=None, help="device peak FLOP/s for MFU (default: lookup)")
    p.add_argument("--progress-bar", action="store_true", help="keep Lightning's progress bar on")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, default=Path("bench-results"), help="folder for bench.json and bench.md")
    a = p.parse_args(argv)
    contenders = list(a.contenders) + (["plain-split"] if a.split_gated and "plain-split" not in a.contenders else [])
    cfg = BenchConfig(ffns=a.ffn, contenders=contenders, d_model=a.d_model, n_layers=a.n_layers, n_heads=a.n_heads,
                      seq_len=a.seq_len, vocab_size=a.vocab_size, batch_size=a.batch_size, warmup=a.warmup,
                      steps=a.steps, repeats=a.repeats, compile=a.compile, bf16=a.bf16, device=a.device,
                      threads=a.threads, peak_flops=a.peak_flops, progress_bar=a.progress_bar, seed=a.seed)
    return cfg, a.out


def main(argv: list[str] | None = None) -> int:
    """``glubench-bench`` / ``scripts/bench_throughput.py``: run the benchmark and print the markdown table."""
    configure_logging()
    cfg, out = parse_args(argv)
    try:
        cfg.check()
    except ValueError as e:
        print(f"glubench-bench: error: {e}", file=sys.stderr)
        return 2
    result = benchmark(cfg, out)
    print(markdown(result), end="")
    logging.getLogger(__name__).info(f"glubench-bench: wrote {out / 'bench.json'} and {out / 'bench.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
