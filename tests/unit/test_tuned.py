"""Per-variant LR tuning: the report of tuned runs, and the tuning driver with its children faked."""

import math
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from glubench.sweep.report import report_sweep
from glubench.train.results import RunResult

TUNED_LR = {"relu": 3e-3, "swiglu": 1e-3, "bilinear": 2e-3, "gelu": 3e-3}


@pytest.fixture
def tuned_sweep(tmp_path, sweep_losses):
    """sweep_losses again, but every variant trained at its own LR, with a flops budget record."""
    for ffn, losses in sweep_losses.items():
        for seed, loss in enumerate(losses):
            d = tmp_path / ffn / f"s{seed}"
            d.mkdir(parents=True)
            cfg = {"model": {"ffn": ffn}, "seed": seed, "optim": {"lr": TUNED_LR[ffn]}, "experiment_name": "t"}
            tokens, fpt = 1000 * (10 + seed), 200.0
            RunResult(status="completed", ffn=ffn, seed=seed, params_ffn=1000, val_loss=loss,
                      val_ppl=math.exp(loss), config=cfg,
                      budget={"mode": "flops", "tokens": tokens, "flops": tokens * fpt, "seconds": 2.0 + seed}).write(d)
    return tmp_path


def test_tuned_lr_is_a_column_not_a_grouping_key(tuned_sweep, markdown_table, t_975_df4):
    report = report_sweep([tuned_sweep], plots=False, wandb_choice="off", tuned=("optim.lr",))
    assert report.keys == ["model.ffn"] and len(report.groups) == 4
    md = (tuned_sweep / "summary.md").read_text()
    rows = {r[1]: r for r in markdown_table(md)}
    cols = [c.strip() for c in md.splitlines()[next(i for i, x in enumerate(md.splitlines())
                                                     if x.startswith("|  | variant"))].strip("|").split("|")]
    assert cols[2] == "optim.lr (tuned)"
    col = {h: i for i, h in enumerate(cols)}
    assert rows["swiglu"][col["optim.lr (tuned)"]] == "0.001" and rows["relu"][col["optim.lr (tuned)"]] == "0.003"
    assert rows["relu"][col["budget"]] == "flops"
    assert rows["relu"][col["train tokens"]] == "11,000"  # mean of 10000, 11000, 12000
    assert rows["relu"][col["train FLOPs"]] == "2.2e+06"
    assert rows["relu"][col["train s"]] == "3.0"
    # Each variant is compared with relu at relu's own tuned LR: bilinear's Welch interval by hand.
    cmp = {r[0]: r for r in markdown_table(md, "| variant")}
    half = t_975_df4 * math.sqrt(0.04 / 3 * 2)
    assert cmp["bilinear"][1] == "-0.2000"
    assert cmp["bilinear"][2] == f"[{-0.2 - half:+.4f}, {-0.2 + half:+.4f}]"


def test_without_tuned_the_lr_splits_the_groups(tuned_sweep):
    report = report_sweep([tuned_sweep], plots=False, wandb_choice="off")
    assert report.keys == ["model.ffn", "optim.lr"]
    by = {g.ffn: g for g in report.groups}
    assert by["swiglu"].vs_baseline is None and by["bilinear"].vs_baseline is None  # no relu at their LR
    assert by["gelu"].vs_baseline is not None  # gelu's tuned LR happens to equal relu's


def test_tune_variants_are_validated_before_any_work(compose_cfg):
    from glubench.train.config_rules import ConfigError, validate_config

    with pytest.raises(ConfigError, match="tune.variants: 'swigloo'"):
        validate_config(compose_cfg(["experiment=tuned_variants_cpu", "tune.variants=[relu,swigloo]"]))
    with pytest.raises(ConfigError, match="tune.n_trials=0"):
        validate_config(compose_cfg(["experiment=tuned_variants_cpu", "tune.n_trials=0"]))
    for bad in ("[0.1,0.001]", "[0,0.1]", "[0.001]"):
        with pytest.raises(ConfigError, match=r"tune.lr_range=.* must be \[low, high\] with 0 < low < high"):
            validate_config(compose_cfg(["experiment=tuned_variants_cpu", f"tune.lr_range={bad}"]))


def test_a_tuned_lr_at_the_edge_of_the_search_range_is_flagged():
    from glubench.sweep.tune import at_bound

    # factor 1.25: 0.08 * 1.25 = 0.1 reaches the top; 1.25e-4 is the lowest flagged at the bottom
    assert at_bound(0.08, [1e-4, 0.1]) == "upper" and at_bound(0.079, [1e-4, 0.1]) is None
    assert at_bound(1.25e-4, [1e-4, 0.1]) == "lower" and at_bound(1.3e-4, [1e-4, 0.1]) is None


