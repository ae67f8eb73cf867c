"""Training-throughput benchmark: glubench under Lightning, in a plain loop, and Hugging Face peers.

The contenders (``lightning``, ``plain``, ``plain-split``, ``hf-gpt2``, ``hf-llama``), what they share and the
method are described in BENCHMARKS.md.  In short: all train the same shapes on the same random batches with
glubench's optimizer and clipping at 1.0, interleaved in one process (each repeat runs every variant × contender
once, in a rotated order; ratios are paired within a repeat, then medianed).  A mark ends every optimizer step
(``perf_counter`` on CPU; CUDA events on GPU, read after one final sync); warmup steps (which include compilation)
are excluded: ``tokens/s = B·T·steps / (mark[last] - mark[warmup])``.
"""

from __future__ import annotations

import argparse
import gc
import logging
import os
import resource
import sys
import time
import warnings
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from statistics import median, quantiles

import torch
import torch.nn.functional as F
from torch import nn
from torch._dynamo.utils import counters

from glubench.core.io import atomic_write_bytes, atomic_write_json
from glubench.core.logging import configure as configure_logging
from glubench.nn.config import FFN_VARIANTS, ModelConfig
from glubench.nn.ffn import GatedMLP
from glubench.nn.flops import flops_per_token, mfu
from glubench.nn.transformer import Transformer, count_params
from glubench.sweep.report import markdown_table
from glubench.train.callbacks import ProgressBar
from glubench.train.metrics import peak_flops
from glubench.train.module import COMPILE_OPTIONS, LanguageModel, build_optimizer
from glubench.train.schema import OptimConfig
from glubench.train.task import device_name, versions

CONTENDERS = ("lightning", "plain", "plain-split", "hf")
HF_PEERS = {"gelu": "hf-gpt2", "swiglu": "hf-llama"}  # glubench variant -> its Hugging Face peer
# ratio -> the target (framework overhead <= 3%; glubench >= the Hugging Face peer)
TARGETS = {"lightning / plain": 0.97, "plain / hf-gpt2": 1.0, "plain / hf-llama": 1.0,
           "lightning / hf-gpt2": 1.0, "lightning / hf-llama": 1.0}

log = logging.getLogger(__name__)


@dataclass
class BenchConfig:
    """What to benchmark; each field is the command-line flag ``--<field>`` (``ffns``: ``--ffn``)."""

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
            if name not in FFN_VARIANTS:
                raise ValueError(f"--ffn {name!r} is not a known FFN variant; valid: {', '.join(FFN_VARIANTS)}")
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
        self.model_config()  # raises on inconsistent sizes

    def model_config(self, ffn: str = "relu") -> ModelConfig:
        return ModelConfig(vocab_size=self.vocab_size, d_model=self.d_model, n_layers=self.n_layers,
                           n_heads=self.n_heads, seq_len=self.seq_len, ffn=ffn)


