"""Preemption-safe resume: which checkpoint to restart from, RNG states, the data position,
the W&B run id and the CSV history.

A resumed run must equal an uninterrupted one.  Lightning's checkpoint already restores the
weights, the optimizer, the LR scheduler, the loop counters (``global_step``) and the module's
``tokens_seen``/``history``.  This module adds what Lightning leaves out:

- RNG states (torch, CUDA, numpy, Python), saved by :class:`glubench.train.callbacks.ResumeState`
  as tensors and plain values so the checkpoint still loads with ``torch.load(weights_only=True)``;
- the data position: training batch ``i`` is a pure function of ``(seed, i)``
  (:class:`glubench.data.windows.TrainBatches`), so a resumed datamodule starts at batch
  ``global_step × accumulate_grad_batches`` (checkpoints are written at optimizer-step boundaries,
  interrupts included); the loader also carries it as its Lightning state
  (:class:`glubench.data.datamodule.ResumableLoader`);
- a stable W&B run id per run dir (:func:`wandb_run_id`), so a requeued job continues the
  same W&B run (``resume="allow"``) instead of forking a new one;
- the CSV history: Lightning's ``CSVLogger`` deletes an existing ``metrics.csv``;
  :func:`keep_csv_history` keeps the rows up to the checkpoint's step.

No Hydra here: :func:`find_checkpoint` takes the ``ckpt_path`` value and the run dir.
"""

from __future__ import annotations

import csv
import os
import random
import secrets
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch

from glubench.core.io import atomic_write_bytes
from glubench.core.ranks import global_rank

CHECKPOINT_DIR = "checkpoints"
LAST_CHECKPOINT = "last.ckpt"
WANDB_ID_FILE = "wandb_run_id"
AUTO = (None, "", "auto", "last")  # ckpt_path values that mean "resume from the run dir if possible"
NEVER = ("never", "none", "null")


def last_checkpoint(out: Path) -> Path:
    """``<run dir>/checkpoints/last.ckpt`` (it may not exist)."""
    return Path(out) / CHECKPOINT_DIR / LAST_CHECKPOINT


def find_checkpoint(ckpt_path: str | None, out: Path) -> Path | None:
    """The checkpoint to resume from, or ``None`` to start fresh.

    Args:
        ckpt_path: ``None``/``"auto"``/``"last"``: ``<out>/checkpoints/last.ckpt`` if it exists
            (a first start simply finds none); ``"never"``: always start fresh; any other
            value: that file, which must exist.
        out: the run's output dir.

    Raises:
        FileNotFoundError: an explicit ``ckpt_path`` that does not exist.
    """
    if ckpt_path in AUTO:
        last = last_checkpoint(out)
        return last if last.is_file() else None
    if str(ckpt_path).lower() in NEVER:
        return None
    path = Path(os.path.expanduser(str(ckpt_path)))
    if not path.is_file():
        raise FileNotFoundError(f"ckpt_path={ckpt_path!r}: no such checkpoint file (or use auto / never)")
    return path


def checkpoint_step(path: Path) -> int:
    """``global_step`` stored in a Lightning checkpoint (loaded with ``weights_only=True``)."""
    ckpt = torch.load(path, map_location="cpu", weights_only=True)
    return int(ckpt["global_step"])


# ---------------------------------------------------------------------------- RNG states


def collect_rng_states() -> dict[str, Any]:
    """Global RNG states as tensors and plain values (safe for ``torch.load(weights_only=True)``)."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    version, internal, gauss = random.getstate()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "numpy": {"kind": kind, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                  "has_gauss": int(has_gauss), "cached": float(cached)},
        "python": {"version": version, "internal": list(internal), "gauss": gauss},
    }


def set_rng_states(states: dict[str, Any]) -> None:
    """Restore what :func:`collect_rng_states` returned (CUDA states only if the device count matches)."""
    torch.set_rng_state(states["torch"])
    cuda = states.get("cuda") or []
    if cuda and torch.cuda.is_available() and len(cuda) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(cuda)
    n = states["numpy"]
    np.random.set_state((n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached"]))
    p = states["python"]
    random.setstate((p["version"], tuple(p["internal"]), p["gauss"]))


# ---------------------------------------------------------------------------- W&B and CSV


def wandb_run_id(out: Path, resuming: bool) -> str:
    """The W&B run id for the run dir ``out``: reused when ``resuming``, else a new one.

    The id lives in ``<out>/wandb_run_id`` so that a requeued SLURM job (same run dir)
    continues the same W&B run.  Only global rank 0 writes the file; other ranks never log
    to W&B.
    """

    path = Path(out) / WANDB_ID_FILE
    if resuming and path.is_file():
        run_id = path.read_text().strip()
        if run_id:
            return run_id
    run_id = secrets.token_hex(4)
    if global_rank() == 0:
        atomic_write_bytes(path, (run_id + "\n").encode())
    return run_id


def keep_csv_history(csv_logger, resume_step: int) -> int:
    """Keep the rows of an existing ``metrics.csv`` logged before ``resume_step``; return how many.

    Call before training starts.  Lightning's CSV writer deletes the file when it is created,
    so the rows are read first, handed back to the writer and saved again at once.  Rows carry
    the optimizer steps done (:func:`glubench.train.module.log_at_step`): those up to
    ``resume_step`` were written before the checkpoint and are kept.  Lightning's
    ``LearningRateMonitor`` labels the LR of step ``k + 1`` with ``k`` and logs it when that step
    starts, after checkpoint ``k``: such rows at ``resume_step`` are dropped, and every row past
    it, because the resumed run logs them again.
    """
    path = Path(csv_logger.log_dir) / "metrics.csv"
    if global_rank() != 0:
        return 0
    keys, rows = [], []
    if path.is_file():
        with open(path, newline="") as f:
            reader = csv.DictReader(f)
            keys = list(reader.fieldnames or [])
            rows = [r for r in reader if r.get("step") not in (None, "") and _before(r, resume_step)]
    with warnings.catch_warnings():
        # Creating the writer removes metrics.csv and warns that the previous log files will be deleted:
        # untrue here, the rows up to the checkpoint were read above and are written back at once.
        warnings.filterwarnings("ignore", message="Experiment logs directory .* exists and is not empty")
        writer = csv_logger.experiment
    if not rows:
        return 0
    writer.metrics = [{k: v for k, v in r.items() if v != ""} for r in rows] + writer.metrics
    writer.metrics_keys = sorted(set(writer.metrics_keys) | set(keys))
    writer.save()
    return len(rows)


def _before(row: dict[str, str], resume_step: int) -> bool:
    step = int(float(row["step"]))
    only_lr = all(k == "step" or k.startswith("lr-") or not v for k, v in row.items())
    return step < resume_step or (step == resume_step and not only_lr)
