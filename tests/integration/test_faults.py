"""Bad input, numerical faults, interruptions and secrets (issue 7).

Bad inputs go through the real entry point in-process: ``hydra.compose`` then ``main(cfg)``
(Hydra's decorated main accepts a composed config and calls the function directly).  A few
go through the ``glubench`` console script to prove the exit code and the one-line message.
Set ``GLUBENCH_BAD_INPUT_REPORT=path`` to append each case and its message to ``path``.
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
from hydra.errors import HydraException
from omegaconf.errors import OmegaConfBaseException

from glubench.cli.main import main
from glubench.core.paths import CONF_DIR
from glubench.core.secrets import redact, secret_values
from glubench.nn.config import FFN_VARIANTS
from glubench.train.callbacks import NonFiniteGuard
from glubench.train.faults import AtomicCheckpointIO, Diverged

CONF = str(CONF_DIR)
REPO = Path(__file__).resolve().parents[2]
CUDA = torch.cuda.is_available()
VALID_FFNS = ", ".join(FFN_VARIANTS)




def _write_files(d: Path) -> dict:
    """Bad data files, plus a text whose splits are too short for the ``seq_len`` cases."""
    (d / "empty.txt").write_bytes(b"")
    (d / "blank.txt").write_bytes(b"  \n\n \t\n")
    (d / "binary.txt").write_bytes(b"hello world\n" + b"\x00\x01\x02" * 10)
    (d / "latin1.txt").write_bytes("caf\u00e9 ok\n".encode() + "na\u00efve".encode("latin-1"))  # 0xef at byte 11
    (d / "truncated.txt").write_bytes(b"ok text \xe2\x82")  # a 3-byte euro sign cut after 2 bytes
    (d / "folder").mkdir()
    (d / "afile").write_text("not a folder")
    # 40 paragraphs (1,280 bytes) for training; a 14-byte validation file.
    (d / "short.txt").write_text("\n\n".join(f"paragraph {i:02d} says something." for i in range(40)))
    (d / "tiny_val.txt").write_text("tiny val text\n")
    return {"train": (d / "short.txt").stat().st_size, "val": 14}


def _cases(split):
    """(id, overrides, key that the message must name)."""
    return [
        ("unknown-ffn", ["model.ffn=swiglu2"], "model.ffn"),
        ("heads-not-dividing", ["model.d_model=30", "model.n_heads=4"], "model.d_model"),
        ("d_model-zero", ["model.d_model=0"], "model.d_model"),
        ("n_layers-negative", ["model.n_layers=-1"], "model.n_layers"),
        ("n_heads-zero", ["model.n_heads=0"], "model.n_heads"),
        ("seq_len-zero", ["model.seq_len=0"], "model.seq_len"),
        ("d_ff-zero", ["model.d_ff=0"], "model.d_ff"),
        ("ffn_multiple_of-zero", ["model.ffn_multiple_of=0"], "model.ffn_multiple_of"),
        ("unknown-init", ["model.init=xavier"], "model.init"),
        ("init_std-zero", ["model.init_std=0"], "model.init_std"),
        ("dropout-one", ["model.dropout=1.0"], "model.dropout"),
        ("model-vocab-set", ["model.vocab_size=1000"], "model.vocab_size"),
        ("max_steps-zero", ["trainer.max_steps=0"], "trainer.max_steps"),
        ("log-every-zero", ["trainer.log_every_n_steps=0"], "trainer.log_every_n_steps"),
        ("accumulate-zero", ["trainer.accumulate_grad_batches=0"], "trainer.accumulate_grad_batches"),
        ("unknown-precision", ["trainer.precision=fp8"], "trainer.precision"),
        ("unknown-accelerator", ["trainer.accelerator=quantum"], "trainer.accelerator"),
        ("too-many-devices", ["trainer.accelerator=cpu", "trainer.devices=4096"], "trainer.devices"),
        ("zero-devices", ["trainer.devices=0"], "trainer.devices"),
        ("gpu-absent", ["trainer.accelerator=gpu"], "trainer.accelerator"),  # skipped where a GPU exists
        ("negative-clip", ["trainer.gradient_clip_val=-1"], "trainer.gradient_clip_val"),
        ("batch-zero", ["data.batch_size=0"], "data.batch_size"),
        ("val-batch-negative", ["data.val_batch_size=-2"], "data.val_batch_size"),
        ("workers-negative", ["data.num_workers=-1"], "data.num_workers"),
        ("lr-zero", ["optim.lr=0"], "optim.lr"),
        ("lr-negative", ["optim.lr=-1e-3"], "optim.lr"),
        ("lr-nan", ["optim.lr=nan"], "optim.lr"),
        ("warmup-as-long-as-training", ["optim.warmup_steps=20"], "optim.warmup_steps"),
        ("beta2-one", ["optim.beta2=1.0"], "optim.beta2"),
        ("eps-zero", ["optim.eps=0"], "optim.eps"),
        ("weight-decay-negative", ["optim.weight_decay=-0.1"], "optim.weight_decay"),
        ("min-lr-ratio-above-one", ["optim.min_lr_ratio=1.5"], "optim.min_lr_ratio"),
        ("unknown-tokenizer", ["data.tokenizer=wordpiece"], "data.tokenizer"),
        ("bpe-vocab-too-small", ["data.tokenizer=bpe", "data.vocab_size=100"], "data.vocab_size"),
        ("bpe-vocab-too-large", ["data.tokenizer=bpe", "data.vocab_size=70000"], "data.vocab_size"),
        ("unknown-corpus", ["data.name=wikipedia"], "data.name"),
        ("val-percent-zero", ["data.val_percent=0"], "data.val_percent"),
        ("cache-dir-is-a-file", ["data.cache_dir={d}/afile"], "data.cache_dir"),
        ("peak-flops-zero", ["throughput.peak_flops=0"], "throughput.peak_flops"),
        ("peak-flops-negative", ["throughput.peak_flops=-1e12"], "throughput.peak_flops"),
        ("throughput-warmup-negative", ["throughput.warmup_steps=-1"], "throughput.warmup_steps"),
        ("unknown-wandb-mode", ["logger=wandb", "logger.wandb.mode=cloud"], "logger.wandb.mode"),
        ("unknown-nonfinite-action", ["faults.on_nonfinite=ignore"], "faults.on_nonfinite"),
        ("max-skips-negative", ["faults.max_skips=-1"], "faults.max_skips"),
        ("seed-negative", ["seed=-1"], "seed"),
        ("files-unset", ["data=text"], "data.files"),
        ("file-missing", ["data=text", "data.files={d}/nope.txt"], "data.files"),
        ("glob-matches-nothing", ["data=text", "data.files={d}/*.nothing"], "data.files"),
        ("file-empty", ["data=text", "data.files={d}/empty.txt"], "data.files"),
        ("file-only-whitespace", ["data=text", "data.files={d}/blank.txt"], "data.files"),
        ("file-binary", ["data=text", "data.files={d}/binary.txt"], "byte offset 12"),
        ("file-not-utf8", ["data=text", "data.files=[{d}/short.txt,{d}/latin1.txt]"], "byte offset 11"),
        ("file-truncated-utf8", ["data=text", "data.files={d}/truncated.txt"], "byte offset 8"),
        ("file-is-a-folder", ["data=text", "data.files={d}/folder"], "data.files"),
        ("seq-len-beyond-train-split", ["data=text", "data.files={d}/short.txt", "data.val_files={d}/tiny_val.txt",
                                        f"model.seq_len={split['train']}"], "model.seq_len"),
        ("seq-len-beyond-val-split", ["data=text", "data.files={d}/short.txt", "data.val_files={d}/tiny_val.txt",
                                      f"model.seq_len={split['val']}"], "model.seq_len"),
        ("completed-run-in-output-dir", ["overwrite=false"], "overwrite"),
    ]


SCHEMA_CASES = [  # rejected by Hydra against the schema while composing (the CLI exits 1)
    ("unknown-key", ["model.d_modle=64"], "d_modle"),
    ("unknown-top-level-key", ["sed=1"], "sed"),
    ("wrong-type", ["model.n_layers=four"], "model.n_layers"),
    ("unknown-config-option", ["model=huge"], "model"),
]


@pytest.fixture(scope="module")
def bad_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("bad")
    return d, _write_files(d)


def _report(case_id, overrides, message):
    path = os.environ.get("GLUBENCH_BAD_INPUT_REPORT")
    if path:
        with open(path, "a") as f:
            f.write(json.dumps({"case": case_id, "overrides": overrides, "message": message}) + "\n")


def _claims_success(root: Path) -> list[Path]:
    return [p for p in root.rglob("results.json") if json.loads(p.read_text()).get("status") == "completed"]


CASE_IDS = [c[0] for c in _cases({"train": 0, "val": 0})]


@pytest.mark.parametrize("case_id", CASE_IDS)
def test_bad_input_exits_with_one_line(case_id, bad_dir, tmp_path, monkeypatch, capsys, compose_cfg):
    d, split = bad_dir
    if case_id == "gpu-absent" and CUDA:
        pytest.skip("a GPU is present")
    _, overrides, key = next(c for c in _cases(split) if c[0] == case_id)
    overrides = [o.format(d=d) for o in overrides]
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    monkeypatch.chdir(run_dir)  # outside Hydra the output dir is the current dir
    before = None
    if case_id == "completed-run-in-output-dir":
        (run_dir / "results.json").write_text(json.dumps({"status": "completed", "val_loss": 1.0}))
        before = (run_dir / "results.json").read_bytes()
    cfg = compose_cfg(["experiment=ci", "logger=none", *overrides])
    with pytest.raises(SystemExit) as exit_info:
        main(cfg)
    err = capsys.readouterr().err.strip()
    if case_id.startswith("seq-len"):  # after data preparation: its progress bars come first
        err = err.splitlines()[-1]
    _report(case_id, overrides, err)
    assert exit_info.value.code == 2
    assert "\n" not in err and err.startswith("glubench: error: "), err
    assert key in err, err
    if before is not None:
        assert (run_dir / "results.json").read_bytes() == before  # untouched
    else:
        assert not _claims_success(run_dir)
        if not case_id.startswith("seq-len"):  # pre-flight: nothing written at all
            assert not any(run_dir.iterdir()), list(run_dir.iterdir())


@pytest.mark.parametrize("case_id,overrides,key", SCHEMA_CASES, ids=[c[0] for c in SCHEMA_CASES])
def test_schema_rejects_while_composing(case_id, overrides, key, compose_cfg):
    with pytest.raises((HydraException, OmegaConfBaseException)) as info:
        compose_cfg(["experiment=ci", "logger=none", *overrides])
    cause = info.value.__cause__
    _report(case_id, overrides, " / ".join(str(info.value).splitlines()[:2]) + (f" / {cause}" if cause else ""))
    assert key in str(info.value)


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


def test_resume_hint_names_the_run_dir_or_the_sweep(tmp_path, compose_cfg):
    """The interrupt message's command: a single run's overrides plus its run dir (the default one is
    timestamped, so the same command would start afresh); a multirun job's sweep, from multirun.yaml.  A
    resubmitted sweep keeps its completed jobs (their val_loss, no training, no error)."""
    from hydra.core.hydra_config import HydraConfig
    from omegaconf import OmegaConf, open_dict

    from glubench.cli.main import resume_hint

    def hydra_job(overrides, mode, out):
        cfg = compose_cfg(overrides, hydra=True)
        with open_dict(cfg):
            cfg.hydra.mode, cfg.hydra.runtime.output_dir = mode, str(out)
        HydraConfig.instance().set_config(cfg)
        return cfg

    try:
        hydra_job(["experiment=ci", "logger.wandb.tags=[a,b]"], "RUN", tmp_path / "run")
        assert resume_hint() == (f"to resume: glubench experiment=ci 'logger.wandb.tags=[a,b]' "
                                 f"hydra.run.dir={tmp_path}/run")
        sweep = tmp_path / "sweep"
        (sweep / "1_relu_s0").mkdir(parents=True)
        OmegaConf.save({"hydra": {"overrides": {"task": ["experiment=ci", "optim.lr=1e-3,3e-3"]}}},
                       sweep / "multirun.yaml")
        cfg = hydra_job(["experiment=ci", "optim.lr=3e-3"], "MULTIRUN", sweep / "1_relu_s0")
        assert resume_hint() == ("to resume the sweep (its completed jobs are kept): glubench --multirun "
                                 f"experiment=ci optim.lr=1e-3,3e-3 hydra.sweep.dir={sweep}")
        (sweep / "1_relu_s0" / "results.json").write_text(json.dumps({"status": "completed", "ffn": "relu",
                                                                       "seed": 0, "val_loss": 4.25}))
        assert main(cfg) == 4.25 and not (sweep / "1_relu_s0" / "checkpoints").exists()
    finally:
        HydraConfig.instance().cfg = None


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


# ---------------------------------------------------------------------------- files and secrets


class _Payload:
    pass


def test_checkpoint_io_is_atomic_and_weights_only(tmp_path):
    io = AtomicCheckpointIO()
    io.save_checkpoint({"state_dict": {"w": torch.ones(2)}, "step": 3}, tmp_path / "c" / "last.ckpt")
    assert [p.name for p in (tmp_path / "c").iterdir()] == ["last.ckpt"]  # no temp file left
    assert io.load_checkpoint(tmp_path / "c" / "last.ckpt")["step"] == 3
    torch.save({"x": _Payload()}, tmp_path / "evil.ckpt")  # unpickling it would run our code
    with pytest.raises(Exception, match="[Ww]eights only"):
        io.load_checkpoint(tmp_path / "evil.ckpt")


def test_redact_hides_secret_env_values():
    env = {"WANDB_API_KEY": "abcdef0123456789", "MY_TOKEN": "tok-98765432", "TOKENIZERS_PARALLELISM": "false",
           "HOME": "/root/secretless"}
    secrets = secret_values(env)
    assert set(secrets) >= {"abcdef0123456789", "tok-98765432"} and "false" not in secrets
    assert "/root/secretless" not in secrets
    obj = {"a": ["x-abcdef0123456789-y", 3], "tok-98765432": {"b": "false"}}
    assert redact(obj, secrets) == {"a": ["x-***-y", 3], "***": {"b": "false"}}
