"""The default corpus, pydocs: the interpreter's own English documentation, so that a run needs no download.

The ``pydoc_data.topics`` texts and the docstrings of the standard library (about 2 MB), one document each,
split by a stable hash of the document id and cached as JSON per Python build.
"""

from __future__ import annotations

import ast
import json
import sys
import sysconfig
from pathlib import Path
from pydoc_data.topics import topics

from glubench.core.io import atomic_write_json, sha256_text
from glubench.data.corpus import Corpus, split_of

_SKIP_DIRS = {"test", "tests", "idlelib", "lib2to3", "site-packages", "dist-packages", "__pycache__"}


def _pydocs_documents() -> list[tuple[str, str]]:
    """``(doc_id, text)``: the ``pydoc_data.topics`` texts by topic, then the docstrings of every stdlib module,
    class and function (read with :mod:`ast` in sorted path order, never imported; no tests, no IDLE)."""
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


def load_pydocs(cache_dir: Path, val_percent: float, test_percent: float = 0.0) -> Corpus:
    """The default corpus: the interpreter's own English documentation (about 2 MB), cached as JSON per build."""
    version = f"{sys.version} {sysconfig.get_paths()['stdlib']}"
    path = Path(cache_dir) / "corpora" / f"pydocs-{sha256_text(version, '1')[:16]}.json"  # 1: _pydocs_documents' rules
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
