"""The token cache: a corpus tokenized once into flat uint16/uint32 arrays on disk, memory-mapped.

Path of the data: :mod:`glubench.data.sources` and :mod:`glubench.data.corpus` (documents, split by a stable hash) ->
:mod:`glubench.data.tokenizers` -> :func:`prepare_tokens` (this module) ->
:mod:`glubench.data.windows` (random training windows, every validation token scored once) ->
:class:`glubench.data.datamodule.LMDataModule`.

Every command that needs the tokens calls :func:`prepare_splits` with the ``data.*`` config
section: every process (each rank, each sweep job) builds the cache under a file lock or finds
it there, then memory-maps it (:func:`load_tokens`).  No torch, no lightning here.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import sys
import tempfile
from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import numpy as np
from filelock import FileLock, Timeout

from glubench.core.io import atomic_write_json, sha256_text
from glubench.core.paths import default_cache_dir
from glubench.data.config import plain_dict
from glubench.data.corpus import Corpus, DataSpec, split_of
from glubench.data.sources import load_corpus_spec
from glubench.data.tokenizers import ByteTokenizer, build_tokenizer, token_dtype

log = logging.getLogger(__name__)

CACHE_VERSION = 3  # 3: token_bytes.npy beside the tokens (bits per byte of any subset of windows)


@dataclass
class TokenSplits:
    """Memory-mapped token arrays plus what bits-per-byte needs (``test`` is ``None`` without a test split)."""

    train: np.ndarray
    val: np.ndarray
    vocab_size: int
    meta: dict
    token_bytes: np.ndarray  # (vocab_size,) int64 UTF-8 bytes of each token id
    test: np.ndarray | None = None


def split_names(corpus: Corpus) -> tuple[str, ...]:
    """The splits a corpus's token cache holds: train and val, and test when the corpus has one."""
    return ("train", "val", "test") if corpus.has_test else ("train", "val")


def cache_key(corpus: Corpus, tokenizer, val_percent: float) -> str:
    """Everything that changes the tokens: corpus fingerprint (content, revision, row rules,
    token budget), split rule (with the test split's, when there is one), tokenizer kind, vocab size
    and the tokenizer file's hash."""
    test = [f"test={corpus.info.get('test_percent') or corpus.info.get('test_source')}"] if corpus.has_test else []
    return sha256_text(
        str(CACHE_VERSION), corpus.fingerprint, f"split={corpus.info.get('split')}", f"val_percent={val_percent}",
        *test, f"separator={corpus.separator!r}", tokenizer.kind, str(tokenizer.vocab_size), tokenizer.file_hash,
    )[:24]


def _encode(batch, tokenizer, separator: str):
    """The ``datasets.map`` function on Arrow batches: rows -> token ids and UTF-8 bytes.

    Returns whole Arrow columns (one flat id array plus offsets per batch) because building
    one Python list per row costs more than byte-tokenizing it.
    """
    import pyarrow as pa  # heavy (datasets ~1 s): only when a corpus is tokenized

    texts = [t + separator for t in batch.column("text").to_pylist()]
    values, lengths = tokenizer.encode_flat(texts)
    offsets = np.zeros(len(lengths) + 1, dtype=np.int32)
    np.cumsum(lengths, out=offsets[1:])
    n_bytes = np.fromiter((len(t.encode("utf-8")) for t in texts), dtype=np.int64, count=len(texts))
    return pa.table({"ids": pa.ListArray.from_arrays(pa.array(offsets), pa.array(values)),
                     "n_bytes": pa.array(n_bytes)})


