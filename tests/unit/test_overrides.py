"""glubench.cli.overrides: the overrides Hydra would refuse at length get one line with the nearest key;
everything else is left alone."""

import pytest

from glubench.cli.overrides import check_overrides


@pytest.mark.parametrize("argv,expected", [
    (["trainer.max_step=20"], "trainer.max_step=20: no key 'max_step' in trainer; did you mean trainer.max_steps?"),
    (["seeds=3"], "seeds=3: no key 'seeds' in the config; did you mean seed?"),
    (["model.dmodel=64"], "model.dmodel=64: no key 'dmodel' in model; did you mean model.d_model?"),
    # a sweep's values are checked too (the first one composes)
    (["-m", "model.ffn=relu,gelu", "optim.lr_=1e-3,2e-3"], "optim.lr_=1e-3,2e-3: no key 'lr_' in optim; did you "
                                                            "mean optim.lr?"),
    # only composing tells: a node the chosen groups leave null, a key of an open dict
    (["logger=csv", "logger.wandb.tags=[x,y]"],
     "logger.wandb.tags=[x,y]: logger.wandb is null with logger=csv; choose logger=both|wandb"),
    (["experiment=ci_variants", "logger.wandb.project=p"],
     "logger.wandb.project=p: logger.wandb is null with logger=none; choose logger=both|wandb"),
    (["callbacks.model_chekpoint.save_top_k=2"], "callbacks.model_chekpoint.save_top_k=2: no key 'model_chekpoint' "
                                                 "in callbacks; did you mean callbacks.model_checkpoint?"),
])
def test_refused_overrides_get_one_line(argv, expected):
    assert check_overrides(argv) == expected


@pytest.mark.parametrize("argv", [
    [],
    ["experiment=ci", "trainer.max_steps=20", "model.ffn=swiglu", "logger.wandb.tags=[a,b]"],
    ["+trainer.max_step=20"],  # an added key: unknown_keys refuses it later, with its own hint
    ["-m", "model.ffn=relu,gelu", "seed=range(0,3)", "hydra.sweep.dir=x", "hydra/launcher=basic"],
    ["callbacks.lr_monitor=null", "logger=csv", "~logger.csv"],
    ["--help"], ["--cfg", "job", "trainer.max_steps=5"],
])
def test_valid_overrides_pass(argv):
    assert check_overrides(argv) is None


def test_eval_overrides():
    assert check_overrides(["ckpt_path=x", "split=val"], "eval") is None
    assert check_overrides(["ckpt_path=x", "data.files=y"], "eval").startswith(
        "data.files=y: data is null (no data= chosen); choose data=fineweb_edu|pydocs|text|")


@pytest.mark.parametrize("experiment,name", [
    ("ci_variants", "{:03d}_relu_s0"), ("ladder_ci", "{:03d}_relu_d8_lr1.0_s0"),
    ("ladder_gpu", "{:03d}_relu_d256_lr1.0_s0")])
def test_sweep_job_folders_sort_in_job_order(experiment, name, compose_cfg):
    from omegaconf import open_dict

    cfg = compose_cfg([f"experiment={experiment}"], hydra=True)
    names = []
    for num in (0, 1, 2, 10, 11, 100):
        with open_dict(cfg):
            cfg.hydra.job.num = num
        names.append(cfg.hydra.sweep.subdir)
    assert names == [name.format(n) for n in (0, 1, 2, 10, 11, 100)] and sorted(names) == names