def _rss_bytes() -> int:
    """Current resident set size (Linux ``/proc``; elsewhere the peak so far)."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except OSError:
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * (1 if sys.platform == "darwin" else 1024)


class StepMarks:
    """End-of-step time marks: CUDA events on GPU (no host sync per step), ``perf_counter`` on CPU.

    On CPU each mark also samples the process RSS; the maximum is the CPU stand-in for peak memory.
    """

    def __init__(self, device: torch.device) -> None:
        self.cuda = device.type == "cuda"
        self.marks: list = []
        self.peak_rss = 0

    def mark(self) -> None:
        if self.cuda:
            self.marks.append(torch.cuda.Event(enable_timing=True))
            self.marks[-1].record()
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
    q = quantiles(ms, n=4, method="inclusive") if len(ms) > 1 else [ms[0]] * 3
    return {"tokens_per_sec": tokens_per_step * len(step_seconds) / total,
            "tokens_per_sec_median_step": tokens_per_step / (median(ms) / 1e3),
            "step_ms_median": median(ms), "step_ms_p25": q[0], "step_ms_p75": q[2],
            "measured_steps": len(step_seconds), "measured_seconds": total}


def make_batches(cfg: BenchConfig, device: torch.device, n: int = 4) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """``n`` random ``(x, y)`` int64 batches of shape ``(batch_size, seq_len)``, already on ``device``."""
    g = torch.Generator().manual_seed(cfg.seed)
    windows = (torch.randint(0, cfg.vocab_size, (cfg.batch_size, cfg.seq_len + 1), generator=g) for _ in range(n))
    return [(w[:, :-1].contiguous().to(device), w[:, 1:].contiguous().to(device)) for w in windows]


class SplitGatedMLP(nn.Module):
    """A gated FFN with ``W`` and ``V`` as two separate Linears (the unfused reference)."""

    def __init__(self, fused: GatedMLP) -> None:
        super().__init__()
        self.act, self.w_out = fused.act, fused.w_out
        self.w_gate = nn.Linear(fused.d_model, fused.hidden, bias=False)
        self.w_value = nn.Linear(fused.d_model, fused.hidden, bias=False)
        with torch.no_grad():
            self.w_gate.weight.copy_(fused.gate_weight)
            self.w_value.weight.copy_(fused.value_weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.w_out(self.act(self.w_gate(x)) * self.w_value(x))


def glubench_model(cfg: BenchConfig, ffn: str, split: bool = False) -> nn.Module:
    """glubench's :class:`Transformer` for ``ffn`` at the benchmark's shapes, seeded with ``cfg.seed``;
    ``split``: its gated FFNs as :class:`SplitGatedMLP` (same weights)."""
    torch.manual_seed(cfg.seed)
    model = Transformer(cfg.model_config(ffn))
    if split:
        for block in model.blocks:
            block.ffn = SplitGatedMLP(block.ffn)
    return model


def hf_model(cfg: BenchConfig, peer: str) -> nn.Module:
    """The Hugging Face peer at glubench's shapes: GPT-2 (exact-erf GELU, d_ff = 4·d) or Llama (SwiGLU), with
    tied output heads and SDPA attention like glubench (what stays different: see BENCHMARKS.md)."""
    import transformers as tf

    torch.manual_seed(cfg.seed)
    if peer == "hf-gpt2":
        conf = tf.GPT2Config(vocab_size=cfg.vocab_size, n_positions=cfg.seq_len, n_embd=cfg.d_model,
                             n_layer=cfg.n_layers, n_head=cfg.n_heads, n_inner=4 * cfg.d_model,
                             activation_function="gelu", resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,
                             use_cache=False, tie_word_embeddings=True)
        return tf.GPT2LMHeadModel._from_config(conf, attn_implementation="sdpa")
    if peer != "hf-llama":
        raise ValueError(f"unknown Hugging Face peer {peer!r}; valid: {', '.join(HF_PEERS.values())}")
    conf = tf.LlamaConfig(vocab_size=cfg.vocab_size, hidden_size=cfg.d_model,
                          intermediate_size=cfg.model_config("swiglu").ffn_hidden,
                          num_hidden_layers=cfg.n_layers, num_attention_heads=cfg.n_heads,
                          num_key_value_heads=cfg.n_heads, max_position_embeddings=cfg.seq_len,
                          hidden_act="silu", attention_bias=False, mlp_bias=False, use_cache=False,
                          tie_word_embeddings=True)
    return tf.LlamaForCausalLM._from_config(conf, attn_implementation="sdpa")


class _HFLogits(nn.Module):
    """Adapts a Hugging Face causal LM to ``idx (B, T) -> logits (B, T, V)``."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        return self.model(input_ids=idx, use_cache=False).logits