def _tokenize_rows(rows, tokenizer, separator: str, tmp: Path, split: str, num_proc: int | None) -> dict:
    """Tokenize ``rows`` (strings or a ``text`` Dataset) with ``datasets.map`` into ``tmp/<split>.bin``."""
    import datasets  # heavy (datasets ~1 s): only when a corpus is tokenized
    import pyarrow.compute as pc

    if not isinstance(rows, datasets.Dataset):
        rows = datasets.Dataset.from_dict({"text": list(rows)})
    if not sys.stderr.isatty():  # its bars' redraws would pile up as lines in a log file
        datasets.disable_progress_bars()
    dtype = token_dtype(tokenizer.vocab_size)
    stats = {"tokens": 0, "bytes": 0, "documents": len(rows), "dtype": dtype.name}
    with open(tmp / f"{split}.bin", "wb") as f:
        if not len(rows):
            return stats
        # data.num_proc, else one process per core (<= 8) for large splits
        nproc = int(num_proc) if num_proc else 1 if len(rows) < 50_000 else min(8, os.cpu_count() or 1)
        out = rows.with_format("arrow").map(
            _encode, fn_kwargs=dict(tokenizer=tokenizer, separator=separator), batched=True, batch_size=1000,
            remove_columns=rows.column_names, num_proc=nproc if nproc > 1 else None, load_from_cache_file=False,
            features=datasets.Features({"ids": datasets.Sequence(datasets.Value(dtype.name)),
                                        "n_bytes": datasets.Value("int64")}),
            cache_file_name=str(tmp / f"{split}-map.arrow"), new_fingerprint=f"{tmp.name}-{split}",
            desc=f"tokenizing {split}")
        for chunk in out.data.column("ids").chunks:
            flat = np.asarray(chunk.flatten().to_numpy(zero_copy_only=False), dtype=dtype)
            flat.tofile(f)
            stats["tokens"] += int(flat.size)
        stats["bytes"] = int(pc.sum(out.data.column("n_bytes")).as_py() or 0)
    return stats


def _tokenize_stream(corpus: Corpus, tokenizer, tmp: Path, val_percent: float, batch_docs: int = 1000) -> dict:
    """Tokenize a streamed corpus up to ``corpus.max_tokens`` (all splits together), split by hash."""
    dtype = token_dtype(tokenizer.vocab_size)
    names = split_names(corpus)
    test_percent = corpus.info.get("test_percent", 0.0)
    stats = {s: {"tokens": 0, "bytes": 0, "documents": 0, "dtype": dtype.name} for s in names}
    pending: dict[str, list[str]] = {s: [] for s in names}

    def flush(split: str) -> None:
        texts, pending[split] = pending[split], []
        values, _ = tokenizer.encode_flat(texts)
        with open(tmp / f"{split}.bin", "ab") as f:
            np.asarray(values, dtype=dtype).tofile(f)
        stats[split]["tokens"] += int(values.size)
        stats[split]["bytes"] += sum(len(t.encode("utf-8")) for t in texts)
        stats[split]["documents"] += len(texts)

    for doc_id, text in corpus.stream():
        split = split_of(doc_id, val_percent, test_percent)
        pending[split].append(text + corpus.separator)
        if len(pending[split]) >= batch_docs:
            flush(split)
            if corpus.max_tokens and sum(s["tokens"] for s in stats.values()) >= corpus.max_tokens:
                break
    for split in names:
        flush(split)
    return stats


