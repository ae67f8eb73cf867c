"""Atomic writes (core.io, and the checkpoint IO built on it) keep the previous file whole when a write fails."""

import errno
import json

import pytest
import torch

from glubench.core import io
from glubench.core.errors import WriteFailed
from glubench.core.io import atomic_write, atomic_write_json
from glubench.train.faults import AtomicCheckpointIO


def test_failed_write_keeps_the_previous_file_and_leaves_no_temp(tmp_path, monkeypatch):
    path = tmp_path / "results.json"
    atomic_write_json(path, {"status": "completed", "val_loss": 2.5})
    before = path.read_bytes()

    def half_written_then_full(f):
        f.write(b'{"status": "comp')  # part of the new file reached the disk
        raise OSError(errno.ENOSPC, "No space left on device")

    with pytest.raises(WriteFailed) as info:
        atomic_write(path, half_written_then_full)
    assert info.value.errno == errno.ENOSPC and isinstance(info.value, OSError)
    assert str(info.value) == (f"cannot write {path}: No space left on device; its previous version, if any, "
                               "is intact")
    assert path.read_bytes() == before and json.loads(before)["val_loss"] == 2.5
    assert [p.name for p in tmp_path.iterdir()] == ["results.json"]  # the temp file is gone


def test_a_failing_rename_is_a_write_failure_too(tmp_path, monkeypatch):
    path = tmp_path / "x.json"
    path.write_text("old")

    def no_permission(src, dst):
        raise PermissionError(errno.EACCES, "Permission denied")

    monkeypatch.setattr(io.os, "replace", no_permission)
    with pytest.raises(WriteFailed, match="Permission denied"):
        atomic_write_json(path, {"new": 1})
    assert path.read_text() == "old" and [p.name for p in tmp_path.iterdir()] == ["x.json"]


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
