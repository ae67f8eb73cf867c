"""Faults (issue 7): bad input through the console script, numerical faults, interruptions and secrets.

The bad-input cases themselves run in-process in tests/unit/test_bad_input.py; here a few go through the
``glubench`` console script to prove the exit code and the one-line message.
"""

import errno
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import lightning.pytorch as pl
import pytest
import torch

from glubench.cli.main import main
from glubench.core.errors import Diverged
from glubench.nn.config import FFN_VARIANTS
from glubench.train.callbacks import NonFiniteGuard

REPO = Path(__file__).resolve().parents[2]
VALID_FFNS = ", ".join(FFN_VARIANTS)


def test_cli_bad_input_exit_codes(tmp_path):
    """The console script itself: exit 2 and exactly one stderr line, for a bad value and a misspelt key alike."""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    base = [sys.executable, "-m", "glubench", "experiment=ci", "logger=none", f"hydra.run.dir={tmp_path}/run"]
    procs = [subprocess.Popen([*base, extra], cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True) for extra in ("model.ffn=swiglu2", "model.d_modle=64")]
    (out1, err1), (out2, err2) = (p.communicate(timeout=120) for p in procs)
    assert procs[0].returncode == 2, err1
    assert err1.strip() == f"glubench: error: model.ffn='swiglu2' is not a known FFN variant; valid: {VALID_FFNS}"
    assert procs[1].returncode == 2, err2
    assert err2 == "glubench: error: model.d_modle=64: no key 'd_modle' in model; did you mean model.d_model?\n"
    assert not (tmp_path / "run" / "results.json").exists()


# ---------------------------------------------------------------------------- numerical faults


class _Toy(pl.LightningModule):
    """Linear regression on fixed batches; batch ``nan_at`` gets a NaN loss."""

    def __init__(self, nan_at: int | None) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.lin = torch.nn.Linear(4, 1)
        self.nan_at = nan_at
        self.losses: list[float] = []

    def training_step(self, batch, batch_idx):
        x, y = batch
        loss = torch.nn.functional.mse_loss(self.lin(x), y)
        if batch_idx == self.nan_at:
            loss = loss * float("nan")
        self.losses.append(float(loss.detach()))
        return loss

    def configure_optimizers(self):
        return torch.optim.AdamW(self.parameters(), lr=0.1)


def _batches(skip=None):
    g = torch.Generator().manual_seed(1)
    out = [(torch.randn(8, 4, generator=g), torch.randn(8, 1, generator=g)) for _ in range(6)]
    return [b for i, b in enumerate(out) if i != skip]


def _fit(module, batches, guard):
    trainer = pl.Trainer(max_steps=len(batches), logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, callbacks=[guard],
                         accelerator="cpu", devices=1)
    trainer.fit(module, train_dataloaders=torch.utils.data.DataLoader(batches, batch_size=None))
    return trainer


@pytest.mark.parametrize("every", [1, 4])
def test_nonfinite_stop_names_step_and_last_finite_loss(every):
    module = _Toy(nan_at=3)
    with pytest.raises(Diverged) as info:
        _fit(module, _batches(), NonFiniteGuard("stop", check_every_n_steps=every))
    assert info.value.step == 3 and info.value.last_finite_step == 2
    assert info.value.last_finite_loss == pytest.approx(module.losses[2], rel=1e-6)
    assert "step 3" in str(info.value) and f"{module.losses[2]:.4f}" in str(info.value)
    assert len(module.losses) == 4  # every=4: read back after step 3, at step 4
    if every == 1:  # checked before every update: the bad one never reached the weights
        assert all(torch.isfinite(p).all() for p in module.parameters())


