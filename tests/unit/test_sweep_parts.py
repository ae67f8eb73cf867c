"""The sweep glue in-process (glubench.sweep.hydra_callbacks): experiments as one-word sweeps, the jobs Hydra's
BasicSweeper will launch, each validated once before any runs, the time estimate, and the report's exit status.
The sweeps run end to end in tests/integration/test_sweep.py."""

import math
from pathlib import Path

import pytest
from hydra import initialize_config_dir
from omegaconf import OmegaConf

from glubench.core.paths import CONF_DIR
from glubench.sweep.hydra_callbacks import SweepReport
from glubench.train.results import RunResult


@pytest.mark.parametrize("name,variants,seeds", [
    ("glu_variants_cpu", ["relu", "gelu", "swish", "glu", "bilinear", "reglu", "geglu", "swiglu"], [0, 1, 2]),
    ("glu_variants_gpu", ["relu", "gelu", "swish", "glu", "bilinear", "reglu", "geglu", "swiglu"], [0, 1, 2]),
    ("ci_variants", ["relu", "gelu", "swiglu"], [0, 1]),
])
def test_experiments_are_one_word_sweeps(name, variants, seeds, compose_cfg):
    cfg = compose_cfg([f"experiment={name}"], hydra=True)
    assert str(cfg.hydra.mode) == "RunMode.MULTIRUN"
    params = cfg.hydra.sweeper.params
    assert params["model.ffn"].split(",") == variants
    assert [int(s) for s in str(params.seed).split(",")] == seeds
    assert cfg.experiment_name == name


def test_job_overrides_are_the_jobs_of_the_sweep_written_out_by_hand(compose_cfg):
    """``glubench experiment=ci_variants model.ffn=relu,swiglu optim.lr=1e-3,3e-3``: the experiment sweeps
    model.ffn over relu,gelu,swiglu and seed over 0,1; the command line's model.ffn replaces the experiment's,
    the experiment= choice is in every job, and the keys vary in that order, the first slowest."""
    from omegaconf import open_dict

    from glubench.sweep.hydra_callbacks import job_overrides

    cfg = compose_cfg(["experiment=ci_variants"], hydra=True)
    with open_dict(cfg):
        cfg.hydra.overrides.task = ["experiment=ci_variants", "model.ffn=relu,swiglu", "optim.lr=1e-3,3e-3"]
    e = "experiment=ci_variants"
    assert job_overrides(cfg) == [
        ["model.ffn=relu", "seed=0", e, "optim.lr=0.001"],
        ["model.ffn=relu", "seed=0", e, "optim.lr=0.003"],
        ["model.ffn=relu", "seed=1", e, "optim.lr=0.001"],
        ["model.ffn=relu", "seed=1", e, "optim.lr=0.003"],
        ["model.ffn=swiglu", "seed=0", e, "optim.lr=0.001"],
        ["model.ffn=swiglu", "seed=0", e, "optim.lr=0.003"],
        ["model.ffn=swiglu", "seed=1", e, "optim.lr=0.001"],
        ["model.ffn=swiglu", "seed=1", e, "optim.lr=0.003"],
    ]


def test_job_overrides_other_sweepers_and_bad_sweeps(compose_cfg):
    """Another sweeper enumerates its own jobs (None); an interval sweep is one line naming the override."""
    from omegaconf import open_dict

    from glubench.core.errors import ConfigError
    from glubench.sweep.hydra_callbacks import job_overrides

    optuna = OmegaConf.create({"hydra": {"sweeper": {"_target_": "hydra_plugins.optuna.OptunaSweeper"},
                                         "overrides": {"task": ["seed=0,1"]}}})
    assert job_overrides(optuna) is None
    cfg = compose_cfg(["experiment=ci"], hydra=True)
    with open_dict(cfg):
        cfg.hydra.overrides.task = ["optim.lr=interval(0.1, 1)"]
    with pytest.raises(ConfigError, match=r"^optim.lr=interval\(0.1, 1\): the basic sweeper runs only choice and "
                                          r"range sweeps, not INTERVAL_SWEEP \(use a search sweeper\)$"):
        job_overrides(cfg)


