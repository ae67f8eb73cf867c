"""Hugging Face Hub datasets as a corpus: by id (``data.hub_id``), from a local snapshot (``data.local_dir``),
or streamed (``data.streaming``).

A non-streamed dataset loads when the corpus is described, since its ``datasets`` fingerprint keys the caches;
a stream is read only while tokenizing.  A dataset that is neither reachable nor cached raises
:class:`~glubench.core.errors.CorpusUnavailable` naming it and how to point at a local copy.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from glubench.core.errors import CorpusUnavailable
from glubench.core.io import sha256_text
from glubench.data.corpus import LOADER_VERSION, Corpus, DataSpec, info_for_test_split, train_val_test


def hf_offline() -> bool:
    """Whether ``HF_DATASETS_OFFLINE`` / ``HF_HUB_OFFLINE`` asks for no network access."""
    if any(os.environ.get(var, "").strip().lower() in ("1", "on", "yes", "true")
           for var in ("HF_DATASETS_OFFLINE", "HF_HUB_OFFLINE")):
        return True
    import datasets  # heavy (~1 s): config validation imports this module

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
    import datasets  # heavy (~1 s): config validation imports this module

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


def load_hub(spec: DataSpec) -> Corpus:
    """The Hub dataset ``spec`` names (``data.hub_id`` or ``data.local_dir``), loaded now unless streamed,
    since the datasets fingerprint keys the caches.

    Raises:
        ValueError: a split that the dataset lacks, a missing ``data.text_column`` / ``data.id_column``,
            or ``data.val_split`` / ``data.test_split`` with ``data.streaming``; FileNotFoundError: no
            ``data.local_dir``; CorpusUnavailable: neither reachable nor cached.
    """
    origin = f"local snapshot {spec.local_dir}" if spec.local_dir else f"hf://{spec.hub_id}"
    origin += f" ({spec.hub_config})" if spec.hub_config else ""
    ident = (f"loader={LOADER_VERSION}", f"hub={spec.hub_id}", f"config={spec.hub_config}",
             f"local_dir={bool(spec.local_dir)}", f"train_split={spec.train_split}",
             f"val_split={spec.val_split}", f"text_column={spec.text_column}", f"id_column={spec.id_column}",
             f"separator={spec.doc_separator!r}", *([f"test_split={spec.test_split}"] if spec.test_split else []))
    info = {"kind": "hub", "hub_id": spec.hub_id, "hub_config": spec.hub_config, "local_dir": spec.local_dir,
            "train_split": spec.train_split, "val_split": spec.val_split, "val_percent": spec.val_percent,
            "split": spec.val_split or "hash of row id",
            **info_for_test_split(spec, f"split {spec.test_split}" if spec.test_split else None)}
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
        train, val, test = train_val_test(dd[spec.train_split], dd[spec.val_split] if spec.val_split else None,
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
