import builtins
import hashlib
import io
import json
import os
import re

import numpy as np
import pytest

import glubench.data.cache as gd
import glubench.data.corpus as gc
import glubench.data.files as gf
import glubench.data.tokenizers as gt
from glubench.core.errors import ConfigError, TokenizerUnavailable
from glubench.data.cache import load_tokens, prepare_tokens
from glubench.data.corpus import Corpus, DataSpec, in_val_split
from glubench.data.sources import load_corpus_spec
from glubench.data.tokenizers import BPETokenizer, ByteTokenizer
from glubench.data.windows import IGNORE_INDEX, TrainBatches, ValWindows


def _corpus(n=200):
    docs = [f"Document number {i} says hello to the world {i * 7}." for i in range(n)]
    return Corpus("toy", docs[:150], docs[150:], fingerprint="f" * 64, source="test")


def test_val_windows_score_every_token_but_the_first_once():
    tokens = np.arange(1, 1 + 103, dtype=np.uint16)
    ds = ValWindows(tokens, 10)
    ys = [y[y != IGNORE_INDEX] for _, y in (ds[i] for i in range(len(ds)))]
    assert np.concatenate(ys).tolist() == tokens[1:].tolist()
    for i in range(len(ds)):
        x, y = ds[i]
        n = int((y != IGNORE_INDEX).sum())
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


# int(sha256(id)[:8], 16) % 10000 of a few ids, computed with coreutils:
#   printf %s doc1 | sha256sum | cut -c1-8   ->  c63ebdcb  ->  587
BUCKETS = {"doc1": 587, "doc6": 743, "doc2": 3538, "doc0": 5759}


def test_split_puts_a_document_in_validation_iff_its_hash_bucket_is_below_100_val_percent():
    assert in_val_split("doc1", 6.0) and not in_val_split("doc6", 6.0)  # 587 < 600 <= 743
    assert in_val_split("doc6", 7.5) and not in_val_split("doc2", 7.5)  # 743 < 750 <= 3538
    assert not in_val_split("doc1", 5.87) and in_val_split("doc1", 5.88)  # strict: bucket 587 needs 5.88
    assert in_val_split("doc0", 57.6) and not in_val_split("doc0", 57.59)
    assert not any(in_val_split(d, 5.0) for d in BUCKETS) and all(in_val_split(d, 60.0) for d in BUCKETS)
    ids = [f"doc{i}" for i in range(20000)]
    share = sum(in_val_split(i, 5.0) for i in ids) / len(ids)
    assert 0.045 < share < 0.055


def test_test_split_takes_the_buckets_just_above_validation():
    # bucket 587 (doc1) and 743 (doc6): see BUCKETS
    assert gc.split_of("doc1", 5.0, 1.0) == "test" and gc.split_of("doc6", 5.0, 1.0) == "train"  # [500, 600)
    assert gc.split_of("doc6", 6.0, 1.5) == "test" and gc.split_of("doc1", 6.0, 1.5) == "val"  # [600, 750)
    assert gc.split_of("doc2", 5.0, 30.5) == "test" and gc.split_of("doc0", 5.0, 30.5) == "train"  # 3538 < 3550
    for doc, _ in BUCKETS.items():  # without a test split, validation is exactly in_val_split's
        for pct in (5.0, 6.0, 60.0):
            assert (gc.split_of(doc, pct) == "val") == in_val_split(doc, pct)
            assert gc.split_of(doc, pct, 0.0) != "test"


def test_text_file_test_split_leaves_validation_unchanged(shared_data, tmp_path, make_dm):
    path = shared_data / "tinyshakespeare" / "input.txt"
    raw = path.read_bytes()
    plain = make_dm(["data=text", f"data.files={path}"], tmp_path)
    three = make_dm(["data=text", f"data.files={path}", "data.test_percent=7"], tmp_path)
    assert plain.splits.test is None and three.folder != plain.folder
    assert np.array_equal(three.splits.val, plain.splits.val)  # the same documents, the same tokens
    # bytes: every byte in exactly one split; the test paragraphs by hand, from the hash of "p<index>"
    assert three.splits.train.size + three.splits.val.size + three.splits.test.size == len(raw)
    lines = raw.decode("utf-8").splitlines(keepends=True)
    para, starts = -1, []
    for i, line in enumerate(lines):
        if line.strip() and (i == 0 or not lines[i - 1].strip()):
            para += 1
        starts.append(para)
    bucket = {p: int(hashlib.sha256(f"p{p}".encode()).hexdigest()[:8], 16) % 10_000 for p in set(starts)}
    want = "".join(line for line, p in zip(lines, starts) if 500 <= bucket[p] < 1200).encode("utf-8")
    assert bytes(np.asarray(three.splits.test, dtype=np.uint8)) == want
    assert three.splits.meta["test"]["bytes"] == len(want) and three.splits.meta["test"]["predicted_bytes"] == len(
        want) - 1


