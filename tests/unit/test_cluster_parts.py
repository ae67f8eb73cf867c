"""Cluster configs in-process: the SLURM launcher's submitit parameters and sbatch lines, the launcher rule
checked before anything is submitted, and every cluster config composes.  The launchers and DDP run in
tests/integration/test_cluster.py."""

import os
import sys

import pytest
import yaml
from omegaconf import OmegaConf

from glubench.cli.main import main
from glubench.sweep.cluster import check_launcher, check_multirun_strategy
from glubench.train.config_rules import ConfigError

pytest.importorskip("hydra_plugins.hydra_submitit_launcher",
                    reason='needs the [cluster] extra: pip install -e ".[cluster]"')


def _cli(argv, monkeypatch, capsys):
    """Run the ``glubench`` entry point in this process; return (exit code, stdout, stderr)."""
    from hydra.core.hydra_config import HydraConfig

    monkeypatch.setattr(sys, "argv", ["glubench", *argv])
    code = 0
    try:
        main()
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else 1
        if not isinstance(e.code, int) and e.code:
            print(e.code, file=sys.stderr)
    finally:
        HydraConfig.instance().cfg = None  # leave no Hydra job state to later in-process runs
    out = capsys.readouterr()
    return code, out.out, out.err


def test_slurm_config_gives_the_expected_submitit_parameters(tmp_path, monkeypatch, capsys):
    overrides = ["hydra/launcher=slurm", "trainer=ddp", "trainer.devices=4", "hydra.launcher.partition=gpu",
                 "hydra.launcher.account=proj", "hydra.launcher.qos=high", f"hydra.sweep.dir={tmp_path}/sweep"]
    code, out, _ = _cli([*overrides, "--cfg", "hydra"], monkeypatch, capsys)
    assert code == 0
    wiring = yaml.safe_load(out)["hydra"]["launcher"]  # unresolved: the launcher follows the trainer
    assert (wiring["tasks_per_node"], wiring["gpus_per_node"]) == ("${trainer.devices}", "${trainer.devices}")
    # `--cfg hydra --resolve` cannot see trainer.*, so resolve the whole config.
    code, out, _ = _cli([*overrides, "--cfg", "all", "--resolve"], monkeypatch, capsys)
    assert code == 0
    launcher = yaml.safe_load(out)["hydra"]["launcher"]
    assert launcher["_target_"].endswith("SlurmLauncher")
    expected = {"partition": "gpu", "account": "proj", "qos": "high", "timeout_min": 240, "gpus_per_node": 4,
                "tasks_per_node": 4, "nodes": 1, "cpus_per_task": 8, "mem_gb": 64, "array_parallelism": 8,
                "signal_delay_s": 120, "max_num_timeout": 3, "submitit_folder": f"{tmp_path}/sweep/.submitit/%j"}
    assert {k: launcher[k] for k in expected} == expected

    # What sbatch would receive: the plugin's parameter mapping on submitit's SLURM executor
    # (which only needs an `srun` on the PATH to be built).
    import submitit
    from hydra_plugins.hydra_submitit_launcher.config import BaseQueueConf

    fake_bin = tmp_path / "bin"
    fake_bin.mkdir()
    (fake_bin / "srun").write_text("#!/bin/sh\nexit 0\n")
    (fake_bin / "srun").chmod(0o755)
    monkeypatch.setenv("PATH", f"{fake_bin}{os.pathsep}{os.environ['PATH']}")
    params = {k: v for k, v in launcher.items() if k != "_target_"}
    executor = submitit.AutoExecutor(cluster="slurm", folder=params.pop("submitit_folder"),
                                     slurm_max_num_timeout=params.pop("max_num_timeout"))
    base = set(OmegaConf.structured(BaseQueueConf).keys())
    executor.update_parameters(**{k if k in base else f"slurm_{k}": v for k, v in params.items()})
    sbatch = executor._executor._make_submission_file_text("python -m glubench", "uid")
    for line in ("--partition=gpu", "--account=proj", "--qos=high", "--gpus-per-node=4", "--ntasks-per-node=4",
                 "--nodes=1", "--cpus-per-task=8", "--mem=64GB", "--time=240", "--signal=USR2@120",
                 "#SBATCH --requeue\n"):  # the warning before the time limit, and requeue by default
        assert line in sbatch, line


def test_launcher_rule_fails_before_submission_and_names_the_key(tmp_path, monkeypatch, capsys):
    argv = ["--multirun", "hydra/launcher=slurm", "trainer=ddp", "trainer.devices=2", "hydra.launcher.tasks_per_node=1",
            f"hydra.sweep.dir={tmp_path}/sweep", "model.ffn=relu,gelu"]
    code, _, err = _cli(argv, monkeypatch, capsys)
    assert code != 0
    assert "hydra.launcher.tasks_per_node=1 must equal trainer.devices=2" in err
    assert not (tmp_path / "sweep" / ".submitit").exists()  # nothing was submitted


SLURM = "hydra_plugins.hydra_submitit_launcher.submitit_launcher.SlurmLauncher"


def test_launcher_rule():
    slurm = OmegaConf.create({"_target_": SLURM, "tasks_per_node": 2, "gpus_per_node": 2, "nodes": 1})
    trainer = OmegaConf.create({"devices": 2, "num_nodes": 1, "accelerator": "gpu", "strategy": "ddp"})
    check_launcher(slurm, trainer)
    check_launcher(OmegaConf.create({"_target_": "basic"}), OmegaConf.create({"devices": "auto"}))  # not submitit
    with pytest.raises(ConfigError, match=r"hydra.launcher.gpus_per_node=1 must equal trainer.devices=2"):
        check_launcher(OmegaConf.merge(slurm, {"gpus_per_node": 1}), trainer)
    with pytest.raises(ConfigError, match=r"trainer.devices='auto' must be a positive integer"):
        check_launcher(slurm, OmegaConf.merge(trainer, {"devices": "auto"}))
    with pytest.raises(ConfigError, match=r"hydra.launcher.nodes=2 must equal trainer.num_nodes=1"):
        check_launcher(OmegaConf.merge(slurm, {"nodes": 2}), trainer)
    # A basic-launcher --multirun with DDP on 2 devices would re-launch the sweep from each rank.
    with pytest.raises(ConfigError, match="hydra/launcher=local"):
        check_multirun_strategy(trainer, multirun=True, launcher_target="basic")
    check_multirun_strategy(trainer, multirun=False, launcher_target="basic")
    check_multirun_strategy(trainer, multirun=True, launcher_target=SLURM)


def test_every_cluster_config_composes(compose_cfg):
    for overrides in (["hydra/launcher=slurm"], ["hydra/launcher=local"], ["trainer=ddp"], ["trainer=fsdp"]):
        cfg = compose_cfg(overrides, hydra=True)
        OmegaConf.to_container(cfg.hydra.launcher, resolve=True, throw_on_missing=True)
        OmegaConf.to_container(cfg.trainer, resolve=True, throw_on_missing=True)
    assert compose_cfg(["trainer=fsdp"]).trainer.strategy == "fsdp"
