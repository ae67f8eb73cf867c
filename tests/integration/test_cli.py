"""The habits of Lightning + Hydra users: any Trainer flag, debug configs, callbacks, a per-job log,
reusable checkpoints and glubench-eval, W&B rows at the optimizer steps done, and a wheel that runs."""

import json
import math
import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from glubench.train.evaluate import evaluate
from glubench.train.module import LanguageModel

REPO = Path(__file__).resolve().parents[2]
CI_VAL_LOSS = 4.9812711178412155  # glubench experiment=ci (relu, seed 0) since before the layered package


def _glubench(args, cwd, env=None, entry="glubench", timeout=600):
    env = {**os.environ, "WANDB_MODE": "offline", "PYTHONPATH": str(REPO), **(env or {})}
    module = {"glubench": "glubench", "glubench-eval": "glubench.cli.main"}[entry]
    code = [sys.executable, "-m", module] if entry == "glubench" else [
        sys.executable, "-c", "from glubench.cli.main import eval_cli; eval_cli()"]
    return subprocess.run([*code, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)


# ---------------------------------------------------------------------------- Trainer flags and debug configs


@pytest.mark.parametrize("flag", ["trainer.fast_dev_run=true", "debug=fdr"])
def test_fast_dev_run_runs_one_step(tmp_path, ci_run, flag):
    r = ci_run(tmp_path, flag)
    assert r.status == "completed" and r.steps == 1
    assert r.val_tokens == 64 * 32  # one validation batch of 64 windows of seq_len 32
    # bits per byte of the bytes actually scored (bytes tokenizer: loss / ln 2), not of the whole split
    assert r.val_bpb == pytest.approx(r.val_loss / math.log(2), rel=1e-12)


def test_trainer_flags_pass_through(tmp_path, ci_run):
    full = ci_run(tmp_path / "full", "trainer.max_steps=4", "trainer.val_check_interval=4", "optim.warmup_steps=1")
    part = ci_run(tmp_path / "part", "trainer.max_steps=4", "trainer.val_check_interval=4", "optim.warmup_steps=1",
                  "trainer.limit_val_batches=2", "trainer.max_epochs=1")
    assert full.val_tokens == 196_615  # every validation token of pydocs but the first
    assert part.val_tokens == 2 * 64 * 32  # two batches of 64 windows: Lightning's limit_val_batches=2
    assert part.steps == full.steps == 4


def test_callbacks_none_writes_no_checkpoint(tmp_path, ci_run):
    # Lightning adds its own ModelCheckpoint unless told not to; turning ours off must mean no files.
    r = ci_run(tmp_path, "callbacks=none", "trainer.max_steps=4", "trainer.val_check_interval=4",
               "optim.warmup_steps=1")
    assert r.status == "completed" and r.steps == 4
    assert list(tmp_path.rglob("*.ckpt")) == []


def test_unknown_trainer_flag_is_one_line_and_exit_2(tmp_path):
    proc = _glubench(["experiment=ci", "+trainer.no_such_flag=1"], tmp_path)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert proc.stderr.strip() == "glubench: error: trainer.no_such_flag=1 is not an argument of lightning.Trainer"
    typo = _glubench(["experiment=ci", "+trainer.max_step=20"], tmp_path)  # an added key: unknown_keys' hint
    assert typo.returncode == 2 and "did you mean trainer.max_steps?" in typo.stderr
    typo = _glubench(["experiment=ci", "trainer.max_step=20"], tmp_path)  # a changed key: one line too
    assert (typo.returncode, typo.stderr.count("\n")) == (2, 1) and "did you mean trainer.max_steps?" in typo.stderr
    assert not (tmp_path / "outputs").exists()  # a rejected config leaves no run folder


def test_rejected_config_leaves_no_run_folder_and_report_sees_none(tmp_path):
    proc = _glubench(["experiment=ci", "model.ffn=nope"], tmp_path)
    assert proc.returncode == 2 and proc.stderr.startswith("glubench: error: model.ffn='nope'")
    assert not (tmp_path / "outputs").exists()


def test_user_callback_and_a_failed_jobs_log(tmp_path):
    """A callback added from the command line is built and called; the job it breaks leaves its traceback and
    the glubench lines in train.log, and results.json says failed."""
    (tmp_path / "boom_cb.py").write_text(
        "import lightning.pytorch as pl\n\n"
        "class Boom(pl.Callback):\n"
        "    def on_train_batch_end(self, trainer, *args):\n"
        "        if trainer.global_step == 3:\n"
        "            raise RuntimeError('boom at step 3')\n")
    run_dir = tmp_path / "run"
    proc = _glubench(["experiment=ci", "+callbacks.boom={_target_: boom_cb.Boom}", f"hydra.run.dir={run_dir}"],
                     tmp_path, env={"PYTHONPATH": f"{REPO}{os.pathsep}{tmp_path}"})
    assert proc.returncode == 1
    log = (run_dir / "train.log").read_text()
    assert "glubench: ffn=relu" in log and "glubench: params total=" in log
    assert "RuntimeError: boom at step 3" in log and "Traceback" in log
    result = json.loads((run_dir / "results.json").read_text())
    assert result["status"] == "failed" and "boom at step 3" in result["error"]


# ---------------------------------------------------------------------------- logs and W&B


def test_train_log_csv_and_wandb_rows_at_the_steps_done(tmp_path, wandb_history):
    run_dir = tmp_path / "run"
    proc = _glubench(["experiment=ci", f"hydra.run.dir={run_dir}"], tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads((run_dir / "results.json").read_text())
    assert result["val_loss"] == pytest.approx(CI_VAL_LOSS, abs=1e-6)  # the layered package changed no number
    log = (run_dir / "train.log").read_text()
    assert "glubench: ffn=relu" in log and "glubench: completed: ffn=relu" in log
    assert [h["step"] for h in result["history"]] == [10, 20]
    # CSV: validation every 10 steps lands on rows 10 and 20, as results.json says
    import csv

    rows = list(csv.DictReader(open(run_dir / "csv" / "metrics.csv")))
    assert [int(r["step"]) for r in rows if r["val/loss"]] == [10, 20]
    assert [int(r["step"]) for r in rows if r["train/loss"]] == [5, 10, 15, 20]  # log_every_n_steps=5
    assert any(r.get("lr-AdamW/pg1") for r in rows) and any(r.get("train/grad_norm") for r in rows)
    # W&B: the same steps, and the summary holds the whole-run numbers of results.json
    (wb,) = (run_dir / "wandb").glob("offline-run-*")
    history = wandb_history(wb)
    assert [r["trainer/global_step"] for r in history if "val/ppl" in r] == [10, 20]
    summary = {k: v for update in wandb_history(wb, "summary") for k, v in update.items()}
    assert summary["train/tokens_per_sec"] == result["train_tokens_per_sec"]
    assert summary["params/total"] == result["params_total"] and summary["val/loss"] == result["val_loss"]


def test_wandb_run_has_default_tags_and_job_type(tmp_path, ci_run, wandb_records):
    ci_run(tmp_path, "logger=wandb", "trainer.max_steps=4", "trainer.val_check_interval=4", "optim.warmup_steps=1",
           "trainer.log_every_n_steps=2", "logger.wandb.tags=[mine]")
    (wb,) = (tmp_path / "wandb").glob("offline-run-*")
    run = next(r.run for r in wandb_records(next(wb.glob("*.wandb"))) if r.WhichOneof("record_type") == "run")
    assert run.job_type == "train" and run.run_group == "ci" and run.display_name == "relu-s0"
    assert list(run.tags) == ["ffn:relu", "size:d32-L2", "data:pydocs", "init:scaled_normal", "mine"]


# ---------------------------------------------------------------------------- checkpoints and glubench-eval


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    path = tmp_path_factory.mktemp("finished")
    proc = _glubench(["experiment=ci", "logger=csv", f"hydra.run.dir={path}"], path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return path


def test_load_from_checkpoint_needs_nothing_else(finished_run):
    module = LanguageModel.load_from_checkpoint(finished_run / "checkpoints" / "last.ckpt", weights_only=True)
    assert module.model_cfg.ffn == "relu" and module.model_cfg.d_model == 32 and module.max_steps == 20
    state = torch.load(finished_run / "checkpoints" / "step-20.ckpt", map_location="cpu", weights_only=True)
    assert torch.equal(module.model.tok_emb.weight, state["state_dict"]["model.tok_emb.weight"])


def test_eval_reproduces_val_loss_and_scores_other_splits(finished_run, compose_cfg, tmp_path, monkeypatch,
                                                          shared_data):
    monkeypatch.chdir(tmp_path)  # outside Hydra, eval.json goes to the current dir
    ckpt = finished_run / "checkpoints" / "last.ckpt"
    run = json.loads((finished_run / "results.json").read_text())
    same = evaluate(compose_cfg([f"ckpt_path={ckpt}"], config_name="eval"))
    assert abs(same["loss"] - run["val_loss"]) <= 1e-6 and abs(same["bpb"] - run["val_bpb"]) <= 1e-6
    assert same["tokens"] == run["val_tokens"] and same["step"] == 20
    assert json.loads((tmp_path / "eval.json").read_text())["loss"] == same["loss"]
    train = evaluate(compose_cfg([f"ckpt_path={ckpt}", "split=train"], config_name="eval"))
    assert train["tokens"] == 1_881_292 and math.isfinite(train["loss"])
    # bytes tokenizer: one byte per token, so bits per byte = loss / ln 2 exactly
    assert train["bpb"] == pytest.approx(train["loss"] / math.log(2), rel=1e-12)
    text = shared_data / "tinyshakespeare" / "input.txt"
    other = evaluate(compose_cfg([f"ckpt_path={ckpt}", "data=text", f"data.files={text}"], config_name="eval"))
    assert other["corpus"] == "text" and other["tokenizer"] == "bytes" and math.isfinite(other["loss"])


def test_eval_cli_rejects_bad_input_in_one_line(tmp_path, finished_run):
    proc = _glubench(["ckpt_path=nope.ckpt"], tmp_path, entry="glubench-eval")
    assert proc.returncode == 2
    assert proc.stderr.strip() == "glubench-eval: error: ckpt_path='nope.ckpt': no such checkpoint file"
    proc = _glubench([f"ckpt_path={finished_run}/checkpoints/last.ckpt", "split=tset"], tmp_path, entry="glubench-eval")
    assert proc.returncode == 2 and "split='tset' is not known; valid: val, train, test" in proc.stderr
    proc = _glubench([f"ckpt_path={finished_run}/checkpoints/last.ckpt", "split=test"], tmp_path, entry="glubench-eval")
    assert proc.returncode == 2 and "split='test': data.name='pydocs' has no test split" in proc.stderr
    assert not (tmp_path / "outputs").exists()


def test_test_split_is_scored_once_after_training_and_eval_reproduces_it(ci_run, compose_cfg, tmp_path, monkeypatch):
    result = ci_run(tmp_path / "run", "logger=csv", "data.test_percent=5")
    assert result.test_tokens > 0 and result.test_loss != result.val_loss
    assert result.test_ppl == pytest.approx(math.exp(result.test_loss), rel=1e-12)
    assert result.test_bpb == pytest.approx(result.test_loss / math.log(2), rel=1e-12)  # bytes: 1 byte a token
    monkeypatch.chdir(tmp_path)
    ckpt = tmp_path / "run" / "checkpoints" / "last.ckpt"
    test = evaluate(compose_cfg([f"ckpt_path={ckpt}", "split=test"], config_name="eval"))
    assert abs(test["loss"] - result.test_loss) <= 1e-6 and test["tokens"] == result.test_tokens
    val = evaluate(compose_cfg([f"ckpt_path={ckpt}"], config_name="eval"))
    assert abs(val["loss"] - result.val_loss) <= 1e-6
    # the validation documents do not move when a test split is added: the same val tokens as without one
    plain = ci_run(tmp_path / "plain", "logger=none")
    assert plain.val_tokens == result.val_tokens and plain.test_loss is None


def test_a_finished_checkpoint_is_reported_finished_and_paths_with_equals_work(finished_run, ci_run, tmp_path):
    run = json.loads((finished_run / "results.json").read_text())
    again = ci_run(tmp_path / "again", "logger=csv", f"ckpt_path={finished_run}/checkpoints/step-20.ckpt")
    assert again.status == "completed" and again.steps == 20 and abs(again.val_loss - run["val_loss"]) <= 1e-6
    odd = tmp_path / "a=b" / "step=20.ckpt"  # a name Hydra's grammar needs quoted
    odd.parent.mkdir()
    shutil.copy(finished_run / "checkpoints" / "step-20.ckpt", odd)
    quoted = ci_run(tmp_path / "quoted", "logger=csv", f"ckpt_path='{odd}'")
    assert quoted.status == "completed" and abs(quoted.val_loss - run["val_loss"]) <= 1e-6


# ---------------------------------------------------------------------------- model options end to end


def test_bias_dropout_and_bf16_paths_train(tmp_path, ci_run):
    short = ["trainer.max_steps=4", "trainer.val_check_interval=4", "optim.warmup_steps=1"]
    biased = ci_run(tmp_path / "bias", *short, "model.bias=true", "model.ffn=swiglu")
    d, h = 32, round(128 * (2 * 32 + 1) / (3 * 32 + 2))  # the 2/3 rule with biases: 85
    assert biased.ffn_hidden == h and biased.params_ffn == 3 * d * h + 2 * h + d  # W, V, W2 and their biases
    dropped = ci_run(tmp_path / "dropout", *short, "model.dropout=0.1")
    bf16 = ci_run(tmp_path / "bf16", *short, "trainer.precision=bf16-mixed")
    for r in (biased, dropped, bf16):
        assert r.status == "completed" and math.isfinite(r.val_loss) and r.val_loss < math.log(256) + 1
    assert bf16.precision == "bf16-mixed"


# ---------------------------------------------------------------------------- the wheel


@pytest.mark.heavy
def test_wheel_installs_and_runs_from_an_empty_folder(tmp_path):
    """pip wheel . ; install it into a fresh venv that reuses this environment's packages; run experiment=ci."""
    dist = tmp_path / "dist"
    build = subprocess.run([sys.executable, "-m", "pip", "wheel", str(REPO), "--no-deps", "--no-build-isolation",
                            "-w", str(dist), "-q"], capture_output=True, text=True, timeout=300)
    assert build.returncode == 0, build.stderr[-2000:]
    (wheel,) = dist.glob("glubench-*.whl")
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
    py = venv / "bin" / "python"
    site = Path(subprocess.run([str(py), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                               capture_output=True, text=True, check=True).stdout.strip())
    # this environment's dependencies, but not its editable glubench (that .pth is not read from here)
    (site / "deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    inst = subprocess.run([sys.executable, "-m", "pip", "--python", str(py), "install", "--no-deps", "-q", str(wheel)],
                          capture_output=True, text=True, timeout=300)
    assert inst.returncode == 0, inst.stderr[-2000:]
    empty = tmp_path / "empty"
    empty.mkdir()
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"} | {"WANDB_MODE": "offline"}
    proc = subprocess.run([str(venv / "bin" / "glubench"), "experiment=ci", "logger=csv", "hydra.run.dir=run"],
                          cwd=empty, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    val_loss = json.loads((empty / "run" / "results.json").read_text())["val_loss"]
    assert val_loss == pytest.approx(CI_VAL_LOSS, abs=1e-6)
    sources = OmegaConf.load(empty / "run" / ".hydra" / "hydra.yaml").hydra.runtime.config_sources
    (main,) = [s.path for s in sources if s.provider == "main"]
    assert Path(main).resolve() == (site / "glubench" / "conf").resolve()  # the wheel's configs, not conf/
    where = subprocess.run([str(py), "-c", "import glubench; print(glubench.__file__)"], capture_output=True, text=True,
                           cwd=empty, env=env).stdout
    assert str(venv) in where  # the wheel's package ran, not the checkout


@pytest.mark.slow
def test_cli_regions_end_to_end(tmp_path):
    from glubench.cli.analyze import main

    assert main(["regions", "--out", str(tmp_path), "--steps", "10", "--paths", "2", "--mlp-steps", "20"]) == 0
    data = json.loads((tmp_path / "regions.json").read_text())
    assert (tmp_path / "partition.png").stat().st_size > 10_000
    assert data["transformer"]["ffn"] == "relu" and data["transformer"]["after"]["stack"] is not None
    bound = data["small_mlp"]["serra_upper_bound_2d"]
    assert all(r["plane_cumulative"][-1] <= bound for r in data["small_mlp"]["rows"])
    # reload the same run dir
    assert main(["regions", "--run-dir", str(tmp_path / "run"), "--out", str(tmp_path / "again"),
                 "--paths", "2", "--mlp-steps", "20"]) == 0
    again = json.loads((tmp_path / "again" / "regions.json").read_text())
    assert again["transformer"]["after"] == data["transformer"]["after"]