def test_test_split_keys_are_checked_in_one_line(compose_cfg, tmp_path):
    from glubench.train.config_rules import validate_config

    for overrides, match in ((["data.test_percent=95"], r"^data.test_percent=95.0 must be in \[0, 95\)"),
                             (["data.test_percent=-1"], r"^data.test_percent=-1.0 must be in \[0, 95\)"),
                             (["data.test_split=test"], r"^data.test_split='test' names a Hub split"),
                             ([f"data.test_files={tmp_path}/t.txt"], r"^data.test_files needs data.files")):
        with pytest.raises(ConfigError, match=match):
            validate_config(compose_cfg(overrides))


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
    assert prepare_tokens(corpus, ByteTokenizer(), tmp_path, 10.0) != folder  # split rule change: miss

    other = Corpus("toy", corpus.train, corpus.val, fingerprint="e" * 64, source="test")
    calls = []
    real = ByteTokenizer.encode_flat

    def dies_on_val(self, texts):  # train.bin is written, then the process "dies"
        calls.append(len(texts))
        if len(calls) > 1:
            raise KeyboardInterrupt("killed midway")
        return real(self, texts)

    monkeypatch.setattr(ByteTokenizer, "encode_flat", dies_on_val)
    with pytest.raises(KeyboardInterrupt):
        prepare_tokens(other, ByteTokenizer(), tmp_path, 5.0)
    assert len(calls) == 2
    monkeypatch.undo()
    key = gd.cache_key(other, ByteTokenizer(), 5.0)
    assert not (tmp_path / "tokens" / key).exists()
    assert not [p for p in (tmp_path / "tokens").iterdir() if p.name.startswith(".")]  # no debris
    again = load_tokens(prepare_tokens(other, ByteTokenizer(), tmp_path, 5.0))  # rebuilt, complete
    text = "".join(d + gc.DOC_SEPARATOR for d in corpus.train)
    assert bytes(np.asarray(again.train, dtype=np.uint8)) == text.encode()


def test_bpe_token_bytes_are_exact(tmp_path):
    corpus = _corpus()
    bpe = BPETokenizer.train_or_load(corpus, 300, tmp_path)
    folder = prepare_tokens(corpus, bpe, tmp_path, 5.0)
    splits = load_tokens(folder)
    text = "".join(d + gc.DOC_SEPARATOR for d in corpus.val)
    first = bpe.tok.decode([int(splits.val[0])])
    predicted = len(text.encode()) - len(first.encode())  # every byte but the first token's (context only)
    assert int(splits.token_bytes[splits.val[1:].astype(np.int64)].sum()) == predicted
    assert splits.meta["val"]["predicted_bytes"] == predicted
    assert splits.val.size < len(text.encode())  # BPE actually merged something


def _load_text(files, cache_dir, val_percent=5.0):
    return load_corpus_spec(DataSpec(name="text", files=files, val_percent=val_percent), cache_dir).load()


