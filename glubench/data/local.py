"""Local files as a corpus: ``data.files`` (+ ``data.val_files``, ``data.test_files``), text, json or parquet.

The files are checked and hashed by :mod:`glubench.data.files` when the corpus is described; their rows load
through the ``datasets`` builders (``text`` / ``json`` / ``parquet``) only when :meth:`Corpus.load` asks.
"""

from __future__ import annotations

from pathlib import Path

from glubench.core.io import sha256_text
from glubench.data.corpus import LOADER_VERSION, Corpus, DataSpec, info_for_test_split, train_val_test
from glubench.data.files import check_data_file, expand_files, infer_format


def load_files(spec: DataSpec, cache_dir: Path) -> Corpus:
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
        import datasets  # heavy (~1 s): config validation imports this module

        data_files = {k: [str(p) for p in g]
                      for k, g in (("train", paths), ("validation", val_paths), ("test", test_paths)) if g}
        kwargs = dict(sample_by="line", keep_linebreaks=True) if fmt == "text" else {}
        # The files were hashed above; rebuild datasets' Arrow copy so that it can never be an
        # older version of a file edited in place (datasets keys local files by path and mtime).
        dd = datasets.load_dataset(fmt, data_files=data_files, cache_dir=str(Path(cache_dir) / "hf-local"),
                                   download_mode="force_redownload", **kwargs)
        return train_val_test(dd["train"], dd.get("validation"), dd.get("test"), spec,
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
              "val_percent": spec.val_percent, **info_for_test_split(spec, "test_files" if test_paths else None)},
    )
