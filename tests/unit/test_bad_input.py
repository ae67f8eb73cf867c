"""Bad input (issue 7): one line naming the key, exit 2, nothing written, before any expensive work.

Each case goes through the real entry point in-process: ``hydra.compose`` then ``main(cfg)`` (Hydra's decorated
main accepts a composed config and calls the function directly); tests/integration/test_faults.py runs a few
through the ``glubench`` console script.  Set ``GLUBENCH_BAD_INPUT_REPORT=path`` to append each case and its
message to ``path``.
"""

import json
import os
from pathlib import Path

import pytest
import torch
from hydra.errors import HydraException
from omegaconf.errors import OmegaConfBaseException

from glubench.cli.main import main

CUDA = torch.cuda.is_available()


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
