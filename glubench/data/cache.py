"""The token cache: a corpus tokenized once into flat uint16/uint32 arrays on disk, memory-mapped.

Path of the data: :mod:`glubench.data.sources` (documents, split by a stable hash) ->
:mod:`glubench.data.tokenizers` -> :func:`prepare_tokens` (this module) ->
:mod:`glubench.data.windows` (random training windows, every validation token scored once) ->
:class:`glubench.data.datamodule.LMDataModule`.

Every command that needs the tokens calls :func:`prepare_splits` with the ``data.*`` config
section: local rank 0 prepares the cache, the other ranks wait for it, and all memory-map it.
No torch, no lightning here.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from glubench.core.io import atomic_write_json, sha256_text
from glubench.core.paths import default_cache_dir
from glubench.core.ranks import local_rank
from glubench.data.sources import Corpus, DataSpec, in_val_split, load_corpus_spec
from glubench.data.tokenizers import build_tokenizer, token_dtype

log = logging.getLogger(__name__)

CACHE_VERSION = 3  # 3: token_bytes.npy beside the tokens (bits per byte of any subset of windows)


@dataclass
class TokenSplits:
    """Memory-mapped token arrays plus what bits-per-byte needs.

    ``val_predicted_bytes`` is the UTF-8 byte count of every validation token except the
    first (the first token is context, never predicted).
    """

    train: np.ndarray
    val: np.ndarray
    vocab_size: int
    val_predicted_bytes: int
    meta: dict
    token_bytes: np.ndarray | None = None  # (vocab_size,) int64 UTF-8 bytes of each token id


def cache_key(corpus: Corpus, tokenizer, val_percent: float) -> str:
    """Everything that changes the tokens: corpus fingerprint (content, revision, row rules,
    token budget), split rule, tokenizer kind, vocab size and the tokenizer file's hash."""
    return sha256_text(
        str(CACHE_VERSION), corpus.fingerprint, f"split={corpus.info.get('split')}", f"val_percent={val_percent}",
        f"separator={corpus.separator!r}", tokenizer.kind, str(tokenizer.vocab_size), tokenizer.file_hash,
    )[:24]


class _Encode:
    """The ``datasets.map`` function on Arrow batches (picklable): rows -> token ids and UTF-8 bytes.

    Works on whole Arrow columns (one flat id array plus offsets per batch) because building
    one Python list per row costs more than byte-tokenizing it.
    """

    def __init__(self, tokenizer, separator: str) -> None:
        self.tokenizer, self.separator = tokenizer, separator

    def __call__(self, batch):
        import pyarrow as pa

        sep = self.separator
        texts = [t + sep for t in batch.column("text").to_pylist()] if sep else batch.column("text").to_pylist()
        values, lengths = self.tokenizer.encode_flat(texts)
        offsets = np.zeros(len(lengths) + 1, dtype=np.int32)
        np.cumsum(lengths, out=offsets[1:])
        n_bytes = np.fromiter((len(t.encode("utf-8")) for t in texts), dtype=np.int64, count=len(texts))
        return pa.table({"ids": pa.ListArray.from_arrays(pa.array(offsets), pa.array(values)),
                         "n_bytes": pa.array(n_bytes)})


def auto_num_proc(n_rows: int, num_proc: int | None) -> int:
    """``data.num_proc`` if set, else one process per core (≤ 8) for large splits, else 1."""
    if num_proc:
        return max(1, int(num_proc))
    return 1 if n_rows < 50_000 else max(1, min(8, os.cpu_count() or 1))


