"""The rules for local data files (``data.files``, ``data.val_files``), in one place.

Each failure raises :class:`~glubench.core.errors.ConfigError` naming the key, the file and,
for bad text, the byte offset.  A file's hash is computed once per process: it is cached by
(absolute path, size, mtime in ns), so validating the config and then loading the corpus (or
preparing twice) reads each file once.  Across processes, freshness stays content-based: the
hash keys the token cache.  No torch, no datasets: this module is imported while the config
is validated.
"""

from __future__ import annotations

import codecs
import glob
import hashlib
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from glubench.core.errors import ConfigError

FORMATS = ("text", "json", "parquet")
COMPRESSED = (".gz", ".bz2", ".xz", ".zst")  # the datasets builders decompress these themselves
EXTENSIONS = {".txt": "text", ".text": "text", ".md": "text", ".json": "json", ".jsonl": "json",
              ".parquet": "parquet"}
CHUNK_BYTES = 1 << 20  # read size: memory stays flat whatever the file's size

# (absolute path, size, mtime_ns) -> (sha256 hex, whether the text check passed).  Only files
# that passed their check are cached, so a bad file is reported again on every call.
_HASHES: dict[tuple[str, int, int], tuple[str, bool]] = {}


def clear_hash_cache() -> None:
    """Forget every cached file hash, so the next check reads the files again (as a new process would)."""
    _HASHES.clear()


def expand_files(files: Any, key: str = "data.files") -> list[Path]:
    """The paths ``files`` names, in order: a path, a glob or a list (or ListConfig) of either.

    ``~`` is expanded; a glob's matches are sorted (``**`` recurses).  A plain path is kept
    even if it is a folder, so that :func:`check_data_file` can say so.

    Raises:
        ConfigError: no pattern given, a path that does not exist, or a glob that matches nothing.
    """
    # A ListConfig iterates as its plain values, so it needs no conversion.
    patterns = [files] if isinstance(files, (str, os.PathLike)) else list(files or [])
    if not patterns:
        raise ConfigError(f"{key}={files!r}: no files given (a path, a glob or a list)")
    paths: list[Path] = []
    for pattern in patterns:
        text = os.path.expanduser(str(pattern))
        if glob.has_magic(text):
            matches, why = sorted(glob.glob(text, recursive=True)), "the pattern matches no file"
        else:
            matches, why = [text] if os.path.lexists(text) else [], "no such file"
        if not matches:
            raise ConfigError(f"{key}={str(pattern)!r}: {why}")
        paths.extend(map(Path, matches))
    return paths


def infer_format(paths: Sequence[Path], fmt: str | None, key: str = "data.files") -> str:
    """``fmt`` (``data.format``) if given, else the one format the files' extensions imply.

    Compression suffixes (``.gz`` ...) are skipped; an unknown extension counts as text.

    Raises:
        ConfigError: an unknown ``fmt``, or files of several formats.
    """
    if fmt:
        if fmt not in FORMATS:
            raise ConfigError(f"data.format={fmt!r} is not known; valid: {', '.join(FORMATS)}")
        return fmt
    kinds = set()
    for p in paths:
        suffixes = [s for s in Path(p).suffixes if s not in COMPRESSED]
        kinds.add(EXTENSIONS.get(suffixes[-1].lower() if suffixes else "", "text"))
    if len(kinds) > 1:
        raise ConfigError(f"{key}: files of several formats ({', '.join(sorted(kinds))}); set data.format")
    return kinds.pop() if kinds else "text"


def _sha256(path: Path, key: str, text: bool) -> str:
    """The file's sha256, checked as UTF-8 text if ``text``; cached per process (see the module)."""
    path = Path(path)
    if not path.exists():
        raise ConfigError(f"{key}: {path} does not exist")
    if path.is_dir():
        raise ConfigError(f"{key}: {path} is a folder; give files or a glob such as '{path}/*.txt'")
    decoder = codecs.getincrementaldecoder("utf-8")()
    h, offset, blank = hashlib.sha256(), 0, True
    try:
        st = os.stat(path)
        before = (str(path.resolve()), st.st_size, st.st_mtime_ns)
        hit = _HASHES.get(before)
        if hit is not None and (hit[1] or not text):
            return hit[0]
        if before[1] == 0:
            raise ConfigError(f"{key}: {path} is empty")
        with open(path, "rb") as f:
            while chunk := f.read(CHUNK_BYTES):
                h.update(chunk)
                if text:
                    nul = chunk.find(b"\0")
                    if nul >= 0:
                        raise ConfigError(f"{key}: {path} is binary, not text (NUL byte at byte offset {offset + nul})")
                    # Bytes of a character split across chunks wait in the decoder: e.start counts from them.
                    pending = len(decoder.getstate()[0])
                    try:
                        decoder.decode(chunk)
                    except UnicodeDecodeError as e:
                        raise ConfigError(f"{key}: {path} is not UTF-8 text (byte 0x{e.object[e.start]:02x} at "
                                          f"byte offset {offset - pending + e.start})") from None
                    blank = blank and not chunk.strip()
                offset += len(chunk)
            end = os.fstat(f.fileno())
        if text:
            try:
                decoder.decode(b"", final=True)
            except UnicodeDecodeError as e:
                raise ConfigError(f"{key}: {path} is not UTF-8 text (truncated character at byte offset "
                                  f"{offset - len(e.object) + e.start})") from None
            if blank:
                raise ConfigError(f"{key}: {path} is empty (only whitespace)")
        if (end.st_size, end.st_mtime_ns) == before[1:]:  # a file rewritten while it was read: hash of neither
            _HASHES[before] = (h.hexdigest(), text)
    except OSError as e:
        raise ConfigError(f"{key}: {path} cannot be read ({e.strerror or e})") from None
    return h.hexdigest()


def check_data_file(path: Path, fmt: str, key: str = "data.files") -> str:
    """The hex sha256 of one data file's bytes; a plain-text file (``fmt`` ``text``, :func:`infer_format`,
    not compressed) is also checked to be readable, non-empty UTF-8 text.

    The file is read once, in :data:`CHUNK_BYTES` chunks through an incremental UTF-8 decoder (memory
    stays flat), hashing the same chunks.  Other formats (json, parquet, compressed text) are only
    hashed: the datasets builder that reads them checks their content.

    Raises:
        ConfigError: the file is missing, a folder, unreadable or empty; for text also only whitespace,
            binary (the first NUL byte's offset) or not UTF-8 (the first bad byte and its offset, or a
            truncated final character).
    """
    return _sha256(path, key, text=fmt == "text" and Path(path).suffix not in COMPRESSED)