def test_text_files_errors(tmp_path):
    bad = tmp_path / "bad.txt"
    bad.write_bytes(b"hello\n\xff\xfe world")
    with pytest.raises(ConfigError, match=f"^data.files: {re.escape(str(bad))} is not UTF-8 text "
                                          r"\(byte 0xff at byte offset 6\)$"):
        _load_text(str(bad), tmp_path)
    empty = tmp_path / "empty.txt"
    empty.write_text("  \n")
    with pytest.raises(ConfigError, match=f"^data.files: {re.escape(str(empty))} is empty \\(only whitespace\\)$"):
        _load_text(str(empty), tmp_path)
    pattern = str(tmp_path / "missing*.txt")
    with pytest.raises(ConfigError, match=f"^data.files={re.escape(repr(pattern))}: the pattern matches no file$"):
        _load_text(pattern, tmp_path)
    missing = str(tmp_path / "nope.txt")
    with pytest.raises(ConfigError, match=f"^data.files={re.escape(repr(missing))}: no such file$"):
        _load_text(missing, tmp_path)
    ok = tmp_path / "ok.txt"
    ok.write_text("fine\n")
    with pytest.raises(ConfigError, match=f"^data.val_files: {re.escape(str(empty))} is empty"):
        load_corpus_spec(DataSpec(name="text", files=str(ok), val_files=str(empty)), tmp_path)
    # The source rules of validate_config hold here too: glubench-eval loads its data.* without it.
    with pytest.raises(ConfigError, match=r"^data.files is required for data=text"):
        load_corpus_spec(DataSpec(name="text"), tmp_path)
    with pytest.raises(ConfigError, match=r"^data.val_files needs data.files"):
        load_corpus_spec(DataSpec(name="pydocs", val_files=str(ok)), tmp_path)


def test_shared_tinyshakespeare_loads(shared_data, tmp_path):
    corpus = _load_text(str(shared_data / "tinyshakespeare" / "input.txt"), tmp_path)
    assert len(corpus.train) > 1000 and 0 < len(corpus.val) < len(corpus.train)
    folder = prepare_tokens(corpus, ByteTokenizer(), tmp_path, 5.0)
    splits = load_tokens(folder)
    assert splits.train.size + splits.val.size > 1_000_000


# ---------------------------------------------------------------------------- data files (glubench.data.files)


def _count_opens(monkeypatch, path) -> list:
    """Record every ``open`` / ``io.open`` / ``Path.open`` of ``path`` for reading from now on."""
    target, opened, real = os.path.realpath(path), [], builtins.open

    def counting(file, *args, **kwargs):
        mode = args[0] if args else kwargs.get("mode", "r")
        if (isinstance(file, (str, bytes, os.PathLike)) and not set(mode) & set("wax")
                and os.path.realpath(os.fsdecode(file)) == target):
            opened.append(file)
        return real(file, *args, **kwargs)

    monkeypatch.setattr(builtins, "open", counting)
    monkeypatch.setattr(io, "open", counting)
    return opened


@pytest.mark.parametrize("content,message", [
    (b"", "is empty"),
    (b"  \n\n \t\n", "is empty (only whitespace)"),
    (b"hello world\n" + b"\x00\x01\x02" * 10, "is binary, not text (NUL byte at byte offset 12)"),
    ("caf\u00e9 ok\n".encode() + "na\u00efve".encode("latin-1"), "is not UTF-8 text (byte 0xef at byte offset 11)"),
    (b"ok text \xe2\x82", "is not UTF-8 text (truncated character at byte offset 8)"),
])
@pytest.mark.parametrize("chunk", [1 << 20, 3])  # 3: characters and NULs split across reads
def test_check_data_file_text_names_the_file_and_the_byte(tmp_path, monkeypatch, content, message, chunk):
    monkeypatch.setattr(gf, "CHUNK_BYTES", chunk)
    path = tmp_path / "f.txt"
    path.write_bytes(content)
    with pytest.raises(ConfigError) as e:
        gf.check_data_file(path, "text", "data.val_files")
    assert str(e.value) == f"data.val_files: {path} {message}"


def test_check_data_file_text_folder_missing_and_unreadable(tmp_path):
    with pytest.raises(ConfigError) as e:
        gf.check_data_file(tmp_path, "text")
    assert str(e.value) == f"data.files: {tmp_path} is a folder; give files or a glob such as '{tmp_path}/*.txt'"
    with pytest.raises(ConfigError) as e:
        gf.check_data_file(tmp_path / "gone.txt", "text")
    assert str(e.value) == f"data.files: {tmp_path / 'gone.txt'} does not exist"
    locked = tmp_path / "locked.txt"
    locked.write_text("secret\n")
    locked.chmod(0)
    try:
        if os.access(locked, os.R_OK):
            pytest.skip("running as a user who can read any file (root)")
        with pytest.raises(ConfigError) as e:
            gf.check_data_file(locked, "text")
        assert str(e.value) == f"data.files: {locked} cannot be read (Permission denied)"
    finally:
        locked.chmod(0o600)


