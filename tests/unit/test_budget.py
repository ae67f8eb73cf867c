import math
import os
from types import SimpleNamespace

import pytest
import torch

from glubench.core.clock import Stopwatch
from glubench.train.budget import TIME_MODE_MAX_STEPS, plan_budget
from glubench.train.config_rules import ConfigError
from glubench.train.devices import devices_per_node, world_size
from glubench.train.monitors import BudgetCallback


def test_plan_tokens_and_flops_by_hand():
    # 8 windows x 32 tokens = 256 tokens per step; 2560 tokens -> 10 steps.
    p = plan_budget("tokens", 2560, max_steps=99, tokens_per_step=256, flops_per_token=1000.0)
    assert (p.max_steps, p.target) == (10, 2560.0)
    assert plan_budget("tokens", None, max_steps=7, tokens_per_step=256, flops_per_token=1.0).max_steps == 7
    # 1e7 FLOPs at 256 tokens/step: 1000 FLOPs/token -> 39.06 -> 39 steps; 1300 -> 30.04 -> 30 steps.
    a = plan_budget("flops", 1e7, max_steps=1, tokens_per_step=256, flops_per_token=1000.0)
    b = plan_budget("flops", 1e7, max_steps=1, tokens_per_step=256, flops_per_token=1300.0)
    assert (a.max_steps, b.max_steps) == (39, 30)
    # null value: what max_steps steps cost the reference (20 x 256 x 1000 = 5.12e6 FLOPs).
    c = plan_budget("flops", None, max_steps=20, tokens_per_step=256, flops_per_token=1300.0,
                    reference_flops_per_token=1000.0)
    assert (c.target, c.max_steps) == (5.12e6, 15)  # 5.12e6 / (256 x 1300) = 15.38
    t = plan_budget("time", 2.5, max_steps=20, tokens_per_step=256, flops_per_token=1.0)
    assert (t.max_steps, t.target) == (TIME_MODE_MAX_STEPS, 2.5)


@pytest.mark.parametrize("mode,value,match", [
    ("walltime", None, "budget.mode='walltime'"),
    ("tokens", -5, "budget.value=-5"),
    ("time", None, "budget.value=null"),
    ("tokens_per_param", None, "budget.value=null: budget=tokens_per_param needs the tokens per parameter"),
    ("tokens", 300, "optim.warmup_steps=2"),  # 300 tokens = 1 step, not more than the warmup
])
def test_plan_rejects_bad_budgets(mode, value, match):
    with pytest.raises(ConfigError, match=match):
        plan_budget(mode, value, max_steps=20, tokens_per_step=256, flops_per_token=1.0, warmup_steps=2)


def test_bad_budget_is_rejected_before_training(compose_cfg):
    from glubench.train.config_rules import validate_config

    with pytest.raises(ConfigError, match="budget.value=null"):
        validate_config(compose_cfg(["experiment=ci", "budget=time"]))


@pytest.mark.parametrize("off", ["callbacks.budget=null", "callbacks=none"])
def test_time_budget_without_its_callback_is_rejected_before_training(compose_cfg, off):
    from glubench.train.config_rules import validate_config

    with pytest.raises(ConfigError) as e:
        validate_config(compose_cfg(["experiment=ci", "budget=time", "budget.value=1", off]))
    assert str(e.value) == "callbacks.budget=null: budget=time needs the budget callback to stop the run"


def test_world_size_counts_as_lightning_does():
    cpu = SimpleNamespace(devices=2, num_nodes=3, accelerator="cpu")
    assert world_size(cpu) == 6
    assert devices_per_node("4") == 4 and devices_per_node([0, 3]) == 2 and devices_per_node("0,2,3") == 3
    assert devices_per_node("auto", "cpu") == 1  # Lightning: one process on a CPU
    assert devices_per_node(-1, "cpu") == os.cpu_count()  # Lightning: every core