def _tokenize_rows(rows, tokenizer, separator: str, out_path: Path, tmp: Path, num_proc: int | None,
                   split: str) -> dict:
    """Tokenize ``rows`` (strings or a ``text`` Dataset) with ``datasets.map`` into ``out_path``."""
    import datasets
    import pyarrow.compute as pc

    if not isinstance(rows, datasets.Dataset):
        rows = datasets.Dataset.from_dict({"text": list(rows)})
    dtype = token_dtype(tokenizer.vocab_size)
    stats = {"tokens": 0, "bytes": 0, "documents": len(rows), "dtype": dtype.name}
    with open(out_path, "wb") as f:
        if len(rows):
            features = datasets.Features({"ids": datasets.Sequence(datasets.Value(dtype.name)),
                                          "n_bytes": datasets.Value("int64")})
            nproc = auto_num_proc(len(rows), num_proc)
            out = rows.with_format("arrow").map(
                _Encode(tokenizer, separator), batched=True, batch_size=1000, remove_columns=rows.column_names,
                features=features, num_proc=nproc if nproc > 1 else None, load_from_cache_file=False,
                cache_file_name=str(tmp / f"{split}-map.arrow"), new_fingerprint=f"{tmp.name}-{split}",
                desc=f"tokenizing {split}",
            )
            for chunk in out.data.column("ids").chunks:
                flat = np.asarray(chunk.flatten().to_numpy(zero_copy_only=False), dtype=dtype)
                flat.tofile(f)
                stats["tokens"] += int(flat.size)
            stats["bytes"] = int(pc.sum(out.data.column("n_bytes")).as_py() or 0)
            del out
    return stats


def _tokenize_stream(corpus: Corpus, tokenizer, tmp: Path, val_percent: float, batch_docs: int = 1000) -> dict:
    """Tokenize a streamed corpus up to ``corpus.max_tokens`` (train + val), split by hash."""
    dtype = token_dtype(tokenizer.vocab_size)
    stats = {s: {"tokens": 0, "bytes": 0, "documents": 0, "dtype": dtype.name} for s in ("train", "val")}
    pending: dict[str, list[str]] = {"train": [], "val": []}
    with open(tmp / "train.bin", "wb") as ftrain, open(tmp / "val.bin", "wb") as fval:
        files = {"train": ftrain, "val": fval}

        def flush(split: str) -> None:
            texts = pending[split]
            if not texts:
                return
            values, _ = tokenizer.encode_flat(texts)
            np.asarray(values, dtype=dtype).tofile(files[split])
            stats[split]["tokens"] += int(values.size)
            stats[split]["bytes"] += sum(len(t.encode("utf-8")) for t in texts)
            stats[split]["documents"] += len(texts)
            pending[split] = []

        budget = corpus.max_tokens
        for doc_id, text in corpus.stream():
            split = "val" if in_val_split(doc_id, val_percent) else "train"
            pending[split].append(text + corpus.separator)
            if len(pending[split]) >= batch_docs:
                flush(split)
                if budget and stats["train"]["tokens"] + stats["val"]["tokens"] >= budget:
                    break
        flush("train")
        flush("val")
    return stats


def prepare_tokens(corpus: Corpus, tokenizer, cache_dir: Path, val_percent: float,
                   num_proc: int | None = None) -> Path:
    """Tokenize ``corpus`` once into ``<cache_dir>/tokens/<key>/`` and return that folder.

    The folder holds ``train.bin`` and ``val.bin`` (flat uint16/uint32 token ids) and the
    sidecar ``meta.json`` (source, fingerprint, revision, tokenizer and vocab, and per split
    the token, document and UTF-8 byte counts).  It is built under a temporary name and
    renamed into place, so a preparation killed midway never leaves a folder that a later
    run trusts.  Tokenization runs through ``datasets.map(batched=True, num_proc=...)``.
    """
    final = Path(cache_dir) / "tokens" / cache_key(corpus, tokenizer, val_percent)
    if (final / "meta.json").exists():
        return final
    log.info("tokenizing %s (tokenizer=%s, vocab %d) into %s", corpus.source, tokenizer.kind,
             tokenizer.vocab_size, final)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=final.parent, prefix=f".{final.name}."))
    try:
        meta = {
            "cache_version": CACHE_VERSION,
            "corpus": corpus.name,
            "source": corpus.source,
            "fingerprint": corpus.fingerprint,
            "revision": corpus.info.get("revision"),
            "corpus_info": corpus.info,
            "val_percent": val_percent,
            "separator": corpus.separator,
            "tokenizer": tokenizer.kind,
            "vocab_size": tokenizer.vocab_size,
            "tokenizer_file_hash": tokenizer.file_hash,
        }
        if corpus.stream is not None:
            stats = _tokenize_stream(corpus, tokenizer, tmp, val_percent)
        else:
            corpus.load()
            stats = {split: _tokenize_rows(rows, tokenizer, corpus.separator, tmp / f"{split}.bin", tmp,
                                           num_proc, split)
                     for split, rows in (("train", corpus.train), ("val", corpus.val))}
        for split in ("train", "val"):
            meta[split] = stats[split]
        val = np.fromfile(tmp / "val.bin", dtype=stats["val"]["dtype"])
        tb = tokenizer.token_bytes()
        np.save(tmp / "token_bytes.npy", tb.astype(np.int64))
        meta["val"]["predicted_bytes"] = int(tb[val[1:].astype(np.int64)].sum()) if val.size > 1 else 0
        for split in ("train", "val"):
            s = meta[split]
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