def test_ranking_and_summary_text(sweep_losses):
    from glubench.sweep.tune import ranking, summary_text

    runs = {v: [RunResult(status="completed", ffn=v, seed=s, val_loss=x) for s, x in enumerate(xs)]
            for v, xs in sweep_losses.items()}
    assert ranking(runs)[2:] == ["relu", "gelu"] and set(ranking(runs)[:2]) == {"swiglu", "bilinear"}  # tie at 2.0
    record = {"dir": "d", "shared_lr": 1e-3, "ranking_tuned": ["swiglu", "relu"], "ranking_shared": ["relu", "swiglu"],
              "ranking_changed": True,
              "variants": {"relu": {"tuned_lr": 3e-3, "val_loss": [2.0, 2.2], "shared_lr_val_loss": [2.1]},
                           "swiglu": {"tuned_lr": 1e-3, "val_loss": [1.9, 2.1], "shared_lr_val_loss": [2.3]}}}
    record["variants"]["relu"]["lr_at_bound"] = "upper"
    text = summary_text(record)
    assert "| swiglu | 0.001 | 2.0000 | 2.3000 |" in text
    assert "| relu | 0.003 (at the upper bound) | 2.1000 | 2.1000 |" in text
    assert "ranking changed: yes" in text


BEST_LR = {"relu": 3e-3, "swiglu": 1e-3}
TUNED_LOSSES = {"relu": [2.0, 2.2], "swiglu": [1.9, 2.0]}  # means 2.1, 1.95: swiglu < relu


@pytest.mark.parametrize("shared_losses,ranking_shared,changed", [
    ({"relu": [2.1, 2.1], "swiglu": [2.3, 2.5]}, ["relu", "swiglu"], True),   # means 2.1, 2.4: order flips
    ({"relu": [2.1, 2.1], "swiglu": [1.8, 1.8]}, ["swiglu", "relu"], False),  # means 2.1, 1.8: same order
])
def test_tuned_variants_driver_with_faked_children(tmp_path, monkeypatch, shared_losses, ranking_shared, changed):
    """The driver's bookkeeping, with each child ``glubench --multirun`` replaced by a fake that writes
    what the child would (the study's optimization_results.yaml, one results.json per seed) from
    the numbers above: the tuned LRs, the losses, both rankings and ``ranking_changed``."""
    import json

    import glubench.sweep.tune as tune

    calls = []

    def fake_glubench(args, log_file):
        calls.append(args)
        kv = dict(a.split("=", 1) for a in args if "=" in a)
        out, v = Path(kv["hydra.sweep.dir"]), kv["model.ffn"]
        if kv.get("hparams_search") == "lr_optuna":
            out.mkdir(parents=True)
            (out / "optimization_results.yaml").write_text(
                f"name: optuna\nbest_params:\n  optim.lr: {BEST_LR[v]}\nbest_value: {min(TUNED_LOSSES[v])}\n")
            return
        tuned = "optim.lr" in kv
        lr = float(kv["optim.lr"]) if tuned else 1e-3
        for s in map(int, kv["seed"].split(",")):
            loss = (TUNED_LOSSES if tuned else shared_losses)[v][s]
            RunResult(status="completed", ffn=v, seed=s, val_loss=loss,
                      config={"model": {"ffn": v}, "seed": s, "optim": {"lr": lr}, "experiment_name": "t"},
                      ).write(out / f"{s}")

    monkeypatch.setattr(tune, "_glubench", fake_glubench)
    cfg = OmegaConf.create({"experiment_name": "t", "optim": {"lr": 1e-3},
                            "tune": {"dir": str(tmp_path / "run"), "variants": ["relu", "swiglu"], "n_trials": 2,
                                     "seeds": [0, 1], "lr_range": [1e-4, 1e-1], "shared_lr": True}})
    record = tune.run_tuned_variants(cfg, ["experiment=tuned_variants_cpu", "trainer.max_steps=6"])
    assert record["ranking_tuned"] == ["swiglu", "relu"]
    assert record["ranking_shared"] == ranking_shared
    assert record["ranking_changed"] is changed
    assert record["shared_lr"] == 1e-3
    assert {v: d["tuned_lr"] for v, d in record["variants"].items()} == BEST_LR
    assert record["variants"]["swiglu"]["val_loss"] == TUNED_LOSSES["swiglu"]
    assert record["variants"]["relu"]["shared_lr_val_loss"] == shared_losses["relu"]
    assert all(d["lr_at_bound"] is None for d in record["variants"].values())
    assert json.loads((tmp_path / "run" / "tuned.json").read_text()) == record
    # 2 variants x (search, tuned seeds, shared seeds); every child keeps the driver's overrides.
    assert len(calls) == 6 and all("trainer.max_steps=6" in c and "tune.variants=[]" in c for c in calls)
    # A rerun finds everything done and launches nothing.
    calls.clear()
    assert tune.run_tuned_variants(cfg, ["experiment=tuned_variants_cpu"])["ranking_changed"] is changed
    assert calls == []