def run_plain(cfg: BenchConfig, model: nn.Module, batches, device: torch.device) -> StepMarks:
    """Forward, cross-entropy, backward, clip at 1.0, AdamW step, scheduler step; one mark per step.

    The optimizer and schedule are ``glubench``'s (default ``optim.*`` with a one-step warmup).
    """
    model.to(device).train()
    if cfg.compile:
        model.compile(**COMPILE_OPTIONS)
    total = cfg.warmup + cfg.steps
    opt, sched = build_optimizer(model, OptimConfig(warmup_steps=1), max_steps=total)
    marks = StepMarks(device)
    marks.mark()
    for i in range(total):
        x, y = batches[i % len(batches)]
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=cfg.bf16):
            loss = F.cross_entropy(model(x).flatten(0, 1), y.flatten())
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

    total = cfg.warmup + cfg.steps
    torch.manual_seed(cfg.seed)
    mcfg = cfg.model_config(ffn)
    mcfg.compile = cfg.compile
    module = LanguageModel(mcfg, OptimConfig(warmup_steps=1), max_steps=total)
    trainer = pl.Trainer(accelerator=device.type, devices=1, precision="bf16-mixed" if cfg.bf16 else "32-true",
                         max_steps=total, logger=False, enable_checkpointing=False, enable_model_summary=False,
                         enable_progress_bar=cfg.progress_bar, gradient_clip_val=1.0, log_every_n_steps=10,
                         num_sanity_val_steps=0, limit_val_batches=0,  # the progress bar as glubench sets it
                         callbacks=[_Marker()] + ([ProgressBar(refresh_rate=10)] if cfg.progress_bar else []))
    loader = torch.utils.data.DataLoader([batches[i % len(batches)] for i in range(total)], batch_size=None)
    with warnings.catch_warnings():  # training alone is timed: the module's validation_step gets no loader, as meant
        warnings.filterwarnings("ignore", message="You defined a `validation_step` but have no `val_dataloader`")
        trainer.fit(module, train_dataloaders=loader)
    return marks


def plan(cfg: BenchConfig, have_hf: bool) -> list[tuple[str, str]]:
    """The ``(ffn, contender)`` pairs one repeat runs, in order."""
    pairs = []
    for ffn in cfg.ffns:
        for c in cfg.contenders:
            if c == "hf":
                c = HF_PEERS.get(ffn) if have_hf else None
            elif c == "plain-split" and not FFN_VARIANTS[ffn].gated:
                c = None
            if c:
                pairs.append((ffn, c))
    return pairs


def run_one(cfg: BenchConfig, ffn: str, contender: str, batches, device: torch.device) -> dict:
    """Train ``warmup + steps`` steps of one contender; its rates, peak memory and recompiles after warmup."""
    cuda = device.type == "cuda"
    gc.collect()
    if cuda:
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
    if cfg.compile:
        torch._dynamo.reset()  # a fresh model instance would otherwise count against the recompile limit
    if contender == "lightning":
        marks = run_lightning(cfg, ffn, batches, device)
    elif contender in ("plain", "plain-split"):
        marks = run_plain(cfg, glubench_model(cfg, ffn, split=contender == "plain-split"), batches, device)
    else:
        marks = run_plain(cfg, _HFLogits(hf_model(cfg, contender)), batches, device)
    seconds = marks.step_seconds()
    if len(seconds) != cfg.warmup + cfg.steps:
        raise RuntimeError(f"{contender}/{ffn}: {len(seconds)} step marks, expected {cfg.warmup + cfg.steps}")
    return {"ffn": ffn, "contender": contender, **summarize(seconds[cfg.warmup:], cfg.batch_size * cfg.seq_len),
            "peak_mem_mib": (torch.cuda.max_memory_allocated(device) if cuda else marks.peak_rss) / 2**20,
            "peak_mem_kind": "cuda_max_allocated" if cuda else "process_rss",
            "dynamo_unique_graphs": counters["stats"]["unique_graphs"] if cfg.compile else None}


