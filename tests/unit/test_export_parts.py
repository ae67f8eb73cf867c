"""The export's pieces without a checkpoint: the rotary layout change, the exported tokenizers, the standalone
model's cache and padding, the sampling loop, the harness summary, and the modeling file's imports."""

import ast
from pathlib import Path

import pytest
import torch

from glubench.nn.sampling import sample
from glubench.nn.transformer import apply_rope, rope_angles

pytest.importorskip("transformers")

REPO = Path(__file__).resolve().parents[2]


def rotate_half_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotary embedding as Llama applies it: channel i turns with channel i + D/2 by θ_i, written from its formula
    ``x·cos + rotate_half(x)·sin`` with ``rotate_half(x) = (-x[D/2:], x[:D/2])`` and the angles repeated."""
    half = x.shape[-1] // 2
    cos, sin = torch.cat((cos, cos), -1), torch.cat((sin, sin), -1)
    return x * cos + torch.cat((-x[..., half:], x[..., :half]), -1) * sin


def test_reordering_query_and_key_rows_turns_adjacent_pair_rope_into_rotate_half():
    from glubench.export.convert import pairs_to_halves

    d = 8
    perm = pairs_to_halves(d)
    assert perm.tolist() == [0, 2, 4, 6, 1, 3, 5, 7]
    gen = torch.Generator().manual_seed(0)
    q, k = torch.randn(2, 3, 5, d, generator=gen), torch.randn(2, 3, 5, d, generator=gen)  # (B, H, T, D)
    cos, sin = rope_angles(5, d)
    # the same rotation, channels in the new order ...
    assert torch.allclose(apply_rope(q, cos, sin)[..., perm], rotate_half_rope(q[..., perm], cos, sin), atol=1e-6)
    # ... hence the same attention scores
    ours = apply_rope(q, cos, sin) @ apply_rope(k, cos, sin).transpose(-1, -2)
    theirs = rotate_half_rope(q[..., perm], cos, sin) @ rotate_half_rope(k[..., perm], cos, sin).transpose(-1, -2)
    assert torch.allclose(ours, theirs, atol=1e-5)


def test_bytes_tokenizer_is_utf8_and_names_the_free_byte_eot():
    from transformers import PreTrainedTokenizerFast

    from glubench.export.tokenizer import EOT, bytes_tokenizer

    tok = PreTrainedTokenizerFast(tokenizer_object=bytes_tokenizer(), clean_up_tokenization_spaces=False)
    text = "".join(chr(c) for c in range(1, 0x2FF)) + " Ünïcödé ☃ 𝔘 \t\r\n  end"
    ids = tok(text, add_special_tokens=False)["input_ids"]
    assert ids == list(text.encode("utf-8")) and 255 not in ids  # 0xFF is never a UTF-8 byte
    assert tok.decode(ids) == text
    assert len(tok) == 256 and tok.convert_tokens_to_ids(EOT) == 255


def test_bpe_tokenizer_keeps_every_id_and_names_the_free_byte_eot():
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    from glubench.export.tokenizer import EOT, bpe_tokenizer

    trained = Tokenizer(models.BPE())
    trained.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    trained.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=300, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  show_progress=False)
    trained.train_from_iterator(["the cat sat on the mat, naïvely"] * 50, trainer=trainer)
    exported = bpe_tokenizer(trained)
    text = "the mat sat on a cat: ÿ ☃"
    assert exported.encode(text).ids == trained.encode(text).ids
    assert exported.get_vocab_size() == trained.get_vocab_size()
    assert exported.token_to_id(EOT) == trained.token_to_id("ÿ")  # byte 0xFF's symbol


def tiny_remote_model(pos: str = "learned"):
    from glubench.export.modeling_glubench import GlubenchConfig, GlubenchForCausalLM

    torch.manual_seed(0)
    cfg = GlubenchConfig(vocab_size=50, d_model=16, n_layers=2, n_heads=2, seq_len=24, ffn_hidden=24, gated=True,
                         activation="silu", pos=pos, norm="rmsnorm" if pos == "rope" else "layernorm")
    return GlubenchForCausalLM(cfg).eval()


@pytest.mark.parametrize("pos", ["learned", "rope"])
def test_remote_model_caches_and_pads_like_a_full_recompute(pos):
    model = tiny_remote_model(pos)
    prompt = torch.tensor([[5, 7, 9, 11]])
    with torch.no_grad():
        cached = model.generate(prompt, max_new_tokens=10, do_sample=False)
        full = model.generate(prompt, max_new_tokens=10, do_sample=False, use_cache=False)
        ids = prompt
        for _ in range(10):  # greedy by hand, the whole sequence each step
            ids = torch.cat((ids, model(ids).logits[:, -1:].argmax(-1)), dim=1)
        # a left-padded batch: the padded row continues exactly as it does alone
        batch = torch.tensor([[0, 0, 3, 4], [5, 7, 9, 11]])
        mask = torch.tensor([[0, 0, 1, 1], [1, 1, 1, 1]])
        padded = model.generate(batch, attention_mask=mask, max_new_tokens=6, do_sample=False, pad_token_id=0)
        alone = model.generate(torch.tensor([[3, 4]]), max_new_tokens=6, do_sample=False)
    assert cached.tolist() == full.tolist() == ids.tolist()
    assert padded[0, -6:].tolist() == alone[0, -6:].tolist() and padded[1].tolist() == cached[0, :10].tolist()


def test_sample_crops_the_context_and_greedy_is_the_argmax():
    vocab, seen = 7, []

    def logits_fn(idx):  # the next token is (last + 1) mod vocab, with a margin
        seen.append(idx.shape[1])
        return torch.nn.functional.one_hot((idx + 1) % vocab, vocab).float() * 5

    out = sample(logits_fn, torch.tensor([[3]]), max_new_tokens=9, seq_len=4, temperature=0)
    assert out.tolist() == [[3, 4, 5, 6, 0, 1, 2, 3, 4, 5]] and seen == [1, 2, 3, 4, 4, 4, 4, 4, 4]
    gen = torch.Generator().manual_seed(0)
    top1 = sample(logits_fn, torch.tensor([[3], [1]]), 5, 4, temperature=2.0, top_k=1, generator=gen)
    assert top1[:, 1:].tolist() == [[4, 5, 6, 0, 1], [2, 3, 4, 5, 6]]  # top_k=1 keeps only the argmax
    with pytest.raises(ValueError, match=r"^top_k=0 must be a positive integer or null"):
        sample(logits_fn, torch.tensor([[3]]), 2, 4, top_k=0)


def test_harness_summary_names_metrics_without_filters_and_stderrs():
    from glubench.export.harness import summarize

    results = {"results": {"hellaswag": {"alias": "hellaswag", "acc,none": 0.25, "acc_stderr,none": 0.01,
                                         "acc_norm,none": 0.5},
                           "gsm8k": {"exact_match,strict-match": 0.1, "exact_match_stderr,strict-match": "N/A"}}}
    assert summarize(results) == {"hellaswag": {"acc": 0.25, "acc_norm": 0.5},
                                  "gsm8k": {"exact_match/strict-match": 0.1}}


def test_modeling_file_depends_on_torch_and_transformers_only():
    src = (REPO / "glubench" / "export" / "modeling_glubench.py").read_text()
    roots = set()
    for node in ast.walk(ast.parse(src)):
        if isinstance(node, ast.Import):
            roots |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            roots.add(node.module.split(".")[0])
    assert roots <= {"__future__", "torch", "transformers"}, roots