def test_check_data_file_text_returns_the_sha256_across_chunk_boundaries(tmp_path, monkeypatch):
    monkeypatch.setattr(gf, "CHUNK_BYTES", 3)
    data = "a\u00e9\u20ac\U0001f600 \u00fcber\n".encode()  # 2-, 3- and 4-byte characters split by 3-byte reads
    path = tmp_path / "u.txt"
    path.write_bytes(data)
    assert gf.check_data_file(path, "text") == hashlib.sha256(data).hexdigest()
    # A bad continuation byte after a lead byte that ended the previous read: reported at the lead byte.
    bad = tmp_path / "b.txt"
    bad.write_bytes(b"abc\xe2\x82xyz")  # offset 3: a 3-byte lead, then 'x' where a continuation must be
    with pytest.raises(ConfigError, match=r"\(byte 0xe2 at byte offset 3\)$"):
        gf.check_data_file(bad, "text")


def test_file_hash_is_computed_once_per_process_until_the_file_changes(tmp_path, monkeypatch):
    path = tmp_path / "t.txt"
    path.write_bytes(b"first version\n")
    gf.clear_hash_cache()
    opened = _count_opens(monkeypatch, path)
    assert gf.check_data_file(path, "text") == hashlib.sha256(b"first version\n").hexdigest()
    assert gf.check_data_file(path, "text", "data.val_files") == hashlib.sha256(b"first version\n").hexdigest()
    assert gf.check_data_file(path, "json") == hashlib.sha256(b"first version\n").hexdigest()
    assert len(opened) == 1
    st = path.stat()
    path.write_bytes(b"other version\n")  # same size: only the mtime tells
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000))
    assert gf.check_data_file(path, "text") == hashlib.sha256(b"other version\n").hexdigest()
    assert len(opened) == 2
    # A hash taken without the text check does not vouch for the text.
    blob = tmp_path / "blob.txt"
    blob.write_bytes(b"\x00binary")
    assert gf.check_data_file(blob, "json") == hashlib.sha256(b"\x00binary").hexdigest()
    with pytest.raises(ConfigError, match="NUL byte at byte offset 0"):
        gf.check_data_file(blob, "text")


def test_expand_files_paths_globs_lists_and_home(tmp_path, monkeypatch):
    from omegaconf import OmegaConf

    for name in ("b.txt", "a.txt", "c.md"):
        (tmp_path / name).write_text("x\n")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "d.txt").write_text("x\n")
    monkeypatch.setenv("HOME", str(tmp_path))
    got = gf.expand_files(OmegaConf.create({"f": ["~/c.md", f"{tmp_path}/*.txt", f"{tmp_path}/**/d.txt"]}).f)
    assert got == [tmp_path / "c.md", tmp_path / "a.txt", tmp_path / "b.txt", tmp_path / "sub" / "d.txt"]
    assert gf.expand_files(tmp_path / "sub") == [tmp_path / "sub"]  # kept, for check_data_file to refuse
    with pytest.raises(ConfigError) as e:
        gf.expand_files(["~/a.txt", "~/zzz.txt"], "data.val_files")
    assert str(e.value) == "data.val_files='~/zzz.txt': no such file"
    with pytest.raises(ConfigError) as e:
        gf.expand_files("~/*.json")
    assert str(e.value) == "data.files='~/*.json': the pattern matches no file"


