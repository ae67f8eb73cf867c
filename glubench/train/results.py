"""The results schema: one ``results.json`` per run, written by :mod:`glubench.train.task` and read by
:mod:`glubench.sweep.report`."""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Optional

from glubench.core.io import atomic_write_json

RESULTS_FILE = "results.json"


@dataclass
class RunResult:
    """Everything a run reports.  Losses are in nats per token; ``val_bpb`` in bits per UTF-8 byte.

    ``status`` is ``completed``, ``failed``, ``diverged`` or ``interrupted``; ``error`` holds the
    message when the run did not complete (the signal, for an interrupted one).  ``val_loss`` is the
    latest validation's, at ``val_step`` (an interrupted run's last one, not its final number).
    ``history`` lists each validation as ``{"step", "tokens_seen", "val_loss"}``.  ``diagnostics`` holds
    optional analyses keyed by name, e.g. ``dead_units`` (:meth:`glubench.train.monitors.DeadUnitsCallback.summary`).
    """

    status: str
    ffn: str
    seed: int
    params_total: Optional[int] = None
    params_nonembedding: Optional[int] = None
    params_ffn: Optional[int] = None  # one layer's FFN
    ffn_hidden: Optional[int] = None
    ffn_matching_error: Optional[float] = None
    val_loss: Optional[float] = None
    val_ppl: Optional[float] = None
    val_bpb: Optional[float] = None
    val_tokens: Optional[int] = None
    val_step: Optional[int] = None  # the optimizer step val_loss was measured at (an interrupted run: its last)
    # the test split, scored once after training (null when the corpus has none: data.test_percent = 0)
    test_loss: Optional[float] = None
    test_ppl: Optional[float] = None
    test_bpb: Optional[float] = None
    test_tokens: Optional[int] = None
    train_loss: Optional[float] = None
    tokens_seen: Optional[int] = None
    steps: Optional[int] = None
    train_tokens_per_sec: Optional[float] = None
    step_time_ms: Optional[float] = None
    flops_per_token: Optional[float] = None
    mfu: Optional[float] = None
    wall_time_s: Optional[float] = None
    precision: Optional[str] = None
    device: Optional[str] = None
    corpus_fingerprint: Optional[str] = None
    versions: dict[str, str] = field(default_factory=dict)
    error: Optional[str] = None
    diagnostics: dict[str, Any] = field(default_factory=dict)  # e.g. "dead_units" (glubench.analysis)
    history: list[dict[str, Any]] = field(default_factory=list)
    # mode, value, target, planned max_steps, and what was spent: steps, tokens, flops, seconds
    budget: dict[str, Any] = field(default_factory=dict)
    # the machine's CPU count and [1, 5, 15]-minute load averages at the start and end (machine_load()):
    # throughput measured on a busy machine is not comparable (glubench.sweep.stats.busy_machine)
    machine: dict[str, Any] = field(default_factory=dict)
    config: dict[str, Any] = field(default_factory=dict)

    def write(self, output_dir: Path) -> Path:
        """Write ``output_dir/results.json`` atomically and return its path."""
        path = Path(output_dir) / RESULTS_FILE
        atomic_write_json(path, asdict(self))
        return path

    @classmethod
    def read(cls, path: Path) -> RunResult:
        """Read a ``results.json``; unknown keys (from newer versions) are ignored."""
        data = json.loads(Path(path).read_text())
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})


def machine_load() -> dict[str, Any]:
    """The machine's CPU count (``os.cpu_count``) and [1, 5, 15]-minute load averages (``os.getloadavg``;
    ``None`` where the platform has none): ``{"cpu_count", "load"}``."""
    try:
        load = [round(x, 2) for x in os.getloadavg()]
    except (AttributeError, OSError):  # Windows has no load average
        load = None
    return {"cpu_count": os.cpu_count(), "load": load}
