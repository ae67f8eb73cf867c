"""How a run's objects are built: the datamodule, the LightningModule, the Trainer, its callbacks and
loggers, each from its config node with ``hydra.utils.instantiate``, the one wiring style; glubench adds
only what exists at run time (the typed ``data`` and validated ``model`` sections, the budget's steps,
seconds and FLOPs per token, the run dir, the resume point, the W&B run's config and default tags, the
checkpoint IO plugin).

:mod:`glubench.train.task` and :mod:`glubench.train.evaluate` build with these.  Lightning and W&B are
imported inside the functions that need them, so importing this module stays fast.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from hydra.errors import InstantiationException
from hydra.utils import instantiate
from lightning.pytorch.callbacks import ModelCheckpoint
from omegaconf import DictConfig, OmegaConf

from glubench.core.errors import ConfigError
from glubench.train.callbacks import FitSignals
from glubench.train.config_rules import check_splits
from glubench.train.faults import AtomicCheckpointIO


def default_tags(cfg: DictConfig) -> list[str]:
    """W&B tags every run gets: its FFN, model size and corpus (``ffn:swiglu``, ``size:d128-L4``, ``data:pydocs``)."""
    m = cfg.model
    return [f"ffn:{m.ffn}", f"size:d{m.d_model}-L{m.n_layers}", f"data:{cfg.data.name}", f"init:{m.init}"]


def build_loggers(cfg: DictConfig, out: Path, resume_step: int | None = None, config: dict | None = None,
                  job_type: str | None = None) -> list:
    """The loggers of ``cfg.logger`` (``conf/logger/``), built with ``hydra.utils.instantiate``.

    Each gets the run dir and the resume point; W&B also the run's (redacted) config, its default
    group (``experiment_name``) and name (``<ffn>-s<seed>``) and the default tags.

    Raises:
        ConfigError: a logger's arguments are not accepted (one line naming the logger).
    """

    loggers = []
    for name, node in (cfg.logger or {}).items():
        if node is None:
            continue
        extra: dict[str, Any] = {"save_dir": str(out), "resume_step": resume_step}
        if name == "wandb":
            ffn = cfg.model.ffn if "model" in cfg else "?"
            extra.update(run_config=config, default_tags=default_tags(cfg) if "model" in cfg else [],
                         group=node.group or cfg.experiment_name, name=node.name or f"{ffn}-s{cfg.seed}",
                         verbose=bool(cfg.get("verbose", False)))
            if job_type:
                extra["job_type"] = job_type
        # not recursive: the run's config (W&B's) holds _target_ nodes of its own, which must stay data
        loggers.append(instantiate_node(f"logger.{name}", node, _recursive_=False, _convert_="all", **extra))
    return loggers


def build_callbacks(cfg: DictConfig, runtime: dict[str, dict[str, Any]] | None = None, interrupts=None) -> list:
    """The callbacks of ``cfg.callbacks`` (``conf/callbacks/``), built with ``hydra.utils.instantiate``.

    An entry that is null or has ``enabled: false`` is left out (``enabled`` is not passed on);
    :class:`~glubench.train.callbacks.FitSignals` is always added (it lets a SIGTERM outside
    ``fit`` still write ``status: interrupted``).

    Args:
        cfg: the run config.
        runtime: per callback name, arguments known only once the run is planned (the budget's
            seconds, the FLOPs per token); each is passed unless the config sets that argument.
        interrupts: the run's :class:`~glubench.train.faults.Interrupts`, for ``FitSignals``.

    Raises:
        ConfigError: a callback's arguments are not accepted (one line naming it).
    """
    built = []
    for name, node in (cfg.callbacks or {}).items():
        if node is None or not node.get("enabled", True):
            continue
        args = {k: v for k, v in OmegaConf.to_container(node, resolve=True).items() if k != "enabled"}
        for key, value in (runtime or {}).get(name, {}).items():
            if args.get(key) is None:
                args[key] = value
        built.append(instantiate_node(f"callbacks.{name}", OmegaConf.create(args)))
    return [*built, FitSignals(interrupts)]


def build_trainer(cfg: DictConfig, out: Path, callbacks: list, loggers: list, **override: Any):
    """``lightning.Trainer`` from ``cfg.trainer`` (every key is a Trainer argument) plus what glubench builds."""
    # callbacks.model_checkpoint is the checkpoint switch: without it Lightning would add its own
    # ModelCheckpoint and write epoch=*.ckpt files the user turned off (callbacks=none, ladders).
    if cfg.trainer.get("enable_checkpointing") is None and not any(isinstance(c, ModelCheckpoint) for c in callbacks):
        override.setdefault("enable_checkpointing", False)
    return instantiate_node("trainer", cfg.trainer, callbacks=callbacks, logger=loggers or False,
                        plugins=[AtomicCheckpointIO()], default_root_dir=cfg.trainer.default_root_dir or str(out),
                        **override)


def instantiate_node(key: str, node: DictConfig, **kwargs: Any) -> Any:
    """``hydra.utils.instantiate`` whose argument errors become one :class:`ConfigError` line naming ``key``."""
    try:
        return instantiate(node, **kwargs)
    except InstantiationException as e:
        cause = e.__cause__ or e
        msg = str(cause).splitlines()[0] if str(cause) else type(cause).__name__
        raise ConfigError(f"{key}: {node.get('_target_')} does not accept this config ({msg})") from None


def build_datamodule(cfg: DictConfig, model_cfg, plan):
    """The datamodule of ``cfg.datamodule`` (``hydra.utils.instantiate``) over the typed ``data`` section, with
    its tokens ready and the validation split checked against ``model.seq_len``.

    Raises:
        ConfigError: a data file, key or split the run cannot use (the message names the key).
    """
    dm = instantiate_node("datamodule", cfg.datamodule, data=cfg.data, seq_len=model_cfg.seq_len, seed=cfg.seed,
                      num_batches=plan.max_steps * cfg.trainer.accumulate_grad_batches, _convert_="object")
    try:
        dm.setup()
    except (ValueError, FileNotFoundError) as e:  # data errors name their key (data.files, data.val_percent)
        raise ConfigError(str(e)) from e
    check_splits(model_cfg, dm.splits, cfg.data.name)
    return dm


def build_module(cfg: DictConfig, model_cfg, plan):
    """The LightningModule of ``cfg.module`` (``hydra.utils.instantiate``) for the validated ``model_cfg``,
    ``cfg.optim`` and the plan's optimizer steps (the schedule's horizon).

    Raises:
        ConfigError: the module's arguments are not accepted (one line naming it).
    """
    return instantiate_node("module", cfg.module, model=model_cfg, optim=cfg.optim, max_steps=plan.max_steps,
                            _convert_="all")