def load_tokens(folder: Path, token_bytes: np.ndarray | None = None) -> TokenSplits:
    """Memory-map a folder written by :func:`prepare_tokens`.

    ``val_predicted_bytes`` comes from the sidecar, or is recomputed from ``token_bytes``
    (``(vocab_size,)`` bytes per token id) when given.

    Raises:
        ValueError: a ``.bin`` file whose size disagrees with the sidecar (a damaged cache).
    """
    folder = Path(folder)
    meta = json.loads((folder / "meta.json").read_text())
    arrays = {}
    for split in ("train", "val"):
        dtype, n = np.dtype(meta[split]["dtype"]), meta[split]["tokens"]
        path = folder / f"{split}.bin"
        if path.stat().st_size != n * dtype.itemsize:
            raise ValueError(f"token cache {path} holds {path.stat().st_size} bytes, the sidecar says "
                             f"{n} x {dtype.itemsize}; delete {folder} to rebuild it")
        arrays[split] = (np.memmap(path, dtype=dtype, mode="r", shape=(n,)) if n
                         else np.zeros(0, dtype=dtype))
    val = arrays["val"]
    if token_bytes is not None:
        predicted = int(token_bytes[np.asarray(val[1:], dtype=np.int64)].sum()) if val.size > 1 else 0
    else:
        predicted = int(meta["val"]["predicted_bytes"])
    tb_path = folder / "token_bytes.npy"
    stored = np.load(tb_path) if tb_path.exists() else token_bytes
    return TokenSplits(arrays["train"], val, meta["vocab_size"], predicted, meta, stored)


# ---------------------------------------------------------------------------- preparation (rank 0)


SPEC_KEYS = tuple(f for f in DataSpec.__dataclass_fields__)


def request_key(spec: DataSpec, tokenizer: str, vocab_size: int, tokenizer_file: str | None,
                tokenizer_spec: DataSpec | None = None) -> str:
    """Hash of the data *settings* (not the content) plus the working directory (relative paths)."""
    from dataclasses import asdict

    parts = [json.dumps(asdict(spec), sort_keys=True, default=str), tokenizer, str(vocab_size), str(tokenizer_file),
             os.getcwd()]
    if tokenizer_spec not in (None, spec):
        parts.append(json.dumps(asdict(tokenizer_spec), sort_keys=True, default=str))
    return sha256_text(*parts)[:24]


def _file_stats(corpus: Corpus) -> list:
    paths = corpus.info.get("files", []) + corpus.info.get("val_files", [])
    return [[p, os.stat(p).st_size, os.stat(p).st_mtime_ns] for p in paths]


