"""Corpora, tokenizers, the token cache and the LightningDataModule.

Path of the data: ``load_corpus`` (documents, split by a stable hash) -> ``build_tokenizer``
-> ``prepare_tokens`` (flat uint16/uint32 arrays cached on disk, memory-mapped) ->
``TrainBatches`` (random windows) / ``ValWindows`` (every token scored once) -> ``LMDataModule``.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import numpy as np
import torch

CACHE_VERSION = 2  # 2: datasets.map pipeline, byte counts and predicted bytes in the sidecar
IGNORE_INDEX = -100


# ---------------------------------------------------------------------------- atomic files


def atomic_write(path: Path, write: Callable[[BinaryIO], object]) -> None:
    """Call ``write(f)`` on a temp file beside ``path``, fsync it, then ``os.replace`` it into place.

    A reader sees either the old file or the complete new one, never a partial write; the
    temp file is removed if ``write`` raises.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """:func:`atomic_write` of ``data``."""
    atomic_write(path, lambda f: f.write(data))


def atomic_write_json(path: Path, obj: object) -> None:
    """:func:`atomic_write_bytes` of ``obj`` as indented JSON."""
    atomic_write_bytes(Path(path), (json.dumps(obj, indent=2, sort_keys=False) + "\n").encode())


# ---------------------------------------------------------------------------- corpora

# The loaders live in glubench.corpora; these names stay importable from here.
from glubench.corpora import (  # noqa: E402
    CORPORA,
    DOC_SEPARATOR,
    Corpus,
    CorpusUnavailable,
    DataSpec,
    check_text_file,
    in_val_split,
    load_corpus_spec,
    load_pydocs,
    pydocs_documents,
    resolve_files,
    sha256_text,
    split_documents,
)

__all__ = ["CORPORA", "Corpus", "CorpusUnavailable", "DataSpec", "check_text_file", "in_val_split",
           "pydocs_documents", "resolve_files", "split_documents", "load_pydocs"]


def load_text_files(files: str | Sequence[str], val_percent: float, cache_dir: Path | None = None,
                    val_files=None) -> Corpus:
    """Local UTF-8 text files through the datasets ``text`` builder (see :mod:`glubench.corpora`).

    Raises:
        FileNotFoundError: no file matches; ValueError: a file is empty or not UTF-8 text.
    """
    spec = DataSpec(name="text", files=files, val_files=val_files, val_percent=val_percent)
    cache_dir = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    return load_corpus_spec(spec, cache_dir).load()


def default_cache_dir() -> Path:
    """``$GLUBENCH_CACHE``, else ``~/.cache/glubench``."""
    return Path(os.path.expanduser(os.environ.get("GLUBENCH_CACHE") or "~/.cache/glubench"))


def load_corpus(name: str, cache_dir: Path, val_percent: float, files=None, **spec) -> Corpus:
    """Load the corpus called ``name`` (``data.name``); ``spec`` takes the other ``data.*`` source keys.

    Raises:
        ValueError: nothing to load from (names the keys to set); CorpusUnavailable: an
            unreachable, uncached Hub dataset.
    """
    return load_corpus_spec(DataSpec(name=name, files=files, val_percent=val_percent, **spec), Path(cache_dir))


# ---------------------------------------------------------------------------- tokenizers


class TokenizerUnavailable(RuntimeError):
    """A tokenizer whose files or package are missing here; the message says how to provide them."""


def token_dtype(vocab_size: int) -> np.dtype:
    """uint16 when every id fits (vocab ≤ 65535), else uint32."""
    return np.dtype(np.uint16 if vocab_size <= 65535 else np.uint32)