def test_infer_format_and_check_data_file(tmp_path):
    paths = [tmp_path / "a.txt.gz", tmp_path / "b.md", tmp_path / "noext"]
    assert gf.infer_format(paths, None) == "text"
    assert gf.infer_format([tmp_path / "x.jsonl.zst"], None) == "json"
    with pytest.raises(ConfigError) as e:
        gf.infer_format([tmp_path / "a.txt", tmp_path / "b.parquet"], None, "data.val_files")
    assert str(e.value) == "data.val_files: files of several formats (parquet, text); set data.format"
    with pytest.raises(ConfigError, match=r"data.format='csv' is not known; valid: text, json, parquet"):
        gf.infer_format(paths, "csv")
    gz = tmp_path / "a.txt.gz"
    gz.write_bytes(b"\x1f\x8b\x08\x00")  # compressed text is binary: hashed, decoded later by datasets
    assert gf.check_data_file(gz, "text") == hashlib.sha256(b"\x1f\x8b\x08\x00").hexdigest()
    empty = tmp_path / "e.json"
    empty.write_bytes(b"")
    with pytest.raises(ConfigError) as e:
        gf.check_data_file(empty, "json")
    assert str(e.value) == f"data.files: {empty} is empty"


# ---------------------------------------------------------------------------- real corpora, Hub configs


import pyarrow as pa  # noqa: E402
import pyarrow.parquet as pq  # noqa: E402
from omegaconf import OmegaConf  # noqa: E402

from glubench.core.errors import CorpusUnavailable  # noqa: E402
from glubench.data.cache import prepare_dataset  # noqa: E402
from glubench.data.corpus import paragraph_ids  # noqa: E402


def test_paragraph_ids_attach_blank_lines_to_the_paragraph_before():
    lines = ["a\n", "b\n", "\n", " \n", "c\n", "\n", "d"]
    assert paragraph_ids(lines).tolist() == [0, 0, 0, 0, 1, 1, 2]


def test_text_and_hub_config_on_local_files_give_identical_tokens(shared_data, tmp_path, make_dm):
    path = shared_data / "tinyshakespeare" / "input.txt"
    raw = path.read_bytes()
    text = make_dm(["data=text", f"data.files={path}"], tmp_path)
    hub = make_dm(["data=tinyshakespeare", f"data.files={path}"], tmp_path)
    assert hub.folder == text.folder  # one cache for one content
    assert np.array_equal(hub.splits.train, text.splits.train) and np.array_equal(hub.splits.val, text.splits.val)
    # Byte tokens are the file's bytes: nothing lost or added by rows, paragraphs or the split.
    assert text.splits.train.size + text.splits.val.size == len(raw)
    assert 0.02 < text.splits.val.size / len(raw) < 0.09
    assert text.splits.meta["train"]["bytes"] + text.splits.meta["val"]["bytes"] == len(raw)


def _wikitext_like(shared_data, tmp_path):
    """A local Hub-style snapshot (parquet rows = lines) and the same text as .txt files."""
    lines = (shared_data / "wikitext-2-tokenized" / "valid.txt").read_text("utf-8").splitlines(keepends=True)
    lines = lines[:1500]
    cut = 1200
    # Laid out like the Hub repo Salesforce/wikitext: one folder per config, declared in the card.
    snap = tmp_path / "snapshot" / "wikitext-2-raw-v1"
    snap.mkdir(parents=True)
    pq.write_table(pa.table({"text": lines[:cut]}), snap / "train-00000-of-00001.parquet")
    pq.write_table(pa.table({"text": lines[cut:]}), snap / "validation-00000-of-00001.parquet")
    (tmp_path / "snapshot" / "README.md").write_text(
        "---\nconfigs:\n- config_name: wikitext-2-raw-v1\n  data_files:\n"
        "  - split: train\n    path: wikitext-2-raw-v1/train-*\n"
        "  - split: validation\n    path: wikitext-2-raw-v1/validation-*\n---\n")
    (tmp_path / "train.txt").write_text("".join(lines[:cut]), "utf-8")
    (tmp_path / "valid.txt").write_text("".join(lines[cut:]), "utf-8")
    return tmp_path / "snapshot", lines, cut


def test_hub_config_local_dir_matches_text_builder(shared_data, tmp_path, make_dm):
    snap, lines, cut = _wikitext_like(shared_data, tmp_path)
    cache = tmp_path / "cache"
    bpe = ["data.tokenizer=bpe", "data.vocab_size=300"]
    hub = make_dm(["data=wikitext2", f"data.local_dir={snap}", *bpe], cache)
    txt = make_dm(["data=text", f"data.files={tmp_path / 'train.txt'}",
                     f"data.val_files={tmp_path / 'valid.txt'}", *bpe], cache)
    assert hub.splits.meta["source"].startswith("local snapshot") and txt.splits.meta["source"].startswith("text")
    assert np.array_equal(hub.splits.train, txt.splits.train) and np.array_equal(hub.splits.val, txt.splits.val)
    assert hub.splits.meta["val"]["bytes"] == len("".join(lines[cut:]).encode())
    assert hub.splits.train.size < hub.splits.meta["train"]["bytes"]  # BPE merged