def prepare_dataset(spec: DataSpec, tokenizer: str, vocab_size: int, cache_dir: Path,
                    tokenizer_file: str | None = None, num_proc: int | None = None,
                    tokenizer_spec: DataSpec | None = None) -> Path:
    """Load the corpus, build the tokenizer and the token cache; return the token folder.

    ``tokenizer_spec`` names the corpus whose train split trains a ``bpe`` tokenizer (default:
    ``spec`` itself); ``glubench-eval`` passes the checkpoint's training corpus so that another
    corpus is read with the vocabulary the model learned.

    Serialized across processes by a file lock per data setting, and recorded in a manifest
    (``<cache_dir>/prepared/<key>.json``) that :func:`wait_for_prepared` reads on the ranks
    that do not prepare.
    """
    from filelock import FileLock

    cache_dir = Path(cache_dir)
    key = request_key(spec, tokenizer, vocab_size, tokenizer_file, tokenizer_spec)
    (cache_dir / "locks").mkdir(parents=True, exist_ok=True)
    with FileLock(str(cache_dir / "locks" / f"{key}.lock")):
        corpus = load_corpus_spec(spec, cache_dir)
        tok_corpus = corpus if tokenizer_spec in (None, spec) else load_corpus_spec(tokenizer_spec, cache_dir)
        tok = build_tokenizer(tokenizer, tok_corpus, vocab_size, cache_dir, tokenizer_file)
        folder = prepare_tokens(corpus, tok, cache_dir, spec.val_percent, num_proc)
        atomic_write_json(cache_dir / "prepared" / f"{key}.json",
                          {"folder": str(folder), "files": _file_stats(corpus)})
    return folder


def wait_for_prepared(spec: DataSpec, tokenizer: str, vocab_size: int, cache_dir: Path,
                      tokenizer_file: str | None = None, timeout_s: float = 6 * 3600,
                      poll_s: float = 2.0) -> Path:
    """On a rank that does not prepare: wait for :func:`prepare_dataset`'s manifest, return the folder.

    A manifest whose local files changed size or mtime since it was written is ignored
    (the preparing rank will replace it).

    Raises:
        TimeoutError: nothing prepared within ``timeout_s``.
    """
    import time

    path = Path(cache_dir) / "prepared" / f"{request_key(spec, tokenizer, vocab_size, tokenizer_file)}.json"
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            m = json.loads(path.read_text())
            fresh = all(os.stat(p).st_size == size and os.stat(p).st_mtime_ns == mtime for p, size, mtime in m["files"])
            if fresh and (Path(m["folder"]) / "meta.json").exists():
                return Path(m["folder"])
        except (OSError, ValueError, KeyError):
            pass
        if time.monotonic() > deadline:
            raise TimeoutError(f"no prepared token cache appeared in {cache_dir} within {timeout_s:.0f} s "
                               "(run `glubench-data prepare` first, or check the preparing rank's log)")
        time.sleep(poll_s)


# ---------------------------------------------------------------------------- from the data.* config


def _plain(data: Mapping[str, Any] | Any) -> dict:
    """``data`` as a plain dict of resolved values (a DictConfig's lists become lists, so that
    :func:`request_key` hashes the same settings the same way whatever the caller passed)."""
    if isinstance(data, dict):
        return data
    from omegaconf import DictConfig, OmegaConf

    if isinstance(data, DictConfig):
        return OmegaConf.to_container(data, resolve=True)
    return dict(data)


def data_spec(data: Mapping[str, Any]) -> DataSpec:
    """The :class:`DataSpec` of a ``data.*`` section; keys that do not shape the corpus (batch
    sizes, workers, keys added by other features) are ignored."""
    return DataSpec(**{k: v for k, v in _plain(data).items() if k in SPEC_KEYS})


def token_folder(data: Mapping[str, Any], *, prepare: bool | None = None) -> Path:
    """The token-cache folder of the ``data.*`` section ``data``, prepared here or by another rank.

    Args:
        data: the ``data.*`` config section (dict or DictConfig; :class:`glubench.train.schema.DataConfig`).
        prepare: ``True``: load, tokenize and write the cache here (:func:`prepare_dataset`);
            ``False``: wait for the process that does (:func:`wait_for_prepared`); ``None``:
            prepare on local rank 0 (``LOCAL_RANK`` / ``SLURM_LOCALID``), wait on the others.

    Raises:
        ConfigError: bad data files; ValueError, CorpusUnavailable, TokenizerUnavailable: see
            :func:`glubench.data.sources.load_corpus_spec` and :func:`glubench.data.tokenizers.build_tokenizer`;
            TimeoutError: a waiting rank saw nothing prepared in time.
    """
    data = _plain(data)
    spec = data_spec(data)
    tokenizer, vocab_size = data.get("tokenizer", "bytes"), data.get("vocab_size", 4096)
    tokenizer_file = data.get("tokenizer_file")
    cache_dir = Path(os.path.expanduser(data["cache_dir"])) if data.get("cache_dir") else default_cache_dir()
    if prepare is None:
        prepare = local_rank() == 0
    if prepare:
        return prepare_dataset(spec, tokenizer, vocab_size, cache_dir, tokenizer_file, data.get("num_proc"))
    return wait_for_prepared(spec, tokenizer, vocab_size, cache_dir, tokenizer_file)


