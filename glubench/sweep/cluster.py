"""Cluster jobs: the SLURM/submitit launcher rules and how the ranks of a multi-device job start.

One process per device, started *outside* the Python job: ``hydra/launcher=slurm`` (Hydra's submitit
plugin) submits one array task per variant with ``tasks_per_node = gpus_per_node = trainer.devices``,
``srun`` starts one process per GPU running the same pickled Hydra job, and Lightning's
``SLURMEnvironment`` reads the ranks; ``hydra/launcher=local`` does the same on one machine
(:func:`export_submitit_ranks`).  A single run (``glubench trainer=ddp``) uses Lightning's own launcher,
which re-runs the command for ranks ≥ 1 with the parent's ``hydra.run.dir``; in a basic-launcher
``--multirun`` that re-run would start a new sweep, so it is refused (:func:`check_multirun_strategy`).
Only global rank 0 writes ``results.json`` and logs to W&B (:func:`glubench.core.ranks.is_global_zero`).
"""

from __future__ import annotations

import os
from typing import Any

from hydra.core.hydra_config import HydraConfig
from hydra.experimental.callback import Callback
from hydra.types import RunMode

from glubench.core.errors import ConfigError

MULTI_PROCESS_STRATEGIES = ("ddp", "fsdp", "deepspeed")


def _as_int(value: Any) -> int | None:
    try:
        return int(value)
    except (TypeError, ValueError):
        return None


def check_launcher(launcher: Any, trainer: Any) -> None:
    """For a submitit ``hydra.launcher`` (others pass), enforce ``tasks_per_node == gpus_per_node ==
    trainer.devices`` (one process per device, started by submitit) and ``nodes == trainer.num_nodes``.

    Raises:
        ConfigError: naming the keys that disagree and which one to change.
    """
    target = str(launcher.get("_target_", "")) if launcher is not None else ""
    if "submitit" not in target:
        return
    devices = _as_int(trainer.devices)
    tasks, gpus, nodes = (launcher.get(k) for k in ("tasks_per_node", "gpus_per_node", "nodes"))
    slurm = "SlurmLauncher" in target
    if devices is None or devices < 1:
        raise ConfigError(f"trainer.devices={trainer.devices!r} must be a positive integer under hydra/launcher="
                          f"{'slurm' if slurm else 'local'} (one process per device is started by the launcher)")
    if _as_int(tasks) != devices:
        raise ConfigError(f"hydra.launcher.tasks_per_node={tasks} must equal trainer.devices={devices} (Lightning "
                          f"needs one process per device): set hydra.launcher.tasks_per_node={devices} "
                          f"or trainer.devices={tasks}")
    if slurm and str(trainer.accelerator) in ("gpu", "cuda", "auto") and _as_int(gpus) != devices:
        raise ConfigError(f"hydra.launcher.gpus_per_node={gpus} must equal trainer.devices={devices} "
                          f"= hydra.launcher.tasks_per_node: set hydra.launcher.gpus_per_node={devices} "
                          "(or trainer.accelerator=cpu for a CPU-only job)")
    if _as_int(nodes) != _as_int(trainer.num_nodes):
        raise ConfigError(f"hydra.launcher.nodes={nodes} must equal trainer.num_nodes={trainer.num_nodes}: "
                          f"set trainer.num_nodes={nodes}")


def check_multirun_strategy(trainer: Any, multirun: bool, launcher_target: str) -> None:
    """Refuse (ConfigError naming the launcher to use) a multi-process strategy with ``devices > 1`` in a
    basic-launcher ``--multirun``, unless the ranks were started outside Lightning (``LOCAL_RANK``,
    ``SLURM_PROCID`` or ``TORCHELASTIC_RUN_ID`` set)."""
    strategy = str(trainer.strategy)
    devices = _as_int(trainer.devices)
    many = devices is None or devices > 1 or _as_int(trainer.num_nodes) != 1
    external = any(k in os.environ for k in ("LOCAL_RANK", "SLURM_PROCID", "TORCHELASTIC_RUN_ID"))
    if (multirun and many and strategy.startswith(MULTI_PROCESS_STRATEGIES) and not strategy.endswith("spawn")
            and "submitit" not in launcher_target and not external):
        raise ConfigError(
            f"trainer.strategy={strategy} with trainer.devices={trainer.devices} cannot run under the basic "
            "--multirun launcher (each rank would start the sweep again): add hydra/launcher=local "
            "(one machine) or hydra/launcher=slurm, or run the variants one at a time without --multirun")


def export_submitit_ranks() -> None:
    """In a multi-task submitit *local* job, export ``LOCAL_RANK``, ``NODE_RANK``, ``WORLD_SIZE``,
    ``MASTER_ADDR`` and ``MASTER_PORT`` so Lightning joins the existing processes.  No-op outside
    submitit, for single-task jobs, and on SLURM (Lightning reads SLURM's own variables there).
    """
    if "SUBMITIT_LOCAL_JOB_ID" not in os.environ or "SLURM_PROCID" in os.environ:
        return
    import submitit  # optional: the [cluster] extra

    env = submitit.JobEnvironment()
    if env.num_tasks <= 1:
        return
    submitit.helpers.TorchDistributedEnvironment().export(set_cuda_visible_devices=False)
    os.environ["NODE_RANK"] = str(env.node)
    # Lightning's rank_zero_only.rank is its own to set: the Trainer's strategy sets it from these variables
    # when the Trainer is built (set_world_ranks), before anything rank-zero-only runs in the job.


class LauncherCheck(Callback):
    """Hydra callback: runs :func:`check_launcher` once before a sweep submits any job."""

    def on_multirun_start(self, config, **kwargs) -> None:
        try:
            check_launcher(config.hydra.launcher, config.trainer)
            check_multirun_strategy(config.trainer, True, str(config.hydra.launcher.get("_target_", "")))
        except ConfigError as e:
            raise SystemExit(f"glubench: error: {e}") from None


def check_job_launch(cfg: Any) -> None:
    """Per-job checks inside Hydra (:func:`check_launcher`, :func:`check_multirun_strategy`: ConfigError),
    then join submitit's ranks."""
    if not HydraConfig.initialized():
        return
    hc = HydraConfig.get()
    check_launcher(hc.launcher, cfg.trainer)
    check_multirun_strategy(cfg.trainer, hc.mode == RunMode.MULTIRUN, str(hc.launcher.get("_target_", "")))
    export_submitit_ranks()