def prepare_tokens(corpus: Corpus, tokenizer, cache_dir: Path, val_percent: float,
                   num_proc: int | None = None) -> Path:
    """Tokenize ``corpus`` once into ``<cache_dir>/tokens/<key>/`` and return that folder.

    The folder holds ``train.bin``, ``val.bin`` and, for a corpus with a test split, ``test.bin``
    (flat uint16/uint32 token ids) and the
    sidecar ``meta.json`` (source, fingerprint, revision, tokenizer and vocab, and per split
    the token, document and UTF-8 byte counts).  It is built under a temporary name and
    renamed into place, so a preparation killed midway never leaves a folder that a later
    run trusts.  Tokenization runs through ``datasets.map(batched=True, num_proc=...)``.
    """
    final = Path(cache_dir) / "tokens" / cache_key(corpus, tokenizer, val_percent)
    if (final / "meta.json").exists():
        log.debug("glubench: token cache hit: %s (tokenizer=%s, vocab %d) in %s", corpus.source, tokenizer.kind,
                  tokenizer.vocab_size, final)
        return final
    log.info("glubench: token cache miss: tokenizing %s (tokenizer=%s, vocab %d) into %s", corpus.source,
             tokenizer.kind, tokenizer.vocab_size, final)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=final.parent, prefix=f".{final.name}."))
    try:
        meta = dict(cache_version=CACHE_VERSION, corpus=corpus.name, source=corpus.source,
                    fingerprint=corpus.fingerprint, revision=corpus.info.get("revision"), corpus_info=corpus.info,
                    val_percent=val_percent, separator=corpus.separator, tokenizer=tokenizer.kind,
                    vocab_size=tokenizer.vocab_size, tokenizer_file_hash=tokenizer.file_hash)
        if corpus.stream is not None:
            stats = _tokenize_stream(corpus, tokenizer, tmp, val_percent)
        else:
            corpus.load()
            stats = {split: _tokenize_rows(getattr(corpus, split), tokenizer, corpus.separator, tmp, split, num_proc)
                     for split in split_names(corpus)}
        meta.update(stats)
        tb = tokenizer.token_bytes()
        np.save(tmp / "token_bytes.npy", tb.astype(np.int64))
        for split in split_names(corpus)[1:]:  # the scored splits: bytes of every token but the first
            ids = np.fromfile(tmp / f"{split}.bin", dtype=stats[split]["dtype"])
            meta[split]["predicted_bytes"] = int(tb[ids[1:].astype(np.int64)].sum()) if ids.size > 1 else 0
        for s in stats.values():
            s["bytes_per_token"] = s["bytes"] / s["tokens"] if s["tokens"] else None
        for p in tmp.glob("*.arrow"):  # datasets.map's intermediate files
            p.unlink()
        atomic_write_json(tmp / "meta.json", meta)
        try:
            os.rename(tmp, final)
        except OSError:  # another process won the race; its folder is complete
            shutil.rmtree(tmp, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return final


def load_tokens(folder: Path, *, seq_len: int | None = None, name: str = "pydocs") -> TokenSplits:
    """Memory-map a folder written by :func:`prepare_tokens`; check it can serve ``seq_len``-token windows.

    Args:
        folder: the token-cache folder (from :func:`prepare_splits` or :func:`prepare_tokens`).
        seq_len: ``model.seq_len``; ``None`` skips the window checks (only preparing, no training).
        name: ``data.name``, for the messages.

    Raises:
        ValueError: a ``.bin`` file whose size disagrees with the sidecar (a damaged cache); with
            ``seq_len``: fewer than 2 validation (or test) tokens, or fewer than ``seq_len + 1`` training tokens.
    """
    folder = Path(folder)
    meta = json.loads((folder / "meta.json").read_text())
    arrays = {}
    for split in ("train", "val", "test") if "test" in meta else ("train", "val"):
        dtype, n = np.dtype(meta[split]["dtype"]), meta[split]["tokens"]
        path = folder / f"{split}.bin"
        if path.stat().st_size != n * dtype.itemsize:
            raise ValueError(f"token cache {path} holds {path.stat().st_size} bytes, the sidecar says "
                             f"{n} x {dtype.itemsize}; delete {folder} to rebuild it")
        arrays[split] = np.memmap(path, dtype=dtype, mode="r", shape=(n,)) if n else np.zeros(0, dtype=dtype)
    train, val, test = arrays["train"], arrays["val"], arrays.get("test")
    if seq_len is not None and val.size < 2:
        raise ValueError(f"data.name={name!r}: the validation split has {val.size} tokens; "
                         "raise data.val_percent or give data.val_files")
    if seq_len is not None and test is not None and test.size < 2:
        raise ValueError(f"data.name={name!r}: the test split has {test.size} tokens; "
                         "raise data.test_percent or give data.test_files")
    if seq_len is not None and train.size < seq_len + 1:
        raise ValueError(f"data.name={name!r}: the train split has {train.size} tokens, "
                         f"fewer than one window (model.seq_len={seq_len} + 1); use more text or a "
                         "smaller model.seq_len")
    return TokenSplits(train, val, meta["vocab_size"], meta, np.load(folder / "token_bytes.npy"), test)


# ---------------------------------------------------------------------------- preparation (file lock)


def request_key(spec: DataSpec, tokenizer: str, vocab_size: int, tokenizer_file: str | None,
                tokenizer_spec: DataSpec | None = None) -> str:
    """Hash of the data *settings* (not the content) plus the working directory (relative paths)."""
    parts = [json.dumps(asdict(spec), sort_keys=True, default=str), tokenizer, str(vocab_size), str(tokenizer_file),
             os.getcwd()]
    if tokenizer_spec not in (None, spec):
        parts.append(json.dumps(asdict(tokenizer_spec), sort_keys=True, default=str))
    return sha256_text(*parts)[:24]


def prepare_dataset(spec: DataSpec, tokenizer: str, vocab_size: int, cache_dir: Path,
                    tokenizer_file: str | None = None, num_proc: int | None = None,
                    tokenizer_spec: DataSpec | None = None, timeout_s: float = 6 * 3600) -> Path:
    """Load the corpus, build the tokenizer and the token cache if absent; return the token folder.

    Every process (every rank, every sweep) goes through here, one at a time per data setting (a
    cross-process file lock): the first builds the cache, the others find it.  Freshness has one
    rule, the content: the folder is named by the corpus fingerprint (sha256 of every input
    file, hashed once per process), so a file edited in place, whatever its size and mtime, names
    a new folder in every process that reads it, and no process can pick up a stale one.
    ``tokenizer_spec`` names the corpus whose train split trains a ``bpe`` tokenizer (default:
    ``spec`` itself).

    Raises:
        TimeoutError: another process held the lock for ``timeout_s`` (a preparation that hung).
    """
    cache_dir = Path(cache_dir)
    key = request_key(spec, tokenizer, vocab_size, tokenizer_file, tokenizer_spec)
    (cache_dir / "locks").mkdir(parents=True, exist_ok=True)
    try:
        with FileLock(str(cache_dir / "locks" / f"{key}.lock"), timeout=timeout_s):
            corpus = load_corpus_spec(spec, cache_dir)
            tok_corpus = corpus if tokenizer_spec in (None, spec) else load_corpus_spec(tokenizer_spec, cache_dir)
            tok = build_tokenizer(tokenizer, tok_corpus, vocab_size, cache_dir, tokenizer_file)
            return prepare_tokens(corpus, tok, cache_dir, spec.val_percent, num_proc)
    except Timeout:
        raise TimeoutError(f"the token cache in {cache_dir} stayed locked by another process for {timeout_s:.0f} s "
                           "(check that process's log, or run `glubench-data prepare` first)") from None


# ---------------------------------------------------------------------------- from the data.* config


def data_spec(data: Mapping[str, Any]) -> DataSpec:
    """The :class:`DataSpec` of a ``data.*`` section; keys that do not shape the corpus (batch
    sizes, workers, keys added by other features) are ignored."""
    keys = {f.name for f in fields(DataSpec)}
    return DataSpec(**{k: v for k, v in plain_dict(data).items() if k in keys})


def load_tokenizer(data: Mapping[str, Any]):
    """The tokenizer a ``data.*`` section trains with (a checkpoint's ``datamodule_hyper_parameters``), for
    encoding prompts and decoding samples; a ``bpe`` one is read from the cache (trained again if absent,
    which needs its corpus).

    Raises:
        ConfigError, CorpusUnavailable, TokenizerUnavailable, ValueError: see
            :func:`~glubench.data.sources.load_corpus_spec` and :func:`~glubench.data.tokenizers.build_tokenizer`.
    """
    data = plain_dict(data)
    if data["tokenizer"] == "bytes":  # no corpus needed
        return ByteTokenizer()
    cache_dir = Path(os.path.expanduser(data["cache_dir"])) if data.get("cache_dir") else default_cache_dir()
    corpus = load_corpus_spec(data_spec(data), cache_dir) if data["tokenizer"] == "bpe" else None
    return build_tokenizer(data["tokenizer"], corpus, data["vocab_size"], cache_dir, data.get("tokenizer_file"))


def prepare_splits(data: Mapping[str, Any], *, seq_len: int | None = None,
                   tokenizer_data: Mapping[str, Any] | None = None) -> tuple[Path, TokenSplits]:
    """The one way to get the tokens of a ``data.*`` config section: prepare the token cache or find
    it (:func:`prepare_dataset`, one process at a time), then memory-map and check it (:func:`load_tokens`).

    Args:
        data: the ``data.*`` section (DictConfig or dict; :class:`glubench.data.config.DataConfig`).
        seq_len: ``model.seq_len`` to check the splits against; ``None``: no checks.
        tokenizer_data: the ``data.*`` section whose tokenizer (kind, vocabulary and, for ``bpe``, training
            corpus) reads ``data``'s corpus, default ``data``: ``glubench-eval`` passes the checkpoint's.

    Returns:
        ``(folder, splits)``: the cache folder and its memory-mapped :class:`TokenSplits`.
    Raises:
        ConfigError, ValueError, CorpusUnavailable, TokenizerUnavailable: see :func:`load_tokens`,
            :func:`~glubench.data.sources.load_corpus_spec`, :func:`~glubench.data.tokenizers.build_tokenizer`;
            TimeoutError: see :func:`prepare_dataset`.
    """
    data = plain_dict(data)
    tok = data if tokenizer_data is None else plain_dict(tokenizer_data)
    cache_dir = Path(os.path.expanduser(data["cache_dir"])) if data.get("cache_dir") else default_cache_dir()
    folder = prepare_dataset(data_spec(data), tok["tokenizer"], tok["vocab_size"], cache_dir,
                             tok.get("tokenizer_file"), data.get("num_proc"), tokenizer_spec=data_spec(tok))
    return folder, load_tokens(folder, seq_len=seq_len, name=data["name"])