def open_splits(folder: Path, *, seq_len: int | None = None, name: str = "pydocs") -> TokenSplits:
    """Memory-map the token cache in ``folder`` and check it can serve ``seq_len``-token windows.

    Args:
        folder: a folder from :func:`token_folder`.
        seq_len: ``model.seq_len``; ``None`` skips the checks (only preparing, no training).
        name: ``data.name``, for the messages.

    Raises:
        ValueError: fewer than 2 validation tokens, or fewer than ``seq_len + 1`` training tokens.
    """
    splits = load_tokens(folder)
    if seq_len is None:
        return splits
    if splits.val.size < 2:
        raise ValueError(f"data.name={name!r}: the validation split has {splits.val.size} tokens; "
                         "raise data.val_percent or give data.val_files")
    if splits.train.size < seq_len + 1:
        raise ValueError(f"data.name={name!r}: the train split has {splits.train.size} tokens, "
                         f"fewer than one window (model.seq_len={seq_len} + 1); use more text or a "
                         "smaller model.seq_len")
    return splits


def prepare_splits(data: Mapping[str, Any], *, seq_len: int | None = None,
                   prepare: bool | None = None) -> tuple[Path, TokenSplits]:
    """The one way to get the tokens of a ``data.*`` config section: prepare (local rank 0) or
    wait for (other ranks) the token cache, then memory-map and check it.

    Args:
        data: the ``data.*`` section (``cfg.data`` as a DictConfig, or a plain dict).
        seq_len: ``model.seq_len`` to check the splits against; ``None``: no checks.
        prepare: see :func:`token_folder` (default: local rank 0 prepares).

    Returns:
        ``(folder, splits)``: the cache folder and its memory-mapped :class:`TokenSplits`.
    Raises:
        see :func:`token_folder` and :func:`open_splits`.
    """
    data = _plain(data)
    folder = token_folder(data, prepare=prepare)
    return folder, open_splits(folder, seq_len=seq_len, name=data.get("name", "pydocs"))


def prepare_eval_split(data: Mapping[str, Any], split: str, tokenizer_data: Mapping[str, Any] | None = None
                       ) -> tuple[np.ndarray, np.ndarray, dict]:
    """The ``split`` (``val`` or ``train``) tokens of ``data``'s corpus, read with ``tokenizer_data``'s tokenizer.

    ``tokenizer_data`` is the ``data.*`` section a model was trained on (a checkpoint's): its
    tokenizer kind, vocabulary and, for ``bpe``, its training corpus decide the token ids.

    Returns:
        ``(tokens, token_bytes, meta)``: the memory-mapped ``(n,)`` token ids, the ``(vocab_size,)``
        UTF-8 bytes of each token id (for bits per byte) and the cache sidecar.
    Raises:
        as :func:`token_folder`.
    """
    data, tokenizer_data = _plain(data), _plain(tokenizer_data if tokenizer_data is not None else data)
    cache_dir = Path(os.path.expanduser(data["cache_dir"])) if data.get("cache_dir") else default_cache_dir()
    kind, vocab, tok_file = (tokenizer_data.get(k) for k in ("tokenizer", "vocab_size", "tokenizer_file"))
    folder = prepare_dataset(data_spec(data), kind, vocab, cache_dir, tok_file, data.get("num_proc"),
                             tokenizer_spec=data_spec(tokenizer_data))
    splits = load_tokens(folder)
    return (splits.val if split == "val" else splits.train), splits.token_bytes, splits.meta