def test_nonfinite_skip_drops_exactly_that_update():
    skipped, guard = _Toy(nan_at=3), NonFiniteGuard("skip", max_skips=1)
    _fit(skipped, _batches(), guard)
    reference = _Toy(nan_at=None)
    _fit(reference, _batches(skip=3), NonFiniteGuard("stop"))
    assert guard.skipped == 1
    for a, b in zip(skipped.parameters(), reference.parameters()):
        assert torch.equal(a, b)  # the same five AdamW updates, bit for bit
    with pytest.raises(Diverged, match="faults.max_skips=0"):
        _fit(_Toy(nan_at=3), _batches(), NonFiniteGuard("skip", max_skips=0))


def test_sweep_with_a_diverging_job_keeps_the_others(tmp_path):
    """lr=1e6 diverges within the configured steps; the other two jobs still complete.

    A secret typed on the command line reaches no file of the sweep: not results.json, not Hydra's
    config copies, not W&B's offline runs (whose metadata records the command line).
    """
    secret = "sk-glubench-test-0123456789"
    env = {**os.environ, "PYTHONPATH": str(REPO), "GLUBENCH_TEST_API_KEY": secret, "WANDB_MODE": "offline"}
    cmd = [sys.executable, "-m", "glubench", "--multirun", "experiment=ci", "logger=wandb",
           "optim.lr=1e-3,1e6,3e-3", "trainer.max_steps=8", "trainer.val_check_interval=8",
           "optim.warmup_steps=2", f"logger.wandb.tags=[{secret}]", f"hydra.sweep.dir={tmp_path}/sweep"]
    proc = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    results = {int(p.parent.name.split("_")[0]): json.loads(p.read_text())
               for p in (tmp_path / "sweep").glob("*/results.json")}
    assert sorted(results) == [0, 1, 2], proc.stderr[-3000:]
    assert [results[i]["status"] for i in range(3)] == ["completed", "diverged", "completed"]
    diverged = results[1]
    assert diverged["steps"] < 8 and re.search(r"non-finite .* at step \d+ \(last finite loss", diverged["error"])
    assert "glubench: diverged: non-finite" in proc.stderr
    for r in results.values():  # secrets never reach results
        assert secret not in json.dumps(r) and r["config"]["logger"]["wandb"]["tags"] == ["***"]
    saved = [p for p in (tmp_path / "sweep").rglob("*") if p.is_file()]  # Hydra's config copies too
    assert len(saved) >= 9 and not [p for p in saved if secret.encode() in p.read_bytes()]
    runs = [p for p in saved if p.suffix == ".wandb"]
    assert len(runs) == 4 and all(b"logger.wandb.tags=[***]" in p.read_bytes() for p in runs)  # 3 jobs + the report


def test_printed_config_hides_secrets(tmp_path):
    """``--cfg job --resolve`` prints ``***`` for a value taken from a secret environment variable."""
    secret = "sk-glubench-test-0123456789"
    env = {**os.environ, "PYTHONPATH": str(REPO), "GLUBENCH_TEST_API_KEY": secret}
    cmd = [sys.executable, "-m", "glubench", "experiment=ci", "logger=wandb",
           "logger.wandb.project=${oc.env:GLUBENCH_TEST_API_KEY}", "--cfg", "job", "--resolve"]
    proc = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "project: ***" in proc.stdout and secret not in proc.stdout + proc.stderr