def test_streamed_corpus_stops_at_the_token_budget(tmp_path, make_dm):
    rows = [{"id": f"doc-{i}", "text": f"Story {i}: the cat sat on mat number {i}."} for i in range(5000)]
    snap = tmp_path / "snap" / "data"
    snap.mkdir(parents=True)
    pq.write_table(pa.Table.from_pylist(rows), snap / "train-00000-of-00001.parquet")
    dm = make_dm(["data=fineweb_edu", f"data.local_dir={tmp_path / 'snap'}", "data.hub_config=null",
                    "data.max_tokens=30000", "data.val_percent=5"], tmp_path / "cache")
    m = dm.splits.meta
    total = m["train"]["tokens"] + m["val"]["tokens"]
    assert 30000 <= total < 30000 + 1000 * 45  # stops within one batch of 1000 documents
    assert m["train"]["tokens"] == m["train"]["bytes"]  # bytes tokenizer
    seen = m["train"]["documents"] + m["val"]["documents"]
    want_val = sum(gc.in_val_split(r["id"], 5) for r in rows[:seen])
    assert m["val"]["documents"] == want_val > 0


def test_uncached_hub_dataset_offline_fails_fast_naming_it(tmp_path, monkeypatch, make_dm):
    import datasets
    import huggingface_hub

    for var in ("HF_DATASETS_OFFLINE", "HF_HUB_OFFLINE"):
        monkeypatch.setenv(var, "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "hf" / "datasets"))
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "hf" / "datasets")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    dm = make_dm(["data=wikitext2"], tmp_path / "cache", setup=False)
    with pytest.raises(CorpusUnavailable, match=r"'Salesforce/wikitext' \(config 'wikitext-2-raw-v1'\).*"
                                                r"data\.local_dir=DIR.*data\.files=PATH"):
        dm.setup()
    assert not (tmp_path / "cache" / "tokens").exists()  # no silent fallback to another corpus


def test_warm_cache_reads_each_text_file_at_most_once_tokenizes_nothing_and_other_ranks_find_it(
        shared_data, tmp_path, monkeypatch, make_dm):
    path = shared_data / "wikitext-2-tokenized" / "valid.txt"
    ov = ["data=text", f"data.files={path}", "data.tokenizer=bpe", "data.vocab_size=400"]
    first = make_dm(ov, tmp_path)

    def no_tokenizing(*a, **k):
        raise AssertionError("a warm cache must not tokenize or train a tokenizer")

    monkeypatch.setattr(gd, "_tokenize_rows", no_tokenizing)
    monkeypatch.setattr(gc.Corpus, "load", no_tokenizing)  # rows (and so BPE training) load through here
    opened = _count_opens(monkeypatch, path)
    gf.clear_hash_cache()  # as in a new process: the content hash that keys the cache is taken once
    second = make_dm(ov, tmp_path)
    assert second.folder == first.folder
    assert len(opened) == 1
    third = make_dm(ov, tmp_path)  # same process, file unchanged: its hash is not recomputed
    assert third.folder == first.folder and len(opened) == 1
    monkeypatch.setenv("LOCAL_RANK", "1")  # another rank: the same locked path, finding the same folder
    other_rank = make_dm(ov, tmp_path)
    assert other_rank.folder == first.folder and np.array_equal(other_rank.splits.val, first.splits.val)
    assert len(opened) == 1
    monkeypatch.undo()
    spec = gd.data_spec(make_dm([*ov, "data.vocab_size=401"], tmp_path, setup=False).data)
    assert prepare_dataset(spec, "bpe", 401, tmp_path) != first.folder  # a vocab change is a new cache


