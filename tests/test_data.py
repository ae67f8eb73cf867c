import json

import numpy as np
import pytest

from glubench import data as gd
from glubench.data import (
    BPETokenizer,
    ByteTokenizer,
    Corpus,
    TrainBatches,
    ValWindows,
    in_val_split,
    load_text_files,
    load_tokens,
    prepare_tokens,
)


def _corpus(n=200):
    docs = [f"Document number {i} says hello to the world {i * 7}." for i in range(n)]
    return Corpus("toy", docs[:150], docs[150:], fingerprint="f" * 64, source="test")


def test_val_windows_score_every_token_but_the_first_once():
    tokens = np.arange(1, 1 + 103, dtype=np.uint16)
    ds = ValWindows(tokens, 10)
    ys = [y[y != gd.IGNORE_INDEX] for _, y in (ds[i] for i in range(len(ds)))]
    assert np.concatenate(ys).tolist() == tokens[1:].tolist()
    for i in range(len(ds)):
        x, y = ds[i]
        n = int((y != gd.IGNORE_INDEX).sum())
        assert x[1:n].tolist() == y[: n - 1].tolist()


def test_train_batches_are_deterministic_shifted_windows():
    tokens = np.arange(5000, dtype=np.uint16)
    ds = TrainBatches(tokens, seq_len=16, batch_size=4, num_batches=10, seed=3)
    x, y = ds[7]
    assert x.shape == (4, 16) and y.shape == (4, 16)
    assert (y[:, :-1] == x[:, 1:]).all() and (y[:, -1] == x[:, -1] + 1).all()
    x2, _ = TrainBatches(tokens, 16, 4, 10, seed=3)[7]
    assert (x == x2).all()
    x3, _ = TrainBatches(tokens, 16, 4, 10, seed=4)[7]
    assert not (x == x3).all()


def test_corpus_smaller_than_one_window_errors():
    with pytest.raises(ValueError, match="model.seq_len=64 needs at least 65 training tokens"):
        TrainBatches(np.arange(10, dtype=np.uint16), 64, 2, 1, 0)


def test_split_is_a_stable_hash():
    assert in_val_split("topic:assert", 5.0) == in_val_split("topic:assert", 5.0)
    ids = [f"doc{i}" for i in range(20000)]
    share = sum(in_val_split(i, 5.0) for i in ids) / len(ids)
    assert 0.045 < share < 0.055


def test_token_cache_hit_miss_and_atomicity(tmp_path, monkeypatch):
    corpus = _corpus()
    folder = prepare_tokens(corpus, ByteTokenizer(), tmp_path, 5.0)
    meta = json.loads((folder / "meta.json").read_text())
    assert meta["tokenizer"] == "bytes" and meta["train"]["tokens"] == meta["train"]["bytes"]
    mtime = (folder / "train.bin").stat().st_mtime_ns
    assert prepare_tokens(corpus, ByteTokenizer(), tmp_path, 5.0) == folder  # hit
    assert (folder / "train.bin").stat().st_mtime_ns == mtime
    bpe = BPETokenizer.train_or_load(corpus, 300, tmp_path)
    assert prepare_tokens(corpus, bpe, tmp_path, 5.0) != folder  # tokenizer change: miss
    bpe2 = BPETokenizer.train_or_load(corpus, 320, tmp_path)
    assert bpe2.file_hash != bpe.file_hash
    assert prepare_tokens(corpus, bpe2, tmp_path, 5.0) not in (folder, prepare_tokens(corpus, bpe, tmp_path, 5.0))

    other = Corpus("toy", corpus.train, corpus.val, fingerprint="e" * 64, source="test")

    def boom(self, docs):
        raise RuntimeError("killed midway")

    monkeypatch.setattr(ByteTokenizer, "encode_documents", boom)
    with pytest.raises(RuntimeError):
        prepare_tokens(other, ByteTokenizer(), tmp_path, 5.0)
    monkeypatch.undo()
    key = gd.cache_key(other, ByteTokenizer(), 5.0)
    assert not (tmp_path / "tokens" / key).exists()
    assert not [p for p in (tmp_path / "tokens").iterdir() if p.name.startswith(".")]  # no debris


def test_bpe_token_bytes_are_exact(tmp_path):
    corpus = _corpus()
    bpe = BPETokenizer.train_or_load(corpus, 300, tmp_path)
    folder = prepare_tokens(corpus, bpe, tmp_path, 5.0)
    splits = load_tokens(folder, bpe.token_bytes())
    text = "".join(d + gd.DOC_SEPARATOR for d in corpus.val)
    first = bpe.tok.decode([int(splits.val[0])])
    assert splits.val_predicted_bytes == len(text.encode()) - len(first.encode())
    assert splits.val.size < len(text.encode())  # BPE actually merged something


def test_text_files_errors(tmp_path):
    bad = tmp_path / "bad.txt"
    bad.write_bytes(b"hello\n\xff\xfe world")
    with pytest.raises(ValueError, match=r"bad.txt is not UTF-8 text \(byte offset 6\)"):
        load_text_files(str(bad), 5.0)
    empty = tmp_path / "empty.txt"
    empty.write_text("  \n")
    with pytest.raises(ValueError, match="empty.txt is empty"):
        load_text_files(str(empty), 5.0)
    with pytest.raises(FileNotFoundError, match="no such file"):
        load_text_files(str(tmp_path / "missing*.txt"), 5.0)


def test_shared_tinyshakespeare_loads(shared_data, tmp_path):
    corpus = load_text_files(str(shared_data / "tinyshakespeare" / "input.txt"), 5.0)
    assert len(corpus.train) > 1000 and 0 < len(corpus.val) < len(corpus.train)
    folder = prepare_tokens(corpus, ByteTokenizer(), tmp_path, 5.0)
    splits = load_tokens(folder, ByteTokenizer().token_bytes())
    assert splits.train.size + splits.val.size > 1_000_000
