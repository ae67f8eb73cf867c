"""Tokenizers: UTF-8 bytes, a byte-level BPE trained on the corpus, GPT-2's BPE (tiktoken)."""

from __future__ import annotations

import hashlib
import os
import tempfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

from glubench.core.errors import TokenizerUnavailable
from glubench.core.io import atomic_write_bytes, file_sha256, sha256_text
from glubench.data.corpus import Corpus
from glubench.data.hub import hf_offline


def token_dtype(vocab_size: int) -> np.dtype:
    """uint16 when every id fits (vocab ≤ 65535), else uint32."""
    return np.dtype(np.uint16 if vocab_size <= 65535 else np.uint32)


class _Tokenizer:
    """Shared interface: ``kind``, ``vocab_size``, ``file_hash`` (sha256 of the tokenizer's files,
    "" when it has none), :meth:`encode_flat`, :meth:`encode`, :meth:`token_bytes` (``(vocab_size,)``
    int64 UTF-8 byte length of each token id) and ``decode(ids)`` (text; bytes that are not valid UTF-8
    become U+FFFD); ``tok`` is the library's tokenizer, if any.
    Subclasses implement ``encode_batch(texts)``: each text's ids, no special tokens added."""

    kind = ""

    def __init__(self, tok=None, vocab_size: int = 256, file_hash: str = "") -> None:
        self.tok, self.vocab_size, self.file_hash = tok, vocab_size, file_hash

    def encode_flat(self, texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        """All texts' ids concatenated ``(n_tokens,)`` and each text's token count ``(n_texts,)``."""
        encs = self.encode_batch(texts)
        lengths = np.fromiter((len(e) for e in encs), dtype=np.int64, count=len(encs))
        dtype = token_dtype(self.vocab_size)
        values = np.fromiter((i for e in encs for i in e), dtype=dtype, count=int(lengths.sum()))
        return values, lengths

    def encode(self, text: str) -> list[int]:
        """``text``'s ids, as training saw them (no special tokens added)."""
        return list(self.encode_batch([text])[0])


class ByteTokenizer(_Tokenizer):
    """UTF-8 bytes as tokens: vocab 256, one byte per token."""

    kind = "bytes"

    def encode_flat(self, texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        raw = [t.encode("utf-8") for t in texts]
        lengths = np.fromiter(map(len, raw), dtype=np.int64, count=len(raw))
        return np.frombuffer(b"".join(raw), dtype=np.uint8).astype(np.uint16), lengths

    def encode_batch(self, texts: Sequence[str]) -> list:
        return [list(t.encode("utf-8")) for t in texts]

    def decode(self, ids: Sequence[int]) -> str:
        return bytes(ids).decode("utf-8", errors="replace")

    def token_bytes(self) -> np.ndarray:
        return np.ones(self.vocab_size, dtype=np.int64)


class BPETokenizer(_Tokenizer):
    """Byte-level BPE trained with the ``tokenizers`` library on the train split.

    Every token is a byte string, so :meth:`token_bytes` is exact and bits-per-byte
    stays comparable with the byte tokenizer.
    """

    kind = "bpe"

    @classmethod
    def train_or_load(cls, corpus: Corpus, vocab_size: int, cache_dir: Path) -> BPETokenizer:
        """Load the cached BPE for this corpus (and split rule) and vocab, training and caching it if absent."""
        split = f"{corpus.info.get('split')}:{corpus.info.get('val_percent')}"
        if corpus.has_test:  # a test split takes documents from the text the BPE is trained on
            split += f":test={corpus.info.get('test_percent') or corpus.info.get('test_source')}"
        key = sha256_text(corpus.fingerprint, split, str(vocab_size))[:16]
        path = Path(cache_dir) / "tokenizers" / f"bpe-{key}-{vocab_size}.json"
        if not path.exists():
            tok = Tokenizer(models.BPE())
            tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
            tok.decoder = decoders.ByteLevel()
            trainer = trainers.BpeTrainer(vocab_size=vocab_size, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                          special_tokens=[], show_progress=False)
            tok.train_from_iterator(corpus.iter_train_texts(), trainer=trainer)
            atomic_write_bytes(path, tok.to_str().encode("utf-8"))
        raw = path.read_bytes()
        tok = Tokenizer.from_str(raw.decode("utf-8"))
        return cls(tok, tok.get_vocab_size(), hashlib.sha256(raw).hexdigest())

    def encode_batch(self, texts: Sequence[str]) -> list:
        return [e.ids for e in self.tok.encode_batch(list(texts), add_special_tokens=False)]

    def decode(self, ids: Sequence[int]) -> str:
        return self.tok.decode(list(ids), skip_special_tokens=False)

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


def tiktoken_cache_dir() -> Path:
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

    @classmethod
    def load(cls, tokenizer_file: str | None = None) -> GPT2Tokenizer:
        """Raises:
            TokenizerUnavailable: tiktoken missing, or the BPE files neither local nor downloadable.
        """
        try:
            import tiktoken  # optional: the [gpt2] extra
            from tiktoken.load import data_gym_to_mergeable_bpe_ranks
        except ImportError:
            raise TokenizerUnavailable(
                "data.tokenizer='gpt2' needs tiktoken: pip install 'glubench[gpt2]' (or pip install tiktoken)"
            ) from None
        how = ("put vocab.bpe and encoder.json (GPT-2's BPE files) in a folder and set data.tokenizer_file=DIR, "
               "or pre-fill $TIKTOKEN_CACHE_DIR on a machine with network access")
        if tokenizer_file:
            files = {name: Path(os.path.expanduser(tokenizer_file)) / name for name in GPT2_URLS}
            missing = [str(p) for p in files.values() if not p.is_file()]
            if missing:
                raise TokenizerUnavailable(f"data.tokenizer_file={tokenizer_file!r}: missing {', '.join(missing)}; "
                                           f"{how}")
            from tiktoken_ext.openai_public import r50k_pat_str  # optional: the [gpt2] extra

            ranks = data_gym_to_mergeable_bpe_ranks(vocab_bpe_file=str(files["vocab.bpe"]),
                                                    encoder_json_file=str(files["encoder.json"]))
            enc = tiktoken.Encoding(name="gpt2-local", pat_str=r50k_pat_str, mergeable_ranks=ranks,
                                    special_tokens={"<|endoftext|>": len(ranks)})
            file_hash = sha256_text(*(file_sha256(p) for p in files.values()))
            return cls(enc, enc.n_vocab, file_hash)
        cached = all((tiktoken_cache_dir() / hashlib.sha1(u.encode()).hexdigest()).exists()
                     for u in GPT2_URLS.values())
        if hf_offline() and not cached:
            raise TokenizerUnavailable(f"data.tokenizer='gpt2': GPT-2's BPE files are not in tiktoken's cache "
                                       f"({tiktoken_cache_dir()}) and offline mode forbids downloading; {how}")
        try:
            enc = tiktoken.get_encoding("gpt2")
        except Exception as e:  # requests/HTTP errors: no network, no cache
            raise TokenizerUnavailable(f"data.tokenizer='gpt2': tiktoken could not load GPT-2's BPE files "
                                       f"({type(e).__name__}: {e}); {how}") from None
        return cls(enc, enc.n_vocab, "tiktoken:gpt2")  # tiktoken checks the official files' sha256 itself

    def encode_batch(self, texts: Sequence[str]) -> list:
        return self.tok.encode_ordinary_batch(list(texts))

    def decode(self, ids: Sequence[int]) -> str:
        return self.tok.decode(list(ids), errors="replace")

    def token_bytes(self) -> np.ndarray:
        out = np.zeros(self.vocab_size, dtype=np.int64)  # 0: a gap in the id space, never produced
        for i in range(self.vocab_size):
            try:
                out[i] = len(self.tok.decode_single_token_bytes(i))
            except KeyError:
                pass
        return out


TOKENIZERS = ("bytes", "bpe", "gpt2")


def build_tokenizer(kind: str, corpus: Corpus, vocab_size: int, cache_dir: Path,
                    tokenizer_file: str | None = None):
    """Return the tokenizer ``kind`` (``data.tokenizer``); a BPE is trained on ``corpus``'s train split.

    Raises:
        ValueError: unknown kind (lists the valid ones); TokenizerUnavailable: see
            :meth:`GPT2Tokenizer.load`.
    """
    if kind == "bytes":
        return ByteTokenizer()
    if kind == "bpe":
        return BPETokenizer.train_or_load(corpus, vocab_size, cache_dir)
    if kind == "gpt2":
        return GPT2Tokenizer.load(tokenizer_file)
    raise ValueError(f"data.tokenizer={kind!r} is not known; valid: {', '.join(TOKENIZERS)}")