def aggregate(cfg: BenchConfig, runs: list[dict], fpt: dict[str, float], peak: float | None) -> dict:
    """Median over repeats per (ffn, contender), and tokens/s ratios paired within each repeat then medianed.

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


def benchmark(cfg: BenchConfig, out: Path | None = None) -> dict:
    """Run the interleaved benchmark; write ``bench.json`` and ``bench.md`` to ``out`` after every run.

    ``cfg`` must have passed :meth:`BenchConfig.check`.  Returns the result dict: ``meta`` (device,
    versions, config), ``runs`` (one row per repeat × variant × contender) and ``summary`` (medians and
    paired ratios).
    """
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    device = torch.device(cfg.device if cfg.device != "auto" else "cuda" if torch.cuda.is_available() else "cpu")
    try:
        import transformers
    except ImportError:
        transformers = None
    have_hf = transformers is not None
    if "hf" in cfg.contenders and not have_hf:
        log.info("glubench-bench: transformers is not installed; skipping the Hugging Face peers "
                 "(pip install 'glubench[bench]' torch==<your torch>)")
    pairs = plan(cfg, have_hf)
    precision = "bf16-mixed" if cfg.bf16 else "32-true"
    peak = cfg.peak_flops or peak_flops(device, precision)
    fpt = {}
    for ffn in cfg.ffns:
        mc = cfg.model_config(ffn)
        fpt[ffn] = flops_per_token(count_params(Transformer(mc)).matmul, mc.n_layers, mc.d_model, mc.seq_len)
    batches = make_batches(cfg, device)
    meta = {"device": device_name(batches[0][0]),  # any tensor on the device: device_name reads its .device
            "precision": precision, "compile": cfg.compile, "peak_flops": peak, "flops_per_token": fpt,
            "hf_available": have_hf,
            "versions": {**versions(), "transformers": getattr(transformers, "__version__", None)},
            "config": asdict(cfg), "command": " ".join(sys.argv), "started": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    result = {"meta": meta, "runs": [], "summary": {"rows": [], "ratios": []}}
    for rep in range(cfg.repeats):
        k = rep % len(pairs)
        for ffn, contender in pairs[k:] + pairs[:k]:  # rotate so no contender always runs first
            row = {**run_one(cfg, ffn, contender, batches, device), "repeat": rep}
            result["runs"].append(row)
            log.info(f"glubench-bench: repeat {rep} {ffn:>8} {contender:<11} {row['tokens_per_sec']:>12,.0f} tok/s  "
                     f"step {row['step_ms_median']:.1f} ms  mem {row['peak_mem_mib']:,.0f} MiB")
            result["summary"] = aggregate(cfg, result["runs"], fpt, peak)
            if out is not None:
                atomic_write_json(Path(out) / "bench.json", result)
                atomic_write_bytes(Path(out) / "bench.md", markdown(result).encode())
    return result


def parse_args(argv: list[str] | None = None) -> tuple[BenchConfig, Path]:
    """The :class:`BenchConfig` and the output folder from the command line (defaults: the dataclass's)."""
    p = argparse.ArgumentParser(prog="glubench-bench", description=__doc__.split("\n\n")[0])
    p.add_argument("--ffn", dest="ffns", metavar="FFN", nargs="+", help="FFN variants (model.ffn names)")
    p.add_argument("--contenders", nargs="+", help=f"subset of {', '.join(CONTENDERS)}")
    p.add_argument("--split-gated", action="store_true", help="add the plain-split contender (unfused W, V)")
    for f in fields(BenchConfig):
        if f.type == "int" and f.name != "seed":  # d_model ... repeats
            p.add_argument(f"--{f.name.replace('_', '-')}", type=int)
    p.add_argument("--compile", action="store_true", help="torch.compile every model (compile time is in warmup)")
    p.add_argument("--bf16", action="store_true", help="bf16 autocast (Lightning: precision=bf16-mixed)")
    p.add_argument("--device", help="auto | cpu | cuda")
    p.add_argument("--threads", type=int, help="torch CPU threads (default: torch's choice)")
    p.add_argument("--peak-flops", type=float, help="device peak FLOP/s for MFU (default: lookup)")
    p.add_argument("--progress-bar", action="store_true", help="keep Lightning's progress bar on")
    p.add_argument("--seed", type=int)
    p.add_argument("--out", type=Path, default=Path("bench-results"), help="folder for bench.json and bench.md")
    p.set_defaults(**asdict(BenchConfig()))
    args = vars(p.parse_args(argv))
    out, split_gated = args.pop("out"), args.pop("split_gated")
    if split_gated and "plain-split" not in args["contenders"]:
        args["contenders"].append("plain-split")
    return BenchConfig(**args), out


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
    log.info(f"glubench-bench: wrote {out / 'bench.json'} and {out / 'bench.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