def test_credentials_typed_on_the_command_line_reach_no_sink(tmp_path):
    """A W&B key and a Hugging Face token typed literally (no environment variable), and a value under a
    *_key name: never in results.json, Hydra's config copies, W&B's files, train.log, the CSV, the console
    or the --cfg printout."""
    wandb_key = "0123456789abcdef0123456789abcdef01234567"  # 40 hex digits: what a W&B API key looks like
    hf_token = "hf_" + "A1b2C3d4" * 5
    named = "plain-password-1234"  # no pattern; secret only because its key says so
    env = {**os.environ, "PYTHONPATH": str(REPO), "WANDB_MODE": "offline"}

    def glubench(*args):
        return subprocess.run([sys.executable, "-m", "glubench", "experiment=ci", *args], cwd=tmp_path, env=env,
                              capture_output=True, text=True, timeout=300)

    run_dir = tmp_path / "run"
    ok = glubench("logger=both", f"logger.wandb.tags=[{wandb_key},{hf_token}]", f"hydra.run.dir={run_dir}")
    assert ok.returncode == 0, ok.stderr[-3000:]
    files = [p for p in run_dir.rglob("*") if p.is_file()]
    assert {p.name for p in files} >= {"results.json", "config.yaml", "overrides.yaml", "hydra.yaml", "train.log",
                                        "metrics.csv"} and any(p.suffix == ".wandb" for p in files)
    for secret in (wandb_key, hf_token):
        assert secret not in ok.stdout + ok.stderr
        assert not [p for p in files if secret.encode() in p.read_bytes()], secret
    assert json.loads((run_dir / "results.json").read_text())["config"]["logger"]["wandb"]["tags"] == ["***", "***"]
    rejected = glubench(f"+logger.api_key={wandb_key}", f"+my_api_key={named}")  # keys nothing reads
    assert rejected.returncode == 2 and "***" in rejected.stderr
    assert wandb_key not in rejected.stderr + rejected.stdout and named not in rejected.stderr + rejected.stdout
    assert not (tmp_path / "outputs").exists()
    printed = glubench(f"logger.wandb.tags=[{wandb_key}]", f"+my_token={named}", "--cfg", "job", "--resolve")
    assert printed.returncode == 0 and "  - ***\n" in printed.stdout and "my_token: ***" in printed.stdout
    assert wandb_key not in printed.stdout and named not in printed.stdout


# ---------------------------------------------------------------------------- interruption


def test_sigterm_leaves_results_and_checkpoint(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(REPO), "PYTHONUNBUFFERED": "1"}
    cmd = [sys.executable, "-m", "glubench", "experiment=ci", "logger=none", "trainer.max_steps=100000",
           "trainer.val_check_interval=25", f"hydra.run.dir={tmp_path}/run"]
    proc = subprocess.Popen(cmd, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        for line in proc.stdout:  # the last line printed before trainer.fit
            if line.startswith("glubench: params total="):
                break
        deadline = time.monotonic() + 120
        while not (tmp_path / "run" / "checkpoints" / "last.ckpt").exists() and time.monotonic() < deadline:
            time.sleep(0.2)  # the first validation (step 25) has saved a checkpoint: training is under way
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=120)
    finally:
        proc.kill()
    assert proc.returncode == 143, err[-3000:]
    data = json.loads((tmp_path / "run" / "results.json").read_text())
    assert data["status"] == "interrupted" and "SIGTERM" in data["error"]
    assert 25 <= data["steps"] < 100000 and data["history"][0]["step"] == 25
    ckpt = torch.load(tmp_path / "run" / "checkpoints" / "last.ckpt", weights_only=True)
    assert ckpt["global_step"] == data["steps"]  # saved at the interruption, not only at step 25


def _start(run_dir: Path, env: dict, args: list[str] | None = None) -> subprocess.Popen:
    """``glubench`` with ``args`` (default: a 120-step CI run in ``run_dir``)."""
    args = args or ["experiment=ci", "logger=csv", "trainer.max_steps=120", "trainer.val_check_interval=20",
                    "trainer.log_every_n_steps=5", "trainer.deterministic=true", "optim.warmup_steps=5",
                    f"hydra.run.dir={run_dir}"]
    return subprocess.Popen([sys.executable, "-m", "glubench", *args], cwd=run_dir.parent, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _printed_resume_command(err: str) -> list[str]:
    """The arguments of the ``to resume: glubench ...`` command an interrupted run prints."""
    import shlex

    line = next(ln for ln in err.splitlines() if "; to resume: glubench " in ln)
    return shlex.split(line.split("; to resume: glubench ", 1)[1])


def _signal_after(proc: subprocess.Popen, run_dir: Path, step: int, sig: int) -> tuple[int, str]:
    """Send ``sig`` once a periodic checkpoint at ``step`` or later exists (training is then under way)."""
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline and proc.poll() is None:
        if any(int(p.stem.split("-")[1]) >= step for p in run_dir.glob("checkpoints/step-*.ckpt")):
            break
        time.sleep(0.05)
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=180)
    return proc.returncode, err


