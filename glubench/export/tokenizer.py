"""glubench's tokenizers as a ``tokenizer.json`` that ``transformers``' ``PreTrainedTokenizerFast`` loads.

Each gives the ids glubench trained on (no special tokens added to a text) and has ``<|endoftext|>`` as its
BOS and EOS token, which lm-evaluation-harness needs (it prefixes empty contexts with it):

* ``bytes``: a byte-level BPE with the 256 byte symbols as its vocabulary, id = byte value, and no merges,
  so every UTF-8 byte is one token.
* ``bpe``: the trained tokenizer itself (it already is a ``tokenizers`` byte-level BPE).
* ``gpt2``: GPT-2's ``encoder.json`` and ``vocab.bpe`` (from ``data.tokenizer_file`` or tiktoken's cache) as a
  byte-level BPE with GPT-2's pre-tokenization; ``<|endoftext|>`` is its own token 50256.

glubench's byte-level vocabularies have no special token, but one of their ids is free: the byte 0xFF never
occurs in UTF-8 (RFC 3629, §1), so no text ever encodes to the symbol of byte 0xFF.  The export names that id
``<|endoftext|>`` (``bytes``: id 255; ``bpe``: where no merge uses the symbol), so the vocabulary, every id a
text gets, and the model stay as trained; like GPT-2's token under glubench, it never occurred in training.
A text that contains the literal string ``<|endoftext|>`` gets that one id (the ``transformers`` convention),
where glubench spells it out.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers

from glubench.core.errors import TokenizerUnavailable
from glubench.data.tokenizers import GPT2_URLS, tiktoken_cache_dir

EOT = "<|endoftext|>"
FREE_BYTE = 0xFF
"""A byte that no UTF-8 text contains (RFC 3629): its id becomes :data:`EOT`."""


def _byte_level(model):
    tok = Tokenizer(model)
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    tok.decoder = decoders.ByteLevel()
    return tok


def _symbols() -> dict[int, str]:
    from transformers.convert_slow_tokenizer import bytes_to_unicode  # optional: the [export] extra (transformers)

    return bytes_to_unicode()  # byte -> the printable character ByteLevel uses for it (GPT-2's table)


def bytes_tokenizer():
    """A ``tokenizers.Tokenizer`` mapping text to its UTF-8 bytes (id = byte value) and back; id 255 is :data:`EOT`."""
    symbols = _symbols()
    vocab = {symbols[b]: b for b in range(256) if b != FREE_BYTE} | {EOT: FREE_BYTE}
    return _with_eot(_byte_level(models.BPE(vocab=vocab, merges=[])))


def bpe_tokenizer(trained):
    """The trained byte-level BPE (a ``tokenizers.Tokenizer``) with the id of byte 0xFF's symbol named :data:`EOT`
    when no merge uses that symbol (else unchanged, without an EOT token)."""
    spec = json.loads(trained.to_str())
    vocab, merges, free = spec["model"]["vocab"], spec["model"]["merges"], _symbols()[FREE_BYTE]
    used = any(free in (m.split(" ") if isinstance(m, str) else m) for m in merges)
    if free not in vocab or used or EOT in vocab:
        return Tokenizer.from_str(trained.to_str())
    vocab[EOT] = vocab.pop(free)
    return _with_eot(Tokenizer.from_str(json.dumps(spec)))


def _with_eot(tok):
    tok.add_special_tokens([AddedToken(EOT, special=True)])
    return tok


def gpt2_files(tokenizer_file: str | None) -> dict[str, Path]:
    """GPT-2's ``vocab.bpe`` and ``encoder.json``: in ``data.tokenizer_file`` or tiktoken's cache.

    Raises:
        TokenizerUnavailable: neither holds them.
    """
    if tokenizer_file:
        files = {name: Path(os.path.expanduser(tokenizer_file)) / name for name in GPT2_URLS}
    else:  # tiktoken caches each download under the sha1 of its URL
        files = {name: tiktoken_cache_dir() / hashlib.sha1(url.encode()).hexdigest() for name, url in GPT2_URLS.items()}
    missing = [str(p) for p in files.values() if not p.is_file()]
    if missing:
        raise TokenizerUnavailable(f"data.tokenizer='gpt2': GPT-2's BPE files are missing ({', '.join(missing)}); "
                                   "set data.tokenizer_file=DIR (a folder with vocab.bpe and encoder.json)")
    return files


def gpt2_tokenizer(tokenizer_file: str | None):
    """GPT-2's BPE as a ``tokenizers.Tokenizer`` (GPT-2's pre-tokenization regex is ByteLevel's default)."""
    files = gpt2_files(tokenizer_file)
    vocab = json.loads(files["encoder.json"].read_text(encoding="utf-8"))
    lines = files["vocab.bpe"].read_text(encoding="utf-8").split("\n")[1:]  # the first line is a version header
    merges = [tuple(line.split(" ")) for line in lines if line.strip()]
    tok = _byte_level(models.BPE(vocab=vocab, merges=merges))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    return _with_eot(tok) if EOT in vocab else tok


def hf_tokenizer(data: dict, glubench_tok, seq_len: int):
    """The ``PreTrainedTokenizerFast`` of the checkpoint's tokenizer (``data``: its ``data.*`` section,
    ``glubench_tok``: :func:`glubench.data.cache.load_tokenizer`'s result).

    ``clean_up_tokenization_spaces`` is off so that decoding gives back the exact text.
    """
    from transformers import PreTrainedTokenizerFast  # optional: the [export] extra (transformers)

    kind = data["tokenizer"]
    if kind == "bytes":
        tok = bytes_tokenizer()
    elif kind == "bpe":
        tok = bpe_tokenizer(glubench_tok.tok)
    else:
        tok = gpt2_tokenizer(data.get("tokenizer_file"))
    special = {"bos_token": EOT, "eos_token": EOT} if tok.token_to_id(EOT) is not None else {}
    return PreTrainedTokenizerFast(tokenizer_object=tok, model_max_length=seq_len,
                                   clean_up_tokenization_spaces=False, **special)


def special_ids(hf_tok) -> dict[str, int | None]:
    """``bos_token_id``, ``eos_token_id``, ``pad_token_id`` of a ``transformers`` tokenizer (``None``: none)."""
    return {"bos_token_id": hf_tok.bos_token_id, "eos_token_id": hf_tok.eos_token_id,
            "pad_token_id": hf_tok.pad_token_id}