class _Tokenizer:
    """Shared interface: ``kind``, ``vocab_size``, ``file_hash`` (sha256 of the tokenizer's
    files, "" when it has none), :meth:`encode_batch` and :meth:`token_bytes`."""

    kind = ""
    vocab_size = 0
    file_hash = ""

    def encode_batch(self, texts: Sequence[str]) -> list:
        """Token ids of each text (no special tokens added): a list of int sequences."""
        raise NotImplementedError

    def encode_flat(self, texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        """All texts' ids concatenated ``(n_tokens,)`` and each text's token count ``(n_texts,)``."""
        encs = self.encode_batch(texts)
        lengths = np.fromiter((len(e) for e in encs), dtype=np.int64, count=len(encs))
        dtype = token_dtype(self.vocab_size)
        values = np.fromiter((i for e in encs for i in e), dtype=dtype, count=int(lengths.sum()))
        return values, lengths

    def encode_documents(self, docs: Sequence[str], separator: str = DOC_SEPARATOR) -> np.ndarray:
        """``(n_tokens,)`` ids of the documents, each followed by ``separator``, concatenated."""
        dtype = token_dtype(self.vocab_size)
        encs = self.encode_batch([d + separator for d in docs])
        return np.concatenate([np.asarray(e, dtype=dtype) for e in encs]) if encs else np.zeros(0, dtype)

    def token_bytes(self) -> np.ndarray:
        """``(vocab_size,)`` int64 UTF-8 byte length of each token id."""
        raise NotImplementedError


class ByteTokenizer(_Tokenizer):
    """UTF-8 bytes as tokens: vocab 256, one byte per token."""

    kind = "bytes"
    vocab_size = 256
    file_hash = ""

    def encode_batch(self, texts: Sequence[str]) -> list:
        return [np.frombuffer(t.encode("utf-8"), dtype=np.uint8).astype(np.uint16) for t in texts]

    def encode_flat(self, texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        raw = [t.encode("utf-8") for t in texts]
        lengths = np.fromiter(map(len, raw), dtype=np.int64, count=len(raw))
        return np.frombuffer(b"".join(raw), dtype=np.uint8).astype(np.uint16), lengths

    def encode_documents(self, docs: Sequence[str], separator: str = DOC_SEPARATOR) -> np.ndarray:
        text = "".join(d + separator for d in docs)
        return np.frombuffer(text.encode("utf-8"), dtype=np.uint8).astype(np.uint16)

    def token_bytes(self) -> np.ndarray:
        return np.ones(self.vocab_size, dtype=np.int64)


class BPETokenizer(_Tokenizer):
    """Byte-level BPE trained with the ``tokenizers`` library on the train split.

    Every token is a byte string, so :meth:`token_bytes` is exact and bits-per-byte
    stays comparable with the byte tokenizer.
    """

    kind = "bpe"

    def __init__(self, tokenizer, file_hash: str) -> None:
        self.tok = tokenizer
        self.vocab_size = tokenizer.get_vocab_size()
        self.file_hash = file_hash

    @staticmethod
    def path_for(corpus: Corpus, vocab_size: int, cache_dir: Path) -> Path:
        """Where the BPE trained on ``corpus``'s train split lives (keyed by corpus and split rule)."""
        split = f"{corpus.info.get('split')}:{corpus.info.get('val_percent')}"
        key = sha256_text(corpus.fingerprint, split, str(vocab_size))[:16]
        return Path(cache_dir) / "tokenizers" / f"bpe-{key}-{vocab_size}.json"

    @classmethod
    def train_or_load(cls, corpus: Corpus, vocab_size: int, cache_dir: Path, write: bool = True) -> BPETokenizer:
        """Load the cached BPE for this corpus and vocab, training (and caching) it if absent.

        Raises:
            FileNotFoundError: absent and ``write=False`` (a rank that must not prepare).
        """
        from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

        path = cls.path_for(corpus, vocab_size, cache_dir)
        if not path.exists():
            if not write:
                raise FileNotFoundError(f"BPE tokenizer {path} has not been trained yet")
            tok = Tokenizer(models.BPE())
            tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
            tok.decoder = decoders.ByteLevel()
            trainer = trainers.BpeTrainer(
                vocab_size=vocab_size,
                initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                special_tokens=[],
                show_progress=False,
            )
            tok.train_from_iterator(corpus.iter_train_texts(), trainer=trainer)
            atomic_write_bytes(path, tok.to_str().encode("utf-8"))
        raw = path.read_bytes()
        return cls(Tokenizer.from_str(raw.decode("utf-8")), hashlib.sha256(raw).hexdigest())

    def encode_batch(self, texts: Sequence[str]) -> list:
        return [e.ids for e in self.tok.encode_batch(list(texts), add_special_tokens=False)]

    def token_bytes(self) -> np.ndarray:
        # ByteLevel maps each byte to one printable character, so a token's length in
        # characters is its length in bytes.
        out = np.zeros(self.vocab_size, dtype=np.int64)
        for token, idx in self.tok.get_vocab().items():
            out[idx] = len(token)
        return out


GPT2_URLS = {
    "vocab.bpe": "https://openaipublic.blob.core.windows.net/gpt-2/encodings/main/vocab.bpe",
    "encoder.json": "https://openaipublic.blob.core.windows.net/gpt-2/encodings/main/encoder.json",
}


def _tiktoken_cache_dir() -> Path:
    # tiktoken's own rule (tiktoken/load.py: read_file_cached).
    d = os.environ.get("TIKTOKEN_CACHE_DIR") or os.environ.get("DATA_GYM_CACHE_DIR")
    return Path(d) if d else Path(tempfile.gettempdir()) / "data-gym-cache"


class GPT2Tokenizer(_Tokenizer):
    """GPT-2's byte-level BPE (vocab 50257) through ``tiktoken`` (optional extra ``glubench[gpt2]``).

    The BPE files come from ``data.tokenizer_file`` (a folder holding ``vocab.bpe`` and
    ``encoder.json``), else from tiktoken's cache (``$TIKTOKEN_CACHE_DIR``) or a download.
    Text is encoded with no special tokens; token byte lengths are exact.
    """

    kind = "gpt2"

    def __init__(self, enc, file_hash: str) -> None:
        self.enc = enc
        self.vocab_size = enc.n_vocab
        self.file_hash = file_hash

    @classmethod
    def load(cls, tokenizer_file: str | None = None) -> GPT2Tokenizer:
        """Raises:
            TokenizerUnavailable: tiktoken missing, or the BPE files neither local nor downloadable.
        """
        try:
            import tiktoken
            from tiktoken.load import data_gym_to_mergeable_bpe_ranks
        except ImportError:
            raise TokenizerUnavailable(
                "data.tokenizer='gpt2' needs tiktoken: pip install 'glubench[gpt2]' (or pip install tiktoken)"
            ) from None
        how = ("put vocab.bpe and encoder.json (GPT-2's BPE files) in a folder and set data.tokenizer_file=DIR, "
               "or pre-fill $TIKTOKEN_CACHE_DIR on a machine with network access")
        if tokenizer_file:
            folder = Path(os.path.expanduser(tokenizer_file))
            files = {name: folder / name for name in GPT2_URLS}
            missing = [str(p) for p in files.values() if not p.is_file()]
            if missing:
                raise TokenizerUnavailable(f"data.tokenizer_file={tokenizer_file!r}: missing {', '.join(missing)}; "
                                           f"{how}")
            from tiktoken_ext.openai_public import r50k_pat_str

            ranks = data_gym_to_mergeable_bpe_ranks(vocab_bpe_file=str(files["vocab.bpe"]),
                                                    encoder_json_file=str(files["encoder.json"]))
            enc = tiktoken.Encoding(name="gpt2-local", pat_str=r50k_pat_str, mergeable_ranks=ranks,
                                    special_tokens={"<|endoftext|>": len(ranks)})
            file_hash = sha256_text(*(hashlib.sha256(p.read_bytes()).hexdigest() for p in files.values()))
            return cls(enc, file_hash)
        from glubench.corpora import hf_offline

        cached = all((_tiktoken_cache_dir() / hashlib.sha1(u.encode()).hexdigest()).exists()
                     for u in GPT2_URLS.values())
        if hf_offline() and not cached:
            raise TokenizerUnavailable(f"data.tokenizer='gpt2': GPT-2's BPE files are not in tiktoken's cache "
                                       f"({_tiktoken_cache_dir()}) and offline mode forbids downloading; {how}")
        try:
            enc = tiktoken.get_encoding("gpt2")
        except Exception as e:  # requests/HTTP errors: no network, no cache
            raise TokenizerUnavailable(f"data.tokenizer='gpt2': tiktoken could not load GPT-2's BPE files "
                                       f"({type(e).__name__}: {e}); {how}") from None
        return cls(enc, "tiktoken:gpt2")  # tiktoken checks the official files' sha256 itself

    def encode_batch(self, texts: Sequence[str]) -> list:
        return self.enc.encode_ordinary_batch(list(texts))

    def token_bytes(self) -> np.ndarray:
        out = np.zeros(self.vocab_size, dtype=np.int64)
        for i in range(self.vocab_size):
            try:
                out[i] = len(self.enc.decode_single_token_bytes(i))
            except KeyError:  # a gap in the id space: never produced
                out[i] = 0
        return out


TOKENIZERS = ("bytes", "bpe", "gpt2")


def build_tokenizer(kind: str, corpus: Corpus, vocab_size: int, cache_dir: Path,
                    tokenizer_file: str | None = None, write: bool = True):
    """Return the tokenizer ``kind`` (``data.tokenizer``); a BPE is trained on ``corpus``'s train split.

    Raises:
        ValueError: unknown kind (lists the valid ones); TokenizerUnavailable: see
            :meth:`GPT2Tokenizer.load`; FileNotFoundError: an untrained BPE with ``write=False``.
    """
    if kind == "bytes":
        return ByteTokenizer()
    if kind == "bpe":
        return BPETokenizer.train_or_load(corpus, vocab_size, cache_dir, write=write)
    if kind == "gpt2":
        return GPT2Tokenizer.load(tokenizer_file)
    raise ValueError(f"data.tokenizer={kind!r} is not known; valid: {', '.join(TOKENIZERS)}")


# ---------------------------------------------------------------------------- token cache


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
    return TokenSplits(arrays["train"], val, meta["vocab_size"], predicted, meta)


# ---------------------------------------------------------------------------- preparation (rank 0)


SPEC_KEYS = tuple(f for f in DataSpec.__dataclass_fields__)


def request_key(spec: DataSpec, tokenizer: str, vocab_size: int, tokenizer_file: str | None) -> str:
    """Hash of the data *settings* (not the content) plus the working directory (relative paths)."""
    from dataclasses import asdict

    return sha256_text(json.dumps(asdict(spec), sort_keys=True, default=str), tokenizer, str(vocab_size),
                       str(tokenizer_file), os.getcwd())[:24]


def _file_stats(corpus: Corpus) -> list:
    paths = corpus.info.get("files", []) + corpus.info.get("val_files", [])
    return [[p, os.stat(p).st_size, os.stat(p).st_mtime_ns] for p in paths]


def prepare_dataset(spec: DataSpec, tokenizer: str, vocab_size: int, cache_dir: Path,
                    tokenizer_file: str | None = None, num_proc: int | None = None) -> Path:
    """Load the corpus, build the tokenizer and the token cache; return the token folder.

    Serialized across processes by a file lock per data setting, and recorded in a manifest
    (``<cache_dir>/prepared/<key>.json``) that :func:`wait_for_prepared` reads on the ranks
    that do not prepare.
    """
    from filelock import FileLock

    cache_dir = Path(cache_dir)
    key = request_key(spec, tokenizer, vocab_size, tokenizer_file)
    (cache_dir / "locks").mkdir(parents=True, exist_ok=True)
    with FileLock(str(cache_dir / "locks" / f"{key}.lock")):
        corpus = load_corpus_spec(spec, cache_dir)
        tok = build_tokenizer(tokenizer, corpus, vocab_size, cache_dir, tokenizer_file)
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


def local_rank() -> int:
    """This process's rank on its node (``LOCAL_RANK``, else ``SLURM_LOCALID``, else 0)."""
    for var in ("LOCAL_RANK", "SLURM_LOCALID"):
        if os.environ.get(var, "").isdigit():
            return int(os.environ[var])
    return 0


# ---------------------------------------------------------------------------- datasets


class TrainBatches(torch.utils.data.Dataset):
    """Item ``i`` is training batch ``i``: ``batch_size`` random windows of ``seq_len + 1`` tokens.

    Batch ``i`` of the whole job is ``batch_size × world_size`` windows whose offsets come
    from ``numpy.random.default_rng([seed, 0, i])``; process ``rank`` takes its contiguous
    ``batch_size`` slice.  So batch ``i`` is the same whatever order or process asks for it
    (resume-safe and worker-safe), and N processes with ``batch_size = B/N`` train on exactly
    the windows one process with ``batch_size = B`` does.
    Returns ``(x, y)``: int64 ``(batch_size, seq_len)`` inputs and next-token targets.
    """

    def __init__(self, tokens: np.ndarray, seq_len: int, batch_size: int, num_batches: int,
                 seed: int, rank: int = 0, world_size: int = 1) -> None:
        if tokens.size < seq_len + 1:
            raise ValueError(
                f"model.seq_len={seq_len} needs at least {seq_len + 1} training tokens, "
                f"but the train split has {tokens.size}"
            )
        self.tokens, self.seq_len, self.batch_size = tokens, seq_len, batch_size
        self.num_batches, self.seed, self.rank, self.world_size = num_batches, seed, rank, world_size
        if not 0 <= rank < world_size:
            raise ValueError(f"rank={rank} must be in [0, world_size={world_size})")
        self._arange = np.arange(seq_len + 1)

    def __len__(self) -> int:
        return self.num_batches

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        rng = np.random.default_rng([self.seed, 0, i])
        starts = rng.integers(0, self.tokens.size - self.seq_len, size=self.batch_size * self.world_size)
        starts = starts[self.rank * self.batch_size : (self.rank + 1) * self.batch_size]
        windows = torch.from_numpy(self.tokens[starts[:, None] + self._arange].astype(np.int64))
        return windows[:, :-1], windows[:, 1:]  # (B, T), (B, T)


class ValWindows(torch.utils.data.Dataset):
    """Non-overlapping windows that score every validation token except the first exactly once.

    Window ``i`` predicts tokens ``[i·T + 1, (i+1)·T]``; the last window may be shorter and is
    padded with ``IGNORE_INDEX`` targets.  Item: ``(x, y)`` int64 ``(T,)`` each.
    """

    def __init__(self, tokens: np.ndarray, seq_len: int) -> None:
        if tokens.size < 2:
            raise ValueError(f"the validation split has {tokens.size} tokens; at least 2 are needed")
        self.tokens, self.seq_len = tokens, seq_len
        self.n_predicted = tokens.size - 1

    def __len__(self) -> int:
        return -(-self.n_predicted // self.seq_len)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        T = self.seq_len
        chunk = torch.from_numpy(np.asarray(self.tokens[i * T : (i + 1) * T + 1], dtype=np.int64))
        n = chunk.numel() - 1
        x = torch.zeros(T, dtype=torch.long)
        y = torch.full((T,), IGNORE_INDEX, dtype=torch.long)
        x[:n], y[:n] = chunk[:-1], chunk[1:]
        return x, y


class StartAt(torch.utils.data.Sampler):
    """Indices ``start, ..., length - 1``, with ``len() == length``.

    The length stays the full epoch because a resumed Lightning loop counts the batches it
    already consumed (``start`` of them) towards the epoch.
    """

    def __init__(self, start: int, length: int) -> None:
        self.start, self.length = start, length

    def __iter__(self):
        return iter(range(self.start, self.length))

    def __len__(self) -> int:
        return self.length


def _lightning_datamodule_base():
    import lightning.pytorch as pl

    return pl.LightningDataModule


class LMDataModule(_lightning_datamodule_base()):
    """Lightning data module: prepares the token cache (local rank 0), memory-maps it, serves batches.

    Args mirror ``data.*`` (:class:`glubench.config.DataConfig`) plus ``seq_len``
    (``model.seq_len``), ``num_batches`` (optimizer steps × gradient-accumulation
    micro-batches) and the run ``seed``.  :meth:`prepare_data` does all the writing (Lightning
    calls it on local rank 0 only); :meth:`setup` on a rank that did not prepare waits for the
    preparing rank's manifest and memory-maps the same folder.
    """

    def __init__(self, name: str = "pydocs", tokenizer: str = "bytes", vocab_size: int = 4096,
                 val_percent: float = 5.0, batch_size: int = 16, val_batch_size: int = 32,
                 num_workers: int = 0, cache_dir: str = "~/.cache/glubench", files=None,
                 seq_len: int = 128, num_batches: int = 1, seed: int = 0, tokenizer_file: str | None = None,
                 num_proc: int | None = None, **source) -> None:
        super().__init__()
        self.name, self.tokenizer_kind, self.vocab_size = name, tokenizer, vocab_size
        self.val_percent, self.batch_size, self.val_batch_size = val_percent, batch_size, val_batch_size
        self.num_workers, self.files = num_workers, files
        self.tokenizer_file, self.num_proc = tokenizer_file, num_proc
        # data.* keys that do not shape the corpus (added by other features) are not ours.
        self.spec = DataSpec(name=name, files=files, val_percent=val_percent,
                             **{k: v for k, v in source.items() if k in SPEC_KEYS})
        self.cache_dir = Path(os.path.expanduser(cache_dir))
        self.seq_len, self.num_batches, self.seed = seq_len, num_batches, seed
        self.splits: TokenSplits | None = None
        self.corpus_fingerprint: str | None = None
        self._folder: Path | None = None

    def prepare_data(self) -> None:
        if self._folder is None:
            self._folder = prepare_dataset(self.spec, self.tokenizer_kind, self.vocab_size, self.cache_dir,
                                           self.tokenizer_file, self.num_proc)

    def setup(self, stage: str | None = None) -> None:
        if self.splits is not None:
            return
        if self._folder is None:  # a rank that did not prepare
            self._folder = wait_for_prepared(self.spec, self.tokenizer_kind, self.vocab_size, self.cache_dir,
                                             self.tokenizer_file)
        self.splits = load_tokens(self._folder)
        self.corpus_fingerprint = self.splits.meta["fingerprint"]
        if self.splits.val.size < 2:
            raise ValueError(f"data.name={self.name!r}: the validation split has {self.splits.val.size} tokens; "
                             "raise data.val_percent or give data.val_files")
        if self.splits.train.size < self.seq_len + 1:
            raise ValueError(f"data.name={self.name!r}: the train split has {self.splits.train.size} tokens, "
                             f"fewer than one window (model.seq_len={self.seq_len} + 1); use more text or a "
                             "smaller model.seq_len")

    def train_dataloader(self):
        t = self.trainer
        rank, world = (t.global_rank, t.world_size) if t is not None else (0, 1)
        ds = TrainBatches(self.splits.train, self.seq_len, self.batch_size, self.num_batches,
                          self.seed, rank, world)
        # On resume Lightning has restored global_step by now: continue at the next batch.
        start = t.global_step * t.accumulate_grad_batches if t is not None else 0
        return torch.utils.data.DataLoader(ds, batch_size=None, sampler=StartAt(start, len(ds)),
                                           num_workers=self.num_workers)

    def val_dataloader(self):
        ds = ValWindows(self.splits.val, self.seq_len)
        if self.trainer is not None and self.trainer.world_size > 1:
            # Shard without padding: DistributedSampler would repeat windows to even out ranks.
            idx = list(range(self.trainer.global_rank, len(ds), self.trainer.world_size))
            ds = torch.utils.data.Subset(ds, idx)
        return torch.utils.data.DataLoader(ds, batch_size=self.val_batch_size, shuffle=False,
                                           num_workers=self.num_workers)
