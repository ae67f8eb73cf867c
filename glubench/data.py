"""Corpora, tokenizers, the token cache and the LightningDataModule.

Path of the data: ``load_corpus`` (documents, split by a stable hash) -> ``build_tokenizer``
-> ``prepare_tokens`` (flat uint16/uint32 arrays cached on disk, memory-mapped) ->
``TrainBatches`` (random windows) / ``ValWindows`` (every token scored once) -> ``LMDataModule``.
"""

from __future__ import annotations

import ast
import hashlib
import json
import os
import shutil
import sys
import sysconfig
import tempfile
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

CACHE_VERSION = 1
DOC_SEPARATOR = "\n\n"
IGNORE_INDEX = -100


# ---------------------------------------------------------------------------- atomic files


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` via a temp file in the same folder and ``os.replace``.

    A reader sees either the old file or the complete new one, never a partial write.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_json(path: Path, obj: object) -> None:
    """:func:`atomic_write_bytes` of ``obj`` as indented JSON."""
    atomic_write_bytes(Path(path), (json.dumps(obj, indent=2, sort_keys=False) + "\n").encode())


def sha256_text(*parts: str) -> str:
    h = hashlib.sha256()
    for part in parts:
        h.update(part.encode("utf-8"))
        h.update(b"\0")
    return h.hexdigest()


# ---------------------------------------------------------------------------- corpora


@dataclass
class Corpus:
    """A text corpus split into train and validation documents.

    ``fingerprint`` is the sha256 of everything that identifies the text (for pydocs the
    text itself plus the Python version) and keys every cache built from it.
    """

    name: str
    train: list[str]
    val: list[str]
    fingerprint: str
    source: str


def in_val_split(doc_id: str, val_percent: float) -> bool:
    """Stable split: a document is in validation iff ``sha256(id) mod 10000 < 100·val_percent``."""
    bucket = int(hashlib.sha256(doc_id.encode("utf-8")).hexdigest()[:8], 16) % 10_000
    return bucket < round(val_percent * 100)


def split_documents(docs: Iterable[tuple[str, str]], val_percent: float) -> tuple[list[str], list[str]]:
    """Split ``(doc_id, text)`` pairs by :func:`in_val_split`, keeping their order."""
    train, val = [], []
    for doc_id, text in docs:
        (val if in_val_split(doc_id, val_percent) else train).append(text)
    return train, val


_SKIP_DIRS = {"test", "tests", "idlelib", "lib2to3", "site-packages", "dist-packages", "__pycache__"}


def pydocs_documents() -> list[tuple[str, str]]:
    """The running interpreter's own English documentation, as ``(doc_id, text)`` pairs.

    The ``pydoc_data.topics`` reference texts (sorted by topic) followed by the docstrings of
    every standard-library module, class and function, read with :mod:`ast` from the source
    files in sorted path order (never imported); test packages and IDLE are skipped.
    """
    from pydoc_data.topics import topics

    docs = [(f"topic:{key}", topics[key].strip()) for key in sorted(topics)]
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    for path in sorted(stdlib.rglob("*.py")):
        rel = path.relative_to(stdlib)
        if _SKIP_DIRS.intersection(rel.parts[:-1]) or rel.name.startswith("test_"):
            continue
        try:
            tree = ast.parse(path.read_bytes(), filename=str(rel))
        except (SyntaxError, ValueError, OSError):
            continue
        for node in ast.walk(tree):
            if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
                doc = ast.get_docstring(node)
                if doc and len(doc) >= 40:
                    name = getattr(node, "name", "<module>")
                    docs.append((f"{rel.as_posix()}:{name}:{node.lineno if hasattr(node, 'lineno') else 0}", doc))
    return docs


def load_pydocs(cache_dir: Path, val_percent: float) -> Corpus:
    """The default corpus (about 2 MB of English prose), cached as JSON per Python build.

    Raises:
        ValueError: if the interpreter ships no documentation (an empty corpus).
    """
    version = f"{sys.version} {sysconfig.get_paths()['stdlib']}"
    path = Path(cache_dir) / "corpora" / f"pydocs-{sha256_text(version, str(CACHE_VERSION))[:16]}.json"
    if path.exists():
        docs = [tuple(d) for d in json.loads(path.read_text("utf-8"))]
    else:
        docs = pydocs_documents()
        atomic_write_json(path, docs)
    if not docs:
        raise ValueError("data.name='pydocs': this Python ships no documentation to build the corpus from")
    train, val = split_documents(docs, val_percent)
    text_hash = sha256_text(*(f"{i}\0{t}" for i, t in docs))
    return Corpus(
        name="pydocs",
        train=train,
        val=val,
        fingerprint=sha256_text(text_hash, sys.version),
        source=f"python {sys.version.split()[0]} pydoc_data.topics + stdlib docstrings",
    )


def load_text_files(files: str | Sequence[str], val_percent: float) -> Corpus:
    """Local UTF-8 text files; documents are blank-line-separated paragraphs, split by a stable hash.

    Raises:
        FileNotFoundError: no file matches; ValueError: a file is empty or not UTF-8 text.
    """
    import glob

    patterns = [files] if isinstance(files, (str, os.PathLike)) else list(files)
    paths: list[Path] = []
    for pattern in patterns:
        matches = sorted(glob.glob(os.path.expanduser(str(pattern)), recursive=True))
        if not matches:
            raise FileNotFoundError(f"data.files={pattern!r}: no such file")
        paths.extend(Path(m) for m in matches)
    docs, h = [], hashlib.sha256()
    for path in paths:
        raw = path.read_bytes()
        if not raw.strip():
            raise ValueError(f"data.files: {path} is empty")
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as e:
            raise ValueError(f"data.files: {path} is not UTF-8 text (byte offset {e.start})") from None
        h.update(raw)
        for i, para in enumerate(text.split("\n\n")):
            if para.strip():
                docs.append((f"{path.name}:{i}", para))
    train, val = split_documents(docs, val_percent)
    return Corpus("text", train, val, fingerprint=h.hexdigest(), source=", ".join(map(str, paths)))


def load_corpus(name: str, cache_dir: Path, val_percent: float, files=None) -> Corpus:
    """Load the corpus called ``name`` (``data.name``).

    Raises:
        ValueError: unknown name (lists the valid ones).
    """
    if name == "pydocs":
        return load_pydocs(cache_dir, val_percent)
    if name == "text":
        if not files:
            raise ValueError("data.files is required for data.name='text' (a path, a glob or a list)")
        return load_text_files(files, val_percent)
    raise ValueError(f"data.name={name!r} is not a known corpus; valid: pydocs, text")


# ---------------------------------------------------------------------------- tokenizers


class ByteTokenizer:
    """UTF-8 bytes as tokens: vocab 256, one byte per token."""

    kind = "bytes"
    vocab_size = 256
    file_hash = ""

    def encode_documents(self, docs: Sequence[str]) -> np.ndarray:
        text = "".join(d + DOC_SEPARATOR for d in docs)
        return np.frombuffer(text.encode("utf-8"), dtype=np.uint8).astype(np.uint16)

    def token_bytes(self) -> np.ndarray:
        """``(vocab_size,)`` UTF-8 byte length of each token id."""
        return np.ones(self.vocab_size, dtype=np.int64)


class BPETokenizer:
    """Byte-level BPE trained with the ``tokenizers`` library on the train split.

    Every token is a byte string, so :meth:`token_bytes` is exact and bits-per-byte
    stays comparable with the byte tokenizer.
    """

    kind = "bpe"

    def __init__(self, tokenizer, file_hash: str) -> None:
        self.tok = tokenizer
        self.vocab_size = tokenizer.get_vocab_size()
        self.file_hash = file_hash

    @classmethod
    def train_or_load(cls, corpus: Corpus, vocab_size: int, cache_dir: Path) -> BPETokenizer:
        from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

        path = Path(cache_dir) / "tokenizers" / f"bpe-{corpus.fingerprint[:16]}-{vocab_size}.json"
        if not path.exists():
            tok = Tokenizer(models.BPE())
            tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
            tok.decoder = decoders.ByteLevel()
            trainer = trainers.BpeTrainer(
                vocab_size=vocab_size,
                initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                special_tokens=[],
                show_progress=False,
            )
            tok.train_from_iterator(corpus.train, trainer=trainer)
            atomic_write_bytes(path, tok.to_str().encode("utf-8"))
        raw = path.read_bytes()
        return cls(Tokenizer.from_str(raw.decode("utf-8")), hashlib.sha256(raw).hexdigest())

    def encode_documents(self, docs: Sequence[str]) -> np.ndarray:
        dtype = np.uint16 if self.vocab_size <= 65535 else np.uint32
        encs = self.tok.encode_batch([d + DOC_SEPARATOR for d in docs], add_special_tokens=False)
        return np.fromiter((i for e in encs for i in e.ids), dtype=dtype)

    def token_bytes(self) -> np.ndarray:
        # ByteLevel maps each byte to one printable character, so a token's length in
        # characters is its length in bytes.
        out = np.zeros(self.vocab_size, dtype=np.int64)
        for token, idx in self.tok.get_vocab().items():
            out[idx] = len(token)
        return out


TOKENIZERS = ("bytes", "bpe")


def build_tokenizer(kind: str, corpus: Corpus, vocab_size: int, cache_dir: Path):
    """Return the tokenizer ``kind`` (``data.tokenizer``).

    Raises:
        ValueError: unknown kind (lists the valid ones).
    """
    if kind == "bytes":
        return ByteTokenizer()
    if kind == "bpe":
        return BPETokenizer.train_or_load(corpus, vocab_size, cache_dir)
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
    """Everything that changes the tokens: corpus fingerprint, split rule, tokenizer and its file."""
    return sha256_text(
        str(CACHE_VERSION), corpus.name, corpus.fingerprint, f"val_percent={val_percent}",
        tokenizer.kind, str(tokenizer.vocab_size), tokenizer.file_hash,
    )[:24]


def prepare_tokens(corpus: Corpus, tokenizer, cache_dir: Path, val_percent: float) -> Path:
    """Tokenize ``corpus`` once into ``<cache_dir>/tokens/<key>/`` and return that folder.

    The folder is built under a temporary name and renamed into place, so a preparation
    killed midway never leaves a folder that a later run trusts.
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
            "val_percent": val_percent,
            "tokenizer": tokenizer.kind,
            "vocab_size": tokenizer.vocab_size,
            "tokenizer_file_hash": tokenizer.file_hash,
        }
        for split, docs in (("train", corpus.train), ("val", corpus.val)):
            arr = tokenizer.encode_documents(docs)
            arr.tofile(tmp / f"{split}.bin")
            meta[split] = {
                "tokens": int(arr.size),
                "dtype": str(arr.dtype),
                "documents": len(docs),
                "bytes": sum(len(d.encode("utf-8")) + len(DOC_SEPARATOR) for d in docs),
            }
        atomic_write_json(tmp / "meta.json", meta)
        try:
            os.rename(tmp, final)
        except OSError:  # another process won the race; its folder is complete
            shutil.rmtree(tmp, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return final


def load_tokens(folder: Path, token_bytes: np.ndarray) -> TokenSplits:
    """Memory-map a folder written by :func:`prepare_tokens`."""
    meta = json.loads((folder / "meta.json").read_text())
    arrays = {
        split: np.memmap(folder / f"{split}.bin", dtype=meta[split]["dtype"], mode="r",
                         shape=(meta[split]["tokens"],))
        for split in ("train", "val")
    }
    val = arrays["val"]
    predicted_bytes = int(token_bytes[np.asarray(val[1:], dtype=np.int64)].sum()) if val.size > 1 else 0
    return TokenSplits(arrays["train"], val, meta["vocab_size"], predicted_bytes, meta)


# ---------------------------------------------------------------------------- datasets


class TrainBatches(torch.utils.data.Dataset):
    """Item ``i`` is training batch ``i``: ``batch_size`` random windows of ``seq_len + 1`` tokens.

    Offsets come from ``numpy.random.default_rng([seed, rank, i])``, so batch ``i`` is the
    same whatever order or process asks for it (resume-safe and worker-safe).
    Returns ``(x, y)``: int64 ``(batch_size, seq_len)`` inputs and next-token targets.
    """

    def __init__(self, tokens: np.ndarray, seq_len: int, batch_size: int, num_batches: int,
                 seed: int, rank: int = 0) -> None:
        if tokens.size < seq_len + 1:
            raise ValueError(
                f"model.seq_len={seq_len} needs at least {seq_len + 1} training tokens, "
                f"but the train split has {tokens.size}"
            )
        self.tokens, self.seq_len, self.batch_size = tokens, seq_len, batch_size
        self.num_batches, self.seed, self.rank = num_batches, seed, rank
        self._arange = np.arange(seq_len + 1)

    def __len__(self) -> int:
        return self.num_batches

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        rng = np.random.default_rng([self.seed, self.rank, i])
        starts = rng.integers(0, self.tokens.size - self.seq_len, size=self.batch_size)
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


def _lightning_datamodule_base():
    import lightning.pytorch as pl

    return pl.LightningDataModule


class LMDataModule(_lightning_datamodule_base()):
    """Lightning data module: prepares (rank 0) and memory-maps the token cache, serves batches.

    Args mirror ``data.*`` plus ``seq_len`` (``model.seq_len``), ``num_batches`` (optimizer
    steps × gradient-accumulation micro-batches) and the run ``seed``.
    """

    def __init__(self, name: str = "pydocs", tokenizer: str = "bytes", vocab_size: int = 4096,
                 val_percent: float = 5.0, batch_size: int = 16, val_batch_size: int = 32,
                 num_workers: int = 0, cache_dir: str = "~/.cache/glubench", files=None,
                 seq_len: int = 128, num_batches: int = 1, seed: int = 0) -> None:
        super().__init__()
        self.name, self.tokenizer_kind, self.vocab_size = name, tokenizer, vocab_size
        self.val_percent, self.batch_size, self.val_batch_size = val_percent, batch_size, val_batch_size
        self.num_workers, self.files = num_workers, files
        self.cache_dir = Path(os.path.expanduser(cache_dir))
        self.seq_len, self.num_batches, self.seed = seq_len, num_batches, seed
        self.splits: TokenSplits | None = None
        self.corpus_fingerprint: str | None = None
        self._folder: Path | None = None
        self._token_bytes: np.ndarray | None = None

    def prepare_data(self) -> None:
        corpus = load_corpus(self.name, self.cache_dir, self.val_percent, self.files)
        tok = build_tokenizer(self.tokenizer_kind, corpus, self.vocab_size, self.cache_dir)
        self._folder = prepare_tokens(corpus, tok, self.cache_dir, self.val_percent)
        self._token_bytes = tok.token_bytes()
        self.corpus_fingerprint = corpus.fingerprint

    def setup(self, stage: str | None = None) -> None:
        if self.splits is not None:
            return
        if self._folder is None:  # a rank that did not prepare: rebuild the (cached) path
            self.prepare_data()
        self.splits = load_tokens(self._folder, self._token_bytes)
        if self.splits.val.size < 2:
            raise ValueError(f"data.name={self.name!r}: the validation split is empty; raise data.val_percent")

    def train_dataloader(self):
        rank = self.trainer.global_rank if self.trainer is not None else 0
        ds = TrainBatches(self.splits.train, self.seq_len, self.batch_size, self.num_batches,
                          self.seed, rank)
        return torch.utils.data.DataLoader(ds, batch_size=None, shuffle=False,
                                           num_workers=self.num_workers)

    def val_dataloader(self):
        ds = ValWindows(self.splits.val, self.seq_len)
        if self.trainer is not None and self.trainer.world_size > 1:
            # Shard without padding: DistributedSampler would repeat windows to even out ranks.
            idx = list(range(self.trainer.global_rank, len(ds), self.trainer.world_size))
            ds = torch.utils.data.Subset(ds, idx)
        return torch.utils.data.DataLoader(ds, batch_size=self.val_batch_size, shuffle=False,
                                           num_workers=self.num_workers)