@pytest.mark.heavy
def test_preempted_twice_finishes_with_the_uninterrupted_numbers(tmp_path):
    """SLURM's time-limit warning (SIGUSR1), then a preemption (SIGTERM), each followed by the command the
    interrupted run printed (what a requeue does too): the third attempt finishes with the uninterrupted run's
    numbers."""
    env = {**os.environ, "PYTHONPATH": str(REPO), "WANDB_MODE": "offline"}
    full_dir = tmp_path / "full"
    full = _start(full_dir, env)
    assert full.wait(timeout=300) == 0, full.stderr.read()[-3000:]
    run_dir = tmp_path / "run"
    steps, args = [], None
    for sig, after, status in ((signal.SIGUSR1, 20, 138), (signal.SIGTERM, 60, 143)):
        code, err = _signal_after(_start(run_dir, env, args), run_dir, after, sig)
        assert code == status, err[-3000:]
        data = json.loads((run_dir / "results.json").read_text())
        name = signal.Signals(sig).name
        assert data["status"] == "interrupted" and f"interrupted by {name}" in data["error"]
        assert f"glubench: interrupted by {name}" in err
        ckpt = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)
        assert ckpt["global_step"] == data["steps"] >= after  # saved at the interrupted step
        steps.append(data["steps"])
        args = _printed_resume_command(err)
        assert args[-1] == f"hydra.run.dir={run_dir}"
    assert steps[1] > steps[0]  # the second attempt resumed and went on
    last = _start(run_dir, env, args)
    assert last.wait(timeout=300) == 0, last.stderr.read()[-3000:]
    done, ref = (json.loads((d / "results.json").read_text()) for d in (run_dir, full_dir))
    assert done["status"] == "completed" and done["steps"] == 120
    assert abs(done["val_loss"] - ref["val_loss"]) <= 1e-6
    assert done["history"] == ref["history"] and [h["step"] for h in ref["history"]] == [20, 40, 60, 80, 100, 120]


def test_disk_full_keeps_the_previous_checkpoint_and_ends_in_one_line(tmp_path, monkeypatch, compose_cfg, caplog):
    """The second checkpoint write fails as on a full disk: the first stays loadable, no temp file is left,
    results.json says failed with the reason, and the command ends with one error line, exit 1."""
    import glubench.train.faults as faults_module

    real_save, saves = torch.save, []

    def full_disk(obj, f, *args, **kwargs):
        saves.append(1)
        if len(saves) >= 2:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_save(obj, f, *args, **kwargs)

    monkeypatch.setattr(faults_module.torch, "save", full_disk)
    monkeypatch.chdir(tmp_path)
    cfg = compose_cfg(["experiment=ci", "logger=none", "trainer.max_steps=20", "trainer.val_check_interval=5"])
    with pytest.raises(SystemExit) as info:
        main(cfg)
    assert info.value.code == 1
    errors = [r for r in caplog.records if r.levelname == "ERROR"]
    assert [r.getMessage() for r in errors] == [
        f"glubench: error: cannot write {tmp_path}/checkpoints/step-10.ckpt: No space left on device; its previous "
        "version, if any, is intact"] and errors[0].exc_info is None  # one line, no traceback
    monkeypatch.setattr(faults_module.torch, "save", real_save)
    assert torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=True)["global_step"] == 5
    assert not list((tmp_path / "checkpoints").glob(".*.tmp"))
    data = json.loads((tmp_path / "results.json").read_text())
    assert data["status"] == "failed" and "No space left on device" in data["error"]