def test_multirun_start_validates_each_job_once_and_logs_the_estimate(monkeypatch, caplog, compose_cfg):
    """experiment=ci_variants is 3 variants x 2 seeds: six jobs, six validations, none repeated
    for the time estimate; the messages go through logging."""
    import logging

    import glubench.sweep.hydra_callbacks as sweep
    import glubench.train.config_rules as validate

    monkeypatch.setattr(sweep, "_measure_cpu_flops", lambda cfg, mc: (1e9, 2e9))
    monkeypatch.setattr(sweep, "_val_tokens", lambda cfg: 1000)
    seen = []
    real = validate.validate_config

    def counting(cfg):
        seen.append((cfg.model.ffn, cfg.seed))
        return real(cfg)

    monkeypatch.setattr(sweep, "validate_config", counting)  # where the callback looks it up
    caplog.set_level(logging.INFO, logger="glubench")
    cfg = compose_cfg(["experiment=ci_variants", "trainer.accelerator=cpu", "hydra.sweep.dir=/nowhere/sweep"],
                      hydra=True)
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):  # the callback composes each job
        SweepReport().on_multirun_start(cfg, config_name="config")
    assert sorted(seen) == [(f, s) for f in ("gelu", "relu", "swiglu") for s in (0, 1)]
    messages = [r.getMessage() for r in caplog.records if r.name == "glubench.sweep.hydra_callbacks"]
    assert "glubench: sweep of 6 jobs -> /nowhere/sweep" in messages
    assert any(m.startswith("glubench: estimated total time: ~") and "for 6 jobs" in m for m in messages)


def test_cpu_estimate_counts_tokens_and_validations(monkeypatch, compose_cfg):
    """The estimate is Σ tokens·fpt/rate + n_val·val_tokens·fpt/3/rate + overhead; with the rates
    fixed, check it against the formula by hand."""
    import glubench.sweep.hydra_callbacks as sweep
    import glubench.train.config_rules as validate
    from glubench.nn.flops import flops_per_token

    monkeypatch.setattr(sweep, "_measure_cpu_flops", lambda cfg, mc: (1e9, 2e9))
    monkeypatch.setattr(sweep, "_val_tokens", lambda cfg: 1000)
    cfgs = [compose_cfg(["experiment=ci", f"model.ffn={f}", "trainer.accelerator=cpu"]) for f in ("relu", "swiglu")]
    model_cfgs = [validate.validate_config(c) for c in cfgs]

    def no_second_validation(cfg):
        raise AssertionError("estimate_seconds validated a config again")

    monkeypatch.setattr(sweep, "validate_config", no_second_validation)
    seconds, how = SweepReport(job_overhead_s=2.0).estimate_seconds(cfgs, model_cfgs)
    # nano: d=32, L=2, T=32, vocab 256, d_ff 128 (swiglu: hidden 85, 3 matrices).
    attn, head = 4 * 32 * 32, 256 * 32
    expected = 0.0
    for ffn in (2 * 32 * 128, 3 * 32 * 85):
        fpt = flops_per_token(2 * (attn + ffn) + head, 2, 32, 32)
        assert fpt == 6 * (2 * (attn + ffn) + head) + 12 * 2 * 32 * 32
        expected += 20 * 8 * 32 * fpt / 1e9 + 2 * 1000 * fpt / 3 / 2e9 + 2.0
    assert seconds == pytest.approx(expected)
    assert "measured" in how and not math.isnan(seconds)


def test_callback_reports_and_exits_1_on_failure(tmp_path, capsys):
    for i, (status, loss) in enumerate([("completed", 2.0), ("completed", 2.5), ("failed", None)]):
        d = tmp_path / str(i)
        d.mkdir()
        RunResult(status=status, ffn=["relu", "swiglu", "gelu"][i], seed=0, val_loss=loss,
                  error="ValueError: boom" if loss is None else None,
                  config={"model": {"ffn": ["relu", "swiglu", "gelu"][i]}, "seed": 0}).write(d)
    config = OmegaConf.create({"hydra": {"sweep": {"dir": str(tmp_path)}}})
    with pytest.raises(SystemExit) as e:
        SweepReport(plots=False, wandb="off").on_multirun_end(config)
    assert e.value.code == 1
    out = capsys.readouterr().out
    assert "| ★ | relu |" in out and "ValueError: boom" in out
    assert (tmp_path / "summary.md").exists()


def test_collects_job_failures_only_in_a_multirun_with_the_callback():
    from glubench.sweep.hydra_callbacks import collects_job_failures

    assert collects_job_failures() is False  # no Hydra job here
    cfg = OmegaConf.load(Path(str(CONF_DIR)) / "config.yaml")
    assert cfg.hydra.callbacks.glubench_report._target_ == "glubench.sweep.hydra_callbacks.SweepReport"
