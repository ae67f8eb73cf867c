"""Where a corpus's text comes from: the known corpora, the rules on ``data.*``'s source keys, and the dispatch
to a loader (:mod:`glubench.data.local`, :mod:`glubench.data.hub`, :mod:`glubench.data.pydocs`).

What a corpus is (:class:`~glubench.data.corpus.Corpus`, :class:`~glubench.data.corpus.DataSpec`) and how its
documents are split are in :mod:`glubench.data.corpus`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from glubench.core.errors import ConfigError
from glubench.data.corpus import Corpus, DataSpec
from glubench.data.hub import load_hub
from glubench.data.local import load_files
from glubench.data.pydocs import load_pydocs

CORPORA = ("pydocs", "text", "tinyshakespeare", "wikitext2", "wikitext103", "tinystories", "fineweb_edu")


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
        return load_files(spec, cache_dir)
    if spec.local_dir or spec.hub_id:
        return load_hub(spec)
    return load_pydocs(cache_dir, spec.val_percent, spec.test_percent)