def test_prepare_splits_takes_the_data_section_as_dictconfig_or_dict(shared_data, tmp_path, compose_cfg):
    path = shared_data / "tinyshakespeare" / "input.txt"
    cfg = compose_cfg([f"data.cache_dir={tmp_path}", "data=text", f"data.files=[{path}]"])
    folder, splits = gd.prepare_splits(cfg.data, seq_len=64)
    again, same = gd.prepare_splits(OmegaConf.to_container(cfg.data, resolve=True), seq_len=64)
    assert again == folder and (folder / "meta.json").is_file()
    assert splits.train.size + splits.val.size == path.stat().st_size  # bytes tokenizer: one token a byte
    assert np.array_equal(same.val, splits.val)
    # A ListConfig and a list of the same files are the same setting: one lock, so processes queue on it.
    assert len(list((tmp_path / "locks").glob("*.lock"))) == 1
    with pytest.raises(ValueError) as e:
        gd.prepare_splits(cfg.data, seq_len=2_000_000)
    assert str(e.value) == (f"data.name='text': the train split has {splits.train.size} tokens, fewer than one "
                            "window (model.seq_len=2000000 + 1); use more text or a smaller model.seq_len")


def test_corpus_smaller_than_one_window_errors_clearly(tmp_path, make_dm):
    small = tmp_path / "small.txt"
    small.write_text("".join(f"Paragraph {i} is short.\n\n" for i in range(60)))
    dm = make_dm(["data=text", f"data.files={small}", "data.val_percent=50"], tmp_path, setup=False, seq_len=2048)
    with pytest.raises(ValueError, match=r"train split has \d+ tokens, fewer than one window "
                                         r"\(model.seq_len=2048 \+ 1\)"):
        dm.setup()


def test_gpt2_without_its_files_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("TIKTOKEN_CACHE_DIR", str(tmp_path / "empty"))
    with pytest.raises(TokenizerUnavailable, match="data.tokenizer.*gpt2"):
        gt.GPT2Tokenizer.load()
    with pytest.raises(TokenizerUnavailable, match=r"data.tokenizer_file=.*missing.*vocab.bpe"):
        gt.GPT2Tokenizer.load(str(tmp_path))


def test_glubench_data_prepare_prints_counts(shared_data, tmp_path, capsys):
    import glubench.cli.data as data_cli

    path = shared_data / "tinyshakespeare" / "input.txt"
    args = ["prepare", "data=tinyshakespeare", f"data.files={path}", f"data.cache_dir={tmp_path}"]
    assert data_cli.main(args) == 0
    out = capsys.readouterr().out
    assert "train tokens=1,0" in out and "bytes/token=1.000" in out and str(tmp_path) in out
    assert data_cli.main(["prepare", "data=text", "data.files=/nonexistent/x.txt",
                          f"data.cache_dir={tmp_path}"]) == 2  # a bad data.files is a config error (issue 7)
    assert "data.files='/nonexistent/x.txt': no such file" in capsys.readouterr().err
    assert data_cli.main(["prepare", "data.tokenizer=words"]) == 2


@pytest.mark.parametrize("overrides,match", [
    (["data=fineweb_edu", "data.max_tokens=null"], r"data.max_tokens=None must be a positive token budget"),
    (["data.name=nope"], r"data.name='nope' is not a known corpus; valid: pydocs, text"),
    (["data=text", "data.files=a.txt", "data.format=csv"], r"data.format='csv' is not known"),
    (["data.tokenizer=words"], r"data.tokenizer='words' is not known; valid: bytes, bpe, gpt2"),
    (["data=text"], r"^data.files is required for data=text \(a path, a glob or a list\)$"),
    (["data.val_files=v.txt"], r"^data.val_files needs data.files \(the training files\)$"),
    (["data.name=wikitext2"], r"^data.name='wikitext2' has no source: set data.files, data.local_dir or data.hub_id"),
])
def test_bad_data_keys_are_one_clear_line(overrides, match, compose_cfg):
    from glubench.train.config_rules import ConfigError, validate_config

    with pytest.raises(ConfigError, match=match):
        validate_config(compose_cfg(overrides))


def test_gpt2_vocab_reaches_the_model_config(compose_cfg):
    from glubench.train.config_rules import validate_config

    assert validate_config(compose_cfg(["data.tokenizer=gpt2"])).vocab_size == 50257