def test_time_callback_stops_at_the_first_step_past_the_limit():
    """Fake clock: 0.3 s per step, 1.0 s limit -> steps end at 0.3, 0.6, 0.9, 1.2: stop after step 4."""
    now = [0.0]
    from glubench.train.module import build_optimizer
    from glubench.train.schema import OptimConfig

    cb = BudgetCallback(seconds_limit=1.0)
    trainer = SimpleNamespace(global_step=0, world_size=1, should_stop=False)
    # The module's training clock, which LanguageModel starts with training and pauses during validation,
    # and the horizon its schedule reads (a LanguageModel's starts at the time budget's step cap).
    module = SimpleNamespace(train_clock=Stopwatch(lambda: now[0]), step_finished=True,
                             schedule_horizon=TIME_MODE_MAX_STEPS)
    opt, sched = build_optimizer(torch.nn.Linear(1, 1, bias=False), OptimConfig(lr=1.0, warmup_steps=1),
                                 TIME_MODE_MAX_STEPS, horizon=lambda: module.schedule_horizon)
    cb.on_train_start(trainer, module)
    module.train_clock.start()
    horizons, lrs = [], []
    while not trainer.should_stop:
        lrs.append(opt.param_groups[0]["lr"])  # the LR this step trains with
        now[0] += 0.3
        trainer.global_step += 1
        cb.on_train_batch_end(trainer, module, None, None, trainer.global_step - 1)
        opt.step()  # no gradients, so no update; torch warns when the scheduler steps before any optimizer step
        sched.step()
        horizons.append(module.schedule_horizon)
        if trainer.global_step == 2:  # validation takes 5 s of wall clock, which is not counted
            module.train_clock.pause()
            now[0] += 5.0
            module.train_clock.resume()
    module.train_clock.pause()
    assert trainer.global_step == 4
    assert cb.stopped_at == pytest.approx(1.2) and cb.seconds == pytest.approx(1.2)
    assert 0 <= cb.stopped_at - 1.0 < cb.last_step_seconds == pytest.approx(0.3)
    # Horizon = steps x limit / elapsed: ceil(1/0.3)=4, ceil(2/0.6)=4, ceil(3/0.9)=4 (not updated at the stop).
    assert horizons[:3] == [4, 4, 4]
    # lr_lambda with warmup 1 and horizon 4: step 0 warmup (1.0), then cosine over 3 steps to 0.1.
    cos = [0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * k / 3)) for k in (0, 1, 2)]
    assert lrs == pytest.approx([1.0, *cos])


def test_time_callback_refuses_a_module_whose_schedule_cannot_follow_the_clock():
    module = SimpleNamespace(train_clock=Stopwatch(), step_finished=True)  # no schedule_horizon
    with pytest.raises(TypeError, match="has no schedule_horizon"):
        BudgetCallback(seconds_limit=1.0).on_train_start(SimpleNamespace(), module)
    BudgetCallback().on_train_start(SimpleNamespace(), module)  # measuring only: nothing to follow


def test_warmup_fraction_replaces_warmup_steps_and_the_ladder_lr_is_the_rung_lr_times_its_scale(compose_cfg):
    from glubench.train.module import build_optimizer
    from glubench.train.schema import OptimConfig

    assert OptimConfig(warmup_steps=30, warmup_fraction=0.05).warmup(97) == 5  # round(4.85)
    assert OptimConfig(warmup_steps=30).warmup(97) == 30
    opt, sched = build_optimizer(torch.nn.Linear(2, 2), OptimConfig(lr=1.0, warmup_fraction=0.1), max_steps=50)
    lrs = []
    for _ in range(7):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    # warmup round(0.1 * 50) = 5 steps, then cosine over the remaining 45 down to min_lr_ratio 0.1
    assert lrs == pytest.approx([0.2, 0.4, 0.6, 0.8, 1.0, 1.0, 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi / 45))])
    cfg = compose_cfg(["experiment=ladder_cpu", "ladder.size=d40", "ladder.lr_scale=0.5"])
    assert cfg.optim.lr == pytest.approx(1.49e-2 * 0.5) and cfg.model.d_model == 40 and cfg.model.n_layers == 2
