"""The timed runs: each contender's training loop with a mark at the end of every optimizer step, and the
interleaved benchmark that writes ``bench.json`` and ``bench.md``.

A mark ends every optimizer step (``perf_counter`` on CPU; CUDA events on GPU, read after one final sync);
warmup steps (which include compilation) are excluded: ``tokens/s = B·T·steps / (mark[last] - mark[warmup])``.
Each repeat runs every variant × contender once, in a rotated order, so that ratios can be paired within
a repeat (:func:`glubench.bench.results.aggregate`).
"""

from __future__ import annotations

import gc
import logging
import os
import resource
import sys
import time
import warnings
from pathlib import Path

import lightning.pytorch as pl
import torch
import torch.nn.functional as F
from torch import nn

from glubench.bench.config import HF_PEERS, BenchConfig
from glubench.bench.models import HFLogits, glubench_model, hf_model
from glubench.bench.results import aggregate, markdown, summarize
from glubench.core.io import atomic_write_bytes, atomic_write_json
from glubench.nn.config import FFN_VARIANTS
from glubench.nn.flops import flops_per_token
from glubench.nn.transformer import Transformer, count_params
from glubench.train.metrics import peak_flops
from glubench.train.module import COMPILE_OPTIONS, LanguageModel, build_optimizer
from glubench.train.monitors import GlubenchProgressBar
from glubench.train.schema import OptimConfig
from glubench.train.task import device_name, versions

log = logging.getLogger(__name__)

Batches = list[tuple[torch.Tensor, torch.Tensor]]


def _rss_bytes() -> int:
    """Current resident set size in bytes (Linux ``/proc``; elsewhere the peak so far)."""
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


class _StepMarker(pl.Callback):
    """Marks the start of training and the end of every optimizer step of a Lightning run."""

    def __init__(self, marks: StepMarks) -> None:
        self.marks = marks

    def on_train_start(self, trainer, pl_module):
        self.marks.mark()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.marks.mark()


def make_batches(cfg: BenchConfig, device: torch.device, n: int = 4) -> Batches:
    """``n`` random ``(x, y)`` int64 batches of shape ``(batch_size, seq_len)``, already on ``device``."""
    g = torch.Generator().manual_seed(cfg.seed)
    vocab_size, seq_len = cfg.model.vocab_size, cfg.model.seq_len
    windows = (torch.randint(0, vocab_size, (cfg.batch_size, seq_len + 1), generator=g) for _ in range(n))
    return [(w[:, :-1].contiguous().to(device), w[:, 1:].contiguous().to(device)) for w in windows]


def run_plain(cfg: BenchConfig, model: nn.Module, batches: Batches, device: torch.device) -> StepMarks:
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


def run_lightning(cfg: BenchConfig, ffn: str, batches: Batches, device: torch.device) -> StepMarks:
    """:class:`LanguageModel` under ``lightning.Trainer`` with the Trainer options ``glubench`` uses."""
    marks = StepMarks(device)
    total = cfg.warmup + cfg.steps
    torch.manual_seed(cfg.seed)
    mcfg = cfg.model_config(ffn)
    mcfg.compile = cfg.compile
    module = LanguageModel(mcfg, OptimConfig(warmup_steps=1), max_steps=total)
    bar = [GlubenchProgressBar(refresh_rate=10)] if cfg.progress_bar else []  # the progress bar as glubench sets it
    trainer = pl.Trainer(accelerator=device.type, devices=1, precision="bf16-mixed" if cfg.bf16 else "32-true",
                         max_steps=total, logger=False, enable_checkpointing=False, enable_model_summary=False,
                         enable_progress_bar=cfg.progress_bar, gradient_clip_val=1.0, log_every_n_steps=10,
                         num_sanity_val_steps=0, limit_val_batches=0, callbacks=[_StepMarker(marks), *bar])
    loader = torch.utils.data.DataLoader([batches[i % len(batches)] for i in range(total)], batch_size=None)
    with warnings.catch_warnings():  # training alone is timed: the module's validation_step gets no loader, as meant
        warnings.filterwarnings("ignore", message="You defined a `validation_step` but have no `val_dataloader`")
        trainer.fit(module, train_dataloaders=loader)
    return marks


def plan(cfg: BenchConfig, have_hf: bool) -> list[tuple[str, str]]:
    """The ``(ffn, contender)`` pairs one repeat runs, in order (``hf`` becomes the variant's peer, if any)."""
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


def run_one(cfg: BenchConfig, ffn: str, contender: str, batches: Batches, device: torch.device) -> dict:
    """Train ``warmup + steps`` steps of one contender; its rates, peak memory and recompiles after warmup.

    Raises:
        RuntimeError: the run did not mark every step.
    """
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
        marks = run_plain(cfg, HFLogits(hf_model(cfg, contender)), batches, device)
    seconds = marks.step_seconds()
    if len(seconds) != cfg.warmup + cfg.steps:
        raise RuntimeError(f"{contender}/{ffn}: {len(seconds)} step marks, expected {cfg.warmup + cfg.steps}")
    return {"ffn": ffn, "contender": contender,
            **summarize(seconds[cfg.warmup:], cfg.batch_size * cfg.model.seq_len),
            "peak_mem_mib": (torch.cuda.max_memory_allocated(device) if cuda else marks.peak_rss) / 2**20,
            "peak_mem_kind": "cuda_max_allocated" if cuda else "process_rss",
            "dynamo_unique_graphs": torch._dynamo.utils.counters["stats"]["unique_graphs"] if cfg.compile else None}


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
        import transformers  # optional: the [bench] extra
    except ImportError:
        transformers = None
    if "hf" in cfg.contenders and transformers is None:
        log.info("glubench-bench: transformers is not installed; skipping the Hugging Face peers "
                 "(pip install 'glubench[bench]' torch==<your torch>)")
    pairs = plan(cfg, transformers is not None)
    precision = "bf16-mixed" if cfg.bf16 else "32-true"
    peak = cfg.peak_flops or peak_flops(device, precision)
    fpt = {}
    for ffn in cfg.ffns:
        mc = cfg.model_config(ffn)
        fpt[ffn] = flops_per_token(count_params(Transformer(mc)).matmul, mc.n_layers, mc.d_model, mc.seq_len)
    batches = make_batches(cfg, device)
    meta = {"device": device_name(device), "precision": precision, "compile": cfg.compile, "peak_flops": peak,
            "flops_per_token": fpt, "hf_available": transformers is not None,
            "versions": {**versions(), "transformers": getattr(transformers, "__version__", None)},
            "config": cfg.as_dict(), "command": " ".join(sys.argv), "started": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
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
