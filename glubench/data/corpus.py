"""What a corpus is, where it comes from, and how its documents are split.

:class:`DataSpec` holds the ``data.*`` keys that select a corpus; a loader (:mod:`glubench.data.local`,
:mod:`glubench.data.hub`, :mod:`glubench.data.pydocs`, chosen by :func:`glubench.data.sources.load_corpus_spec`)
turns it into a :class:`Corpus` whose ``fingerprint`` identifies the text exactly and keys every cache built
from it.  Rows and documents:

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
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from itertools import islice
from typing import Any, Optional

import numpy as np

DOC_SEPARATOR = "\n\n"
LOADER_VERSION = 2  # bump when a rule that changes rows or documents changes


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
    import pyarrow as pa  # heavy: only when a corpus is split
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


def train_val_test(train, val, test, spec: DataSpec, id_column: str | None, by_paragraph: bool = False):
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

def info_for_test_split(spec: DataSpec, test_source: str | None) -> dict:
    """The test split's entries of ``Corpus.info`` (empty without one, so older caches keep their keys)."""
    if test_source:
        return {"test_source": test_source}
    return {"test_percent": spec.test_percent} if spec.test_percent else {}

