"""What a user sees: a short console without library noise, everything else in train.log, one switch
(verbose=true) for all of it, --help, the DEBUG lines of debug=default, and one-line override errors."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import tomllib

from glubench.nn.config import FFN_VARIANTS

REPO = Path(__file__).resolve().parents[2]
CONSOLE_BUDGET = 15  # lines a single run may print (README: what it trains, on what, where, progress, result)


def _glubench(args, cwd):
    # Not conftest's WANDB_SILENT: the quiet W&B console must come from glubench's own settings.
    env = {k: v for k, v in os.environ.items() if k != "WANDB_SILENT"}
    env.update(WANDB_MODE="offline", PYTHONPATH=str(REPO))
    return subprocess.run([sys.executable, "-m", "glubench", *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=600)


@pytest.mark.heavy
def test_a_default_style_run_prints_a_few_lines_and_train_log_keeps_the_rest(tmp_path):
    # The default loggers (W&B + CSV), checkpoints and the progress bar, at CI size; stdout is a pipe.
    run_dir = tmp_path / "run"
    proc = _glubench(["experiment=ci", "logger=both", "trainer.enable_progress_bar=true",
                      f"hydra.run.dir={run_dir}"], tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stderr == ""  # no warning from Lightning, W&B or torch: nothing is wrong
    lines = proc.stdout.splitlines()
    assert len(lines) <= CONSOLE_BUDGET, proc.stdout
    assert all(line.startswith("glubench: ") for line in lines), proc.stdout  # no bar, no library line
    assert "\r" not in proc.stdout  # progress bars only on a terminal
    # progress: one line per validation (every 10 of the 20 steps), then the result
    assert [line.split(" val_loss=")[0] for line in lines if " val_loss=" in line and "step" in line] == [
        "glubench: step 10/20", "glubench: step 20/20"]
    assert lines[-1].startswith("glubench: completed: ffn=relu val_loss=4.9813 ")
    assert any(f"-> {run_dir} (train.log, results.json, csv/, checkpoints/); W&B offline (upload: wandb sync "
               f"{run_dir}/wandb/offline-run-" in line for line in lines)
    log = (run_dir / "train.log").read_text()
    for detail in ("GPU available: False", "TPU available", "`Trainer.fit` stopped: `max_steps=20` reached",
                   "glubench: params total=", "glubench: step 20/20 val_loss=", "glubench: completed"):
        assert detail in log, detail
    # verbose=true: the same run shows the libraries' lines and W&B's banner and history too
    loud = _glubench(["experiment=ci", "logger=both", "verbose=true", f"hydra.run.dir={tmp_path}/loud"], tmp_path)
    assert loud.returncode == 0, loud.stderr[-3000:]
    assert "GPU available: False" in loud.stdout and "`Trainer.fit` stopped" in loud.stdout
    assert "wandb: Run history:" in loud.stderr


def test_debug_configs_say_what_glubench_decided(tmp_path):
    proc = _glubench(["experiment=ci", "debug=fdr", f"hydra.run.dir={tmp_path}/run"], tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = proc.stdout
    assert "glubench: config: debug=fdr experiment=ci " in out and "overrides: experiment=ci debug=fdr" in out
    assert "glubench: token cache hit: " in out or "glubench: token cache miss: " in out
    assert "glubench: budget plan BudgetPlan(mode='tokens'" in out
    assert "glubench: ckpt_path=auto: no checkpoint to resume from" in out
    assert "glubench: 1 step(s) (trainer.fast_dev_run)" in out
    assert "tokens/s=not measured" in out and "nan" not in out.splitlines()[-1]
    # conf/debug/fdr.yaml: Lightning's save_last writes last.ckpt, no step checkpoint, no logger
    assert sorted(p.name for p in (tmp_path / "run" / "checkpoints").iterdir()) == ["last.ckpt"]
    assert not (tmp_path / "run" / "csv").exists()


def test_help_says_what_glubench_does_then_the_config(tmp_path):
    proc = _glubench(["--help"], tmp_path)
    assert proc.returncode == 0, proc.stderr
    text = proc.stdout
    assert text.startswith("glubench: train small decoder-only language models")
    sections = ["== FFN variants", "== Experiments", "== Companion commands", "== Configuration groups", "== Config"]
    assert [text.index(s) for s in sections] == sorted(text.index(s) for s in sections)
    variants = text[text.index("== FFN variants"):text.index("== Experiments")]
    assert all(f" {name} " in variants.replace("\n", " ") for name in FFN_VARIANTS)
    experiments = text[text.index("== Experiments"):text.index("== Companion")]
    for path in (REPO / "conf" / "experiment").glob("*.yaml"):
        assert f"  {path.stem} " in experiments, path.stem
    commands = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["scripts"]
    companion = text[text.index("== Companion"):text.index("== Configuration groups")]
    assert all(f"  {c} " in companion for c in commands if c != "glubench")
    assert "\nckpt_path: auto\n" in text and "\nverbose: false\n" in text


def test_override_mistakes_are_one_line_with_the_nearest_key(tmp_path):
    cases = {
        ("experiment=ci", "trainer.max_step=20"):
            "glubench: error: trainer.max_step=20: no key 'max_step' in trainer; did you mean trainer.max_steps?",
        ("experiment=ci", "logger=csv", "logger.wandb.tags=[x,y]"):
            "glubench: error: logger.wandb.tags=[x,y]: logger.wandb is null with logger=csv; "
            "choose logger=both|wandb",
    }
    for args, line in cases.items():
        proc = _glubench(list(args), tmp_path)
        assert (proc.returncode, proc.stderr, proc.stdout) == (2, line + "\n", ""), args
    assert not (tmp_path / "outputs").exists()  # refused before Hydra made a run folder
