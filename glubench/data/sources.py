"""Corpus loaders: the embedded pydocs corpus, local files and Hugging Face Hub datasets.

Everything except pydocs loads through :func:`datasets.load_dataset` (a Hub id, a local snapshot
``data.local_dir``, or the ``text`` / ``json`` / ``parquet`` builders for ``data.files`` /
``data.val_files``) into a :class:`Corpus` whose ``fingerprint`` identifies the text exactly
(content hashes for local files, the datasets fingerprint and revision for Hub data) and keys
every cache built from it.  Rows and documents:

* local text files are read line by line with their line breaks kept, so concatenating the
  rows gives back the file (``separator=""``); a *document* (the unit of the hash split) is
  a paragraph: lines up to and including the blank lines that follow them;
* json / parquet files and Hub datasets: one row is one document, and ``data.doc_separator``
  (default ``"\\n\\n"``; ``""`` for Hub datasets whose rows are lines, wikitext) is appended to each row.

Without a validation split (``data.val_split: null``, no ``data.val_files``), documents go to
validation by a stable hash of their id (:func:`in_val_split`).  A test split, when asked for, is a
third share of the same hash (``data.test_percent``: the buckets just above validation's, so adding a
test split leaves the validation documents unchanged and takes its documents from training), or a
split of its own (``data.test_files``, ``data.test_split``).  It exists so that numbers chosen on
validation (a learning rate from a grid) can be reported on text that played no part in the choice.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import re
import sys
import sysconfig
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from itertools import islice
from pathlib import Path
from typing import Any, Optional

import numpy as np

from glubench.core.errors import ConfigError, CorpusUnavailable
from glubench.core.io import atomic_write_json, sha256_text
from glubench.data.files import check_data_file, expand_files, infer_format

DOC_SEPARATOR = "\n\n"
LOADER_VERSION = 2  # bump when a rule that changes rows or documents changes
CORPORA = ("pydocs", "text", "tinyshakespeare", "wikitext2", "wikitext103", "tinystories", "fineweb_edu")


@dataclass
class Corpus:
    """A text corpus split into train, validation and (optionally) test rows.

    ``train`` / ``val`` / ``test`` are sequences of strings (pydocs, tests), :class:`datasets.Dataset`
    objects with a ``"text"`` column, or ``None`` until :meth:`load` runs ``loader`` (so a warm
    token cache never reads the text).  A streamed corpus's ``stream`` yields ``(doc_id, text)``,
    split by :func:`split_of` while tokenizing, up to ``max_tokens``.  ``fingerprint`` is the
    sha256 of everything that identifies the rows (text or content hashes, revision, row and
    document rules); ``separator`` is appended to every row.  ``test`` stays ``None`` for a corpus
    without a test split (``info["test_percent"]`` then 0 and no test files or split).
    """

    name: str
    train: Any
    val: Any
    fingerprint: str
    source: str
    separator: str = DOC_SEPARATOR
    info: dict = field(default_factory=dict)
    loader: Optional[Callable[[], tuple[Any, Any, Any]]] = None
    stream: Optional[Callable[[], Iterable[tuple[str, str]]]] = None
    max_tokens: Optional[int] = None
    test: Any = None

    @property
    def has_test(self) -> bool:
        """Whether the corpus has a test split (known before :meth:`load`, from ``info``)."""
        return bool(self.info.get("test_percent")) or bool(self.info.get("test_source"))

    def load(self) -> Corpus:
        """Materialise ``train``, ``val`` and ``test`` (a no-op once loaded or for a streamed corpus)."""
        if self.train is None and self.loader is not None:
            self.train, self.val, self.test = self.loader()
        return self

    def iter_train_texts(self, batch_size: int = 1000) -> Iterable[list[str]]:
        """Batches of training rows as stored (no separator appended), e.g. to train a tokenizer.

        A streamed corpus yields its training documents until ``max_tokens`` UTF-8 bytes (at
        least the token budget's text).
        """
        if self.stream is None and not isinstance(self.load().train, (list, tuple)):
            return (batch["text"] for batch in self.train.iter(batch_size=batch_size))
        rows = iter(self.train) if self.stream is None else self._stream_train()
        return iter(lambda: list(islice(rows, batch_size)), [])  # lists of batch_size rows until none is left

    def _stream_train(self) -> Iterable[str]:
        seen = 0
        for doc_id, text in self.stream():
            if split_of(doc_id, self.info["val_percent"], self.info.get("test_percent", 0.0)) == "train":
                yield text
                seen += len(text.encode("utf-8"))
                if self.max_tokens is not None and seen >= self.max_tokens:
                    return


# ---------------------------------------------------------------------------- the split


def _bucket(doc_id: str) -> int:
    return int(hashlib.sha256(doc_id.encode("utf-8")).hexdigest()[:8], 16) % 10_000


def in_val_split(doc_id: str, val_percent: float) -> bool:
    """Stable split: a document is in validation iff ``sha256(id) mod 10000 < 100·val_percent``."""
    return _bucket(doc_id) < round(val_percent * 100)


def split_of(doc_id: str, val_percent: float, test_percent: float = 0.0) -> str:
    """``"val"``, ``"test"`` or ``"train"`` by the bucket ``b = sha256(id) mod 10000``: validation is
    ``b < 100·val_percent`` (exactly :func:`in_val_split`), test the next ``100·test_percent`` buckets,
    training the rest.  So a test split never moves a validation document."""
    b, v = _bucket(doc_id), round(val_percent * 100)
    return "val" if b < v else "test" if b < v + round(test_percent * 100) else "train"


def paragraph_ids(lines: Sequence[str]) -> np.ndarray:
    """``(n_lines,)`` int64 paragraph index of each line (lines keep their ``"\\n"``).

    A paragraph starts at a non-blank line that follows a blank (whitespace-only) line, or at
    the first line; blank lines belong to the paragraph before them.
    """
    import pyarrow as pa
    import pyarrow.compute as pc

    arr = pa.array(lines, type=pa.large_string()) if not isinstance(lines, (pa.Array, pa.ChunkedArray)) else lines
    blank = np.asarray(pc.match_substring_regex(arr, r"^\s*$").to_numpy(zero_copy_only=False), dtype=bool)
    starts = ~blank
    starts[1:] &= blank[:-1]
    starts[:1] = True
    return np.cumsum(starts) - 1


def _hash_split(ds, val_percent: float, test_percent: float, id_column: str | None, by_paragraph: bool):
    """``(train, val, test)`` by :func:`split_of` of ``id_column``, else ``p<paragraph>``, else ``r<row index>``
    (``test`` is ``None`` when ``test_percent`` is 0; ``val`` is empty when ``val_percent`` is 0)."""
    if id_column:
        if id_column not in ds.column_names:
            raise ValueError(f"data.id_column={id_column!r} is not a column; columns: {ds.column_names}")
        ids = [str(x) for x in ds[id_column]]
    elif by_paragraph:
        ids = [f"p{i}" for i in paragraph_ids(ds.data.column("text"))]
    else:
        ids = [f"r{i}" for i in range(len(ds))]
    # paragraphs repeat over their lines: hash each id once
    which = functools.lru_cache(maxsize=4096)(lambda doc_id: split_of(doc_id, val_percent, test_percent))
    labels = np.array(list(map(which, ids)), dtype=object)
    test = ds.select(np.flatnonzero(labels == "test")) if test_percent else None
    return ds.select(np.flatnonzero(labels == "train")), ds.select(np.flatnonzero(labels == "val")), test


def _text_only(ds, column: str):
    """``ds`` with ``column`` as its ``"text"`` column (other columns stay)."""
    if column not in ds.column_names:
        raise ValueError(f"data.text_column={column!r} is not a column of the data; columns: {ds.column_names}")
    if column != "text":
        ds = ds.rename_column(column, "text") if "text" not in ds.column_names else ds.map(
            lambda b: {"text": b[column]}, batched=True)
    return ds


def _train_val_test(train, val, test, spec: DataSpec, id_column: str | None, by_paragraph: bool = False):
    """``(train, val, test)`` with their text as ``"text"``: ``val`` and ``test`` where given, else hash
    shares of ``train`` (validation by ``data.val_percent``, test by ``data.test_percent``; ``test`` is
    ``None`` when neither is asked for)."""
    train = _text_only(train, spec.text_column)
    val = _text_only(val, spec.text_column) if val is not None else None
    test = _text_only(test, spec.text_column) if test is not None else None
    val_pct = 0.0 if val is not None else spec.val_percent
    test_pct = 0.0 if test is not None else spec.test_percent
    if val_pct or test_pct:
        train, hval, htest = _hash_split(train, val_pct, test_pct, id_column, by_paragraph)
        val = val if val is not None else hval
        test = test if test is not None else htest
    return train, val, test


# ---------------------------------------------------------------------------- local files


@dataclass
class DataSpec:
    """Where a corpus comes from: the ``data.*`` keys that select and shape its text.

    :class:`glubench.data.config.DataConfig` adds the tokenizer and batching keys to these.
    """

    name: str = "pydocs"
    files: Optional[Any] = None  # local text/json/parquet files: a path, a glob or a list
    val_files: Optional[Any] = None  # validation files; null: a stable hash split of data.files
    test_files: Optional[Any] = None  # test files; null: the test_percent share of data.files (if any)
    local_dir: Optional[str] = None  # a local snapshot of the Hub dataset repo (used instead of hub_id)
    format: Optional[str] = None  # text | json | parquet; null: from the files' extension
    hub_id: Optional[str] = None  # Hugging Face dataset id, e.g. Salesforce/wikitext
    hub_config: Optional[str] = None  # its config (subset) name, e.g. wikitext-2-raw-v1
    revision: Optional[str] = None  # Hub commit/tag to pin; null: main
    train_split: str = "train"
    val_split: Optional[str] = None  # Hub split for validation; null: a stable hash split
    test_split: Optional[str] = None  # Hub split for test (e.g. wikitext's "test"); null: test_percent's share
    text_column: str = "text"
    id_column: Optional[str] = None  # column whose value keys the hash split; null: row/paragraph index
    doc_separator: str = DOC_SEPARATOR  # appended to each row (json/parquet/Hub; text files keep their own lines)
    streaming: bool = False  # stream the Hub dataset (needs max_tokens)
    max_tokens: Optional[int] = None  # token budget of a streamed corpus (train + val)
    val_percent: float = 5.0  # share of documents in the validation split (stable hash)
    # share of documents in a test split (the hash buckets after validation's): 0 = no test split
    test_percent: float = 0.0


def _test_info(spec: DataSpec, test_source: str | None) -> dict:
    """The test split's entries of ``Corpus.info`` (empty without one, so older caches keep their keys)."""
    if test_source:
        return {"test_source": test_source}
    return {"test_percent": spec.test_percent} if spec.test_percent else {}


def _load_files(spec: DataSpec, cache_dir: Path) -> Corpus:
    """``data.files`` (+ ``data.val_files``, ``data.test_files``): checked and hashed now, rows loaded lazily."""
    paths = expand_files(spec.files, "data.files")
    val_paths = expand_files(spec.val_files, "data.val_files") if spec.val_files else []
    test_paths = expand_files(spec.test_files, "data.test_files") if spec.test_files else []
    fmt = infer_format(paths + val_paths + test_paths, spec.format)
    groups = (("data.files", paths), ("data.val_files", val_paths), ("data.test_files", test_paths))
    hashes = [check_data_file(p, fmt, key) for key, group in groups for p in group]
    separator = "" if fmt == "text" else spec.doc_separator
    # Only what shapes the rows: a text file's rows ignore the column, id and separator keys,
    # so data=text and a Hub config pointed at the same files share one token cache.
    shape = ("text",) if fmt == "text" else (f"text_column={spec.text_column}", f"id_column={spec.id_column}",
                                             f"separator={separator!r}")
    n, nv = len(paths), len(val_paths)
    test_part = ("test_files", *hashes[n + nv:]) if test_paths else ()  # absent: fingerprints as before
    fingerprint = sha256_text(f"loader={LOADER_VERSION}", f"format={fmt}", *shape, "files", *hashes[:n],
                              "val_files", *hashes[n:n + nv], *test_part)

    def loader():
        import datasets

        data_files = {k: [str(p) for p in g]
                      for k, g in (("train", paths), ("validation", val_paths), ("test", test_paths)) if g}
        kwargs = dict(sample_by="line", keep_linebreaks=True) if fmt == "text" else {}
        # The files were hashed above; rebuild datasets' Arrow copy so that it can never be an
        # older version of a file edited in place (datasets keys local files by path and mtime).
        dd = datasets.load_dataset(fmt, data_files=data_files, cache_dir=str(Path(cache_dir) / "hf-local"),
                                   download_mode="force_redownload", **kwargs)
        return _train_val_test(dd["train"], dd.get("validation"), dd.get("test"), spec,
                               None if fmt == "text" else spec.id_column, by_paragraph=fmt == "text")

    return Corpus(
        name=spec.name, train=None, val=None, fingerprint=fingerprint,
        source=f"{fmt} files: " + ", ".join(map(str, paths))
        + (f"; validation: {', '.join(map(str, val_paths))}" if val_paths else "")
        + (f"; test: {', '.join(map(str, test_paths))}" if test_paths else ""),
        separator=separator, loader=loader,
        info={"kind": "files", "format": fmt, "files": [str(p) for p in paths],
              "val_files": [str(p) for p in val_paths], "file_sha256": hashes,
              "split": "val_files" if val_paths else ("hash of paragraph" if fmt == "text" else "hash of row"),
              "val_percent": spec.val_percent, **_test_info(spec, "test_files" if test_paths else None)},
    )


# ---------------------------------------------------------------------------- Hub datasets


def hf_offline() -> bool:
    """Whether ``HF_DATASETS_OFFLINE`` / ``HF_HUB_OFFLINE`` asks for no network access."""
    if any(os.environ.get(var, "").strip().lower() in ("1", "on", "yes", "true")
           for var in ("HF_DATASETS_OFFLINE", "HF_HUB_OFFLINE")):
        return True
    import datasets

    return bool(getattr(datasets.config, "HF_HUB_OFFLINE", False))


def _unavailable(spec: DataSpec, err: BaseException) -> CorpusUnavailable:
    where = f"{spec.hub_id!r}" + (f" (config {spec.hub_config!r})" if spec.hub_config else "")
    why = ("it is not in the local Hugging Face cache and HF_DATASETS_OFFLINE/HF_HUB_OFFLINE forbid downloading"
           if hf_offline() else f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}")
    return CorpusUnavailable(
        f"data.name={spec.name!r}: cannot load the Hugging Face dataset {where}: {why}. "
        f"Point at a local copy instead: data.local_dir=DIR (a snapshot of the dataset repo, e.g. from "
        f"`huggingface-cli download --repo-type dataset {spec.hub_id} --local-dir DIR`) or "
        f"data.files=PATH (text, json or parquet files; a glob or a list)"
    )


def _hub_dataset(spec: DataSpec, **kwargs):
    import datasets

    if spec.local_dir:
        path = os.path.expanduser(spec.local_dir)
        if not os.path.isdir(path):
            raise FileNotFoundError(f"data.local_dir={spec.local_dir!r}: no such directory")
        return datasets.load_dataset(path, spec.hub_config, revision=None, **kwargs)
    try:
        return datasets.load_dataset(spec.hub_id, spec.hub_config, revision=spec.revision, **kwargs)
    except Exception as e:
        # Not reachable or not cached; huggingface_hub & co. raise their own HTTP / offline errors.
        if isinstance(e, (OSError, ValueError)) or type(e).__module__.split(".")[0] in (
                "huggingface_hub", "requests", "httpx", "datasets", "fsspec", "urllib3"):
            raise _unavailable(spec, e) from e
        raise


def _load_hub(spec: DataSpec) -> Corpus:
    """Loaded now unless streamed, since the datasets fingerprint keys the caches."""
    origin = f"local snapshot {spec.local_dir}" if spec.local_dir else f"hf://{spec.hub_id}"
    origin += f" ({spec.hub_config})" if spec.hub_config else ""
    ident = (f"loader={LOADER_VERSION}", f"hub={spec.hub_id}", f"config={spec.hub_config}",
             f"local_dir={bool(spec.local_dir)}", f"train_split={spec.train_split}",
             f"val_split={spec.val_split}", f"text_column={spec.text_column}", f"id_column={spec.id_column}",
             f"separator={spec.doc_separator!r}", *([f"test_split={spec.test_split}"] if spec.test_split else []))
    info = {"kind": "hub", "hub_id": spec.hub_id, "hub_config": spec.hub_config, "local_dir": spec.local_dir,
            "train_split": spec.train_split, "val_split": spec.val_split, "val_percent": spec.val_percent,
            "split": spec.val_split or "hash of row id",
            **_test_info(spec, f"split {spec.test_split}" if spec.test_split else None)}
    if spec.streaming:
        if spec.val_split or spec.test_split:
            raise ValueError("data.val_split and data.test_split must be null with data.streaming=true "
                             "(the stream is split by hash)")
        ds = _hub_dataset(spec, split=spec.train_split, streaming=True)

        def stream():  # by batches: a row at a time is ten times slower
            row = 0
            for batch in ds.iter(batch_size=1000):
                texts = batch[spec.text_column]
                ids = map(str, batch[spec.id_column]) if spec.id_column else (f"r{row + i}" for i in range(len(texts)))
                yield from zip(ids, texts)
                row += len(texts)

        info["revision"] = revision = spec.revision or "main (unpinned)"
        info.update(streaming=True, max_tokens=spec.max_tokens,
                    fingerprint_kind="identity of the stream (pin data.revision to freeze it)")
        rows = dict(train=None, val=None, stream=stream, max_tokens=spec.max_tokens,
                    source=f"{origin}, streamed, first {spec.max_tokens:,} tokens")
        extra = ["streaming", f"max_tokens={spec.max_tokens}"]
    else:
        dd = _hub_dataset(spec)
        for key in ("train_split", "val_split", "test_split"):
            if getattr(spec, key) and getattr(spec, key) not in dd:
                raise ValueError(f"data.{key}={getattr(spec, key)!r} is not a split of {origin}; "
                                 f"splits: {', '.join(dd)}")
        train, val, test = _train_val_test(dd[spec.train_split], dd[spec.val_split] if spec.val_split else None,
                                           dd[spec.test_split] if spec.test_split else None, spec, spec.id_column)
        extra = [dd[s]._fingerprint for s in (spec.train_split, spec.val_split, spec.test_split) if s]
        # Else the dataset's commit as far as the datasets cache knows it (for the sidecar).
        info["revision"] = revision = spec.revision or next(
            (part for f in dd[spec.train_split].cache_files for part in Path(f["filename"]).parts
             if re.fullmatch("[0-9a-f]{40}", part)), "unknown")
        info["datasets_fingerprints"] = extra
        rows = dict(train=train, val=val, test=test, source=origin)
    return Corpus(name=spec.name, fingerprint=sha256_text(*ident, f"revision={revision}", *extra),
                  separator=spec.doc_separator, info=info, **rows)


# ---------------------------------------------------------------------------- pydocs


_SKIP_DIRS = {"test", "tests", "idlelib", "lib2to3", "site-packages", "dist-packages", "__pycache__"}


def _pydocs_documents() -> list[tuple[str, str]]:
    """``(doc_id, text)``: the ``pydoc_data.topics`` texts by topic, then the docstrings of every stdlib module,
    class and function (read with :mod:`ast` in sorted path order, never imported; no tests, no IDLE)."""
    import ast
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
                    where = f"{getattr(node, 'name', '<module>')}:{getattr(node, 'lineno', 0)}"
                    docs.append((f"{rel.as_posix()}:{where}", doc))
    return docs


def _load_pydocs(cache_dir: Path, val_percent: float, test_percent: float = 0.0) -> Corpus:
    """The default corpus: the interpreter's own English documentation (about 2 MB), cached as JSON per build."""
    version = f"{sys.version} {sysconfig.get_paths()['stdlib']}"
    path = Path(cache_dir) / "corpora" / f"pydocs-{sha256_text(version, '1')[:16]}.json"  # 1: pydocs_documents' rules
    if path.exists():
        docs = [tuple(d) for d in json.loads(path.read_text("utf-8"))]
    else:
        docs = _pydocs_documents()
        atomic_write_json(path, docs)
    if not docs:
        raise ValueError("data.name='pydocs': this Python ships no documentation to build the corpus from")
    rows: dict[str, list[str]] = {"train": [], "val": [], "test": []}
    for doc_id, text in docs:
        rows[split_of(doc_id, val_percent, test_percent)].append(text)
    return Corpus(
        name="pydocs", train=rows["train"], val=rows["val"], test=rows["test"] if test_percent else None,
        fingerprint=sha256_text(sha256_text(*(f"{i}\0{t}" for i, t in docs)), sys.version),
        source=f"python {sys.version.split()[0]} pydoc_data.topics + stdlib docstrings",
        info={"kind": "pydocs", "split": "hash of document id", "val_percent": val_percent,
              **({"test_percent": test_percent} if test_percent else {})},
    )


# ---------------------------------------------------------------------------- dispatch


def check_source(name: str, files: Any, val_files: Any, local_dir: str | None, hub_id: str | None,
                 test_files: Any = None) -> None:
    """The rules on where ``data.name``'s text comes from, checked before anything is read.

    Raises:
        ConfigError: ``data=text`` without ``data.files``, an unknown corpus or a known one without a
            source, or ``data.val_files`` / ``data.test_files`` without ``data.files``.
    """
    if name == "text" and not files:
        raise ConfigError("data.files is required for data=text (a path, a glob or a list)")
    if not (name == "pydocs" or files or local_dir or hub_id):
        if name not in CORPORA:
            raise ConfigError(f"data.name={name!r} is not a known corpus; valid: {', '.join(CORPORA)} "
                              "(or give data.files, data.local_dir or data.hub_id)")
        raise ConfigError(f"data.name={name!r} has no source: set data.files, data.local_dir or data.hub_id "
                          f"(known corpora: {', '.join(CORPORA)})")
    if val_files and not files:
        raise ConfigError("data.val_files needs data.files (the training files)")
    if test_files and not files:
        raise ConfigError("data.test_files needs data.files (the training files)")


def load_corpus_spec(spec: DataSpec, cache_dir: Path) -> Corpus:
    """Load the corpus that ``spec`` describes: local files, a local Hub snapshot, the Hub, or pydocs.

    ``data.files`` wins over ``data.local_dir``, which wins over ``data.hub_id``.  Local files are
    checked and hashed now (at most once per process for an unchanged file) and their rows load
    lazily; non-streamed Hub data loads now (downloaded or from the HF cache); a stream is read
    only while tokenizing.

    Raises:
        ConfigError: see :func:`check_source`; missing files, a folder, bad text, several formats
            (the message names the key, the file and the byte offset); ValueError: an unknown split
            or column, no documentation in this Python (pydocs); CorpusUnavailable: a Hub dataset
            neither reachable nor cached (the message names it and how to point at a local copy).
    """
    check_source(spec.name, spec.files, spec.val_files, spec.local_dir, spec.hub_id, spec.test_files)
    if spec.files:
        return _load_files(spec, cache_dir)
    if spec.local_dir or spec.hub_id:
        return _load_hub(spec)
    return _load_pydocs(cache_dir, spec.val_percent, spec.test_percent)
