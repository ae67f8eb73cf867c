"""``glubench-export``: a glubench checkpoint as a Hugging Face ``transformers`` folder (a Hydra app).

``glubench-export ckpt_path=.../last.ckpt`` writes ``<run dir>/model/`` (``out_dir=`` elsewhere), which
``AutoModelForCausalLM.from_pretrained`` and ``AutoTokenizer.from_pretrained`` load; ``logger=wandb`` also
logs the folder as a W&B model artifact.  What is written and how it is checked:
:mod:`glubench.export.folder`; which class computes which model: :mod:`glubench.export.convert`.
Needs ``pip install 'glubench[export]'`` (transformers).
"""

from __future__ import annotations

import importlib.util
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import hydra
from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, DictConfig, OmegaConf

from glubench.cli.rejected import run_or_reject
from glubench.core.errors import ConfigError
from glubench.core.paths import CONF_DIR
from glubench.core.secrets import redact
from glubench.train.config_rules import output_dir
from glubench.train.schema import LoggerConfig

log = logging.getLogger("glubench")

MODEL_DIR = "model"


@dataclass
class ExportConfig:
    """``glubench-export`` (``conf/export.yaml``): ``out_dir`` null is ``<run dir>/model``; ``verify`` loads the
    folder back and compares logits before keeping it; ``logger=wandb`` logs it as a W&B model artifact."""

    ckpt_path: str = MISSING
    out_dir: Optional[str] = None
    verify: bool = True
    overwrite: bool = False
    logger: LoggerConfig = field(default_factory=LoggerConfig)
    seed: int = 0
    experiment_name: str = "export"


ConfigStore.instance().store(name="base_export", node=ExportConfig)


def require(module: str, extra: str, command: str) -> None:
    """Raises:
        ConfigError: ``module`` is not installed (names the extra that brings it)."""
    if importlib.util.find_spec(module) is None:
        raise ConfigError(f"{command} needs {module}: pip install 'glubench[{extra}]'")


def export(cfg: DictConfig) -> dict:
    """Export ``cfg.ckpt_path``; returns the record of ``glubench_export.json`` plus ``out_dir``.

    Raises:
        ConfigError (ExportError): a bad ``ckpt_path`` or ``out_dir``, a checkpoint the export cannot represent.
    """
    require("transformers", "export", "glubench-export")
    # The lazy boundary: torch and transformers load here, after the check (--help and bad input stay fast).
    from glubench.export.folder import export_folder
    from glubench.train.evaluate import load_checkpoint

    ckpt = Path(os.path.expanduser(str(cfg.ckpt_path)))
    state, hparams, data, step = load_checkpoint(ckpt)
    out = Path(os.path.expanduser(cfg.out_dir)) if cfg.out_dir else output_dir() / MODEL_DIR
    quiet_transformers()
    record = export_folder(hparams, data, state["state_dict"], out, verify=cfg.verify, overwrite=cfg.overwrite,
                           source={"ckpt_path": str(ckpt), "step": step, "corpus": data.get("name")})
    if any(node is not None for node in (cfg.logger or {}).values()):
        log_artifact(cfg, out, record)
    log.info(f"glubench-export: {record['ffn']} at step {step} -> {out} ({record['class']}"
             + (", needs trust_remote_code=True" if record["remote_code"] else "")
             + (f", max |logit diff| {record['max_abs_logit_diff']:.2g}" if record["max_abs_logit_diff"] is not None
                else "") + ")")
    return {**record, "out_dir": str(out)}


def quiet_transformers() -> None:
    """No per-file progress bars from ``transformers`` (loading and saving a small folder prints several)."""
    from transformers.utils import logging as hf_logging  # an optional extra ([export])

    hf_logging.disable_progress_bar()


def log_artifact(cfg: DictConfig, folder: Path, record: dict) -> None:
    """Log ``folder`` as a W&B model artifact ``hf-<ffn>`` (metadata: the export record) in a ``job_type=export``
    run; other loggers of ``cfg.logger`` are ignored (an export has no metrics)."""
    # past export()'s boundary, but this module stays light for --help
    from glubench.train.build import build_loggers
    from glubench.train.loggers import GlubenchWandbLogger
    from glubench.train.task import finish_wandb

    if cfg.logger.get("wandb") is not None and cfg.logger.wandb.name is None:
        cfg.logger.wandb.name = f"export-{record['ffn']}"
    loggers = build_loggers(cfg, output_dir(), config=redact(OmegaConf.to_container(cfg, resolve=True)),
                            job_type="export")
    status = "failed"
    try:
        for lg in loggers:
            if isinstance(lg, GlubenchWandbLogger):
                import wandb  # a GlubenchWandbLogger has loaded it already

                artifact = wandb.Artifact(f"hf-{record['ffn']}", type="model", metadata=record)
                artifact.add_dir(str(folder))
                lg.experiment.log_artifact(artifact)
        status = "completed"
    finally:
        finish_wandb(status)


@hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name="export")
def main(cfg: DictConfig) -> None:
    """``glubench-export ckpt_path=... [out_dir=...] [logger=wandb]``; exit 2 with one line on bad input."""
    run_or_reject("glubench-export", export, cfg)


def cli() -> None:
    """The ``glubench-export`` console script."""
    main()


if __name__ == "__main__":
    cli()
