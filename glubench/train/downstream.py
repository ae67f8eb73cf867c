"""``glubench-eval tasks=[...]``: lm-evaluation-harness on a checkpoint, through its Hugging Face export.

The checkpoint is exported (and checked) to ``<run dir>/model/`` by :func:`glubench.export.folder.export_folder`,
then the harness's ``hf`` model scores it (:func:`glubench.export.harness.evaluate_folder`): the same as
``lm_eval --model hf --model_args pretrained=<run dir>/model`` (plus ``,trust_remote_code=True`` when the export
has its own modeling file).  The harness's results go to ``<run dir>/lm_eval.json``, a ``{task: {metric: value}}``
summary to ``eval.json``'s ``tasks`` and, when W&B is on, to the run's summary as ``lm_eval/<task>/<metric>``.
"""

from __future__ import annotations

import importlib.util
import logging
import sys
from pathlib import Path

import torch
from omegaconf import DictConfig

from glubench.core.errors import ConfigError
from glubench.core.io import atomic_write_json
from glubench.export.harness import check_tasks, evaluate_folder, summarize

log = logging.getLogger(__name__)

HARNESS_FILE = "lm_eval.json"
EXPORT_DIR = "model"


def check_downstream(cfg: DictConfig) -> None:
    """Check ``cfg.tasks`` before any scoring.

    Raises:
        ConfigError: transformers or lm_eval missing, an unknown task, a bad ``harness.*`` value.
    """
    if importlib.util.find_spec("transformers") is None:
        raise ConfigError("tasks=[...] needs transformers and lm-evaluation-harness: pip install 'glubench[eval]'")
    if cfg.harness.batch_size < 1:
        raise ConfigError(f"harness.batch_size={cfg.harness.batch_size} must be a positive integer")
    check_tasks(list(cfg.tasks), cfg.harness.include_path)


def harness_device(cfg: DictConfig) -> str:
    """``cuda`` when a GPU is there and ``trainer.accelerator`` allows it, else ``cpu``."""
    return "cuda" if torch.cuda.is_available() and cfg.trainer.accelerator in ("auto", "gpu", "cuda") else "cpu"


def run_downstream(cfg: DictConfig, hparams: dict, data: dict, state: dict, out: Path, source: dict) -> dict:
    """Export the checkpoint to ``out/model``, run the harness on ``cfg.tasks``, write ``out/lm_eval.json``; returns
    the ``{task: {metric: value}}`` summary (also logged to the active W&B run's summary).

    Raises:
        ConfigError (ExportError): a checkpoint the export cannot represent.
    """
    from glubench.export.folder import export_folder  # needs transformers, an optional extra ([eval])

    folder = Path(out) / EXPORT_DIR
    record = export_folder(hparams, data, state["state_dict"], folder, overwrite=True, source=source)
    h = cfg.harness
    results = evaluate_folder(folder, list(cfg.tasks), include_path=h.include_path, num_fewshot=h.num_fewshot,
                              limit=h.limit, batch_size=h.batch_size, device=harness_device(cfg),
                              trust_remote_code=record["remote_code"])
    atomic_write_json(Path(out) / HARNESS_FILE, results)
    summary = summarize(results)
    if "wandb" in sys.modules:
        import wandb  # only when a logger already loaded it: a run without W&B never imports it

        if wandb.run is not None:
            wandb.run.summary.update({f"lm_eval/{task}/{metric}": value for task, metrics in summary.items()
                                      for metric, value in metrics.items()})
    for task, metrics in summary.items():
        log.info("lm-eval %s: %s", task, ", ".join(f"{k}={v:.4f}" for k, v in metrics.items()))
    return summary
