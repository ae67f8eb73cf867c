"""The models the contenders train, all at the benchmark's shapes and seeded alike: glubench's
:class:`~glubench.nn.transformer.Transformer` (fused or split gated FFN) and its Hugging Face peers."""

from __future__ import annotations

import torch
from torch import nn

from glubench.bench.config import HF_PEERS, BenchConfig
from glubench.nn.ffn import GatedMLP
from glubench.nn.transformer import Transformer


class SplitGatedMLP(nn.Module):
    """A gated FFN with ``W`` and ``V`` as two separate Linears (the unfused reference).

    Same weights and output as the fused :class:`GatedMLP` it is built from; ``x`` is ``(..., d_model)``.
    """

    def __init__(self, fused: GatedMLP) -> None:
        super().__init__()
        self.act, self.w_out = fused.act, fused.w_out
        self.w_gate = nn.Linear(fused.d_model, fused.hidden, bias=False)
        self.w_value = nn.Linear(fused.d_model, fused.hidden, bias=False)
        with torch.no_grad():
            self.w_gate.weight.copy_(fused.gate_weight)
            self.w_value.weight.copy_(fused.value_weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.w_out(self.act(self.w_gate(x)) * self.w_value(x))


def glubench_model(cfg: BenchConfig, ffn: str, split: bool = False) -> nn.Module:
    """glubench's :class:`Transformer` for ``ffn`` at the benchmark's shapes, seeded with ``cfg.seed``;
    ``split``: its gated FFNs as :class:`SplitGatedMLP` (same weights)."""
    torch.manual_seed(cfg.seed)
    model = Transformer(cfg.model_config(ffn))
    if split:
        for block in model.blocks:
            block.ffn = SplitGatedMLP(block.ffn)
    return model


def hf_model(cfg: BenchConfig, peer: str) -> nn.Module:
    """The Hugging Face peer at glubench's shapes: GPT-2 (exact-erf GELU, d_ff = 4·d) or Llama (SwiGLU), with
    tied output heads and SDPA attention like glubench (what stays different: see BENCHMARKS.md).

    Raises:
        ImportError: transformers is not installed (the ``[bench]`` extra).
        ValueError: ``peer`` is not a value of :data:`HF_PEERS`.
    """
    import transformers as tf  # optional: the [bench] extra

    m = cfg.model
    torch.manual_seed(cfg.seed)
    if peer == "hf-gpt2":
        conf = tf.GPT2Config(vocab_size=m.vocab_size, n_positions=m.seq_len, n_embd=m.d_model,
                             n_layer=m.n_layers, n_head=m.n_heads, n_inner=4 * m.d_model,
                             activation_function="gelu", resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,
                             use_cache=False, tie_word_embeddings=True)
        return tf.GPT2LMHeadModel._from_config(conf, attn_implementation="sdpa")
    if peer != "hf-llama":
        raise ValueError(f"unknown Hugging Face peer {peer!r}; valid: {', '.join(HF_PEERS.values())}")
    conf = tf.LlamaConfig(vocab_size=m.vocab_size, hidden_size=m.d_model,
                          intermediate_size=cfg.model_config("swiglu").ffn_hidden,
                          num_hidden_layers=m.n_layers, num_attention_heads=m.n_heads,
                          num_key_value_heads=m.n_heads, max_position_embeddings=m.seq_len,
                          hidden_act="silu", attention_bias=False, mlp_bias=False, use_cache=False,
                          tie_word_embeddings=True)
    return tf.LlamaForCausalLM._from_config(conf, attn_implementation="sdpa")


class HFLogits(nn.Module):
    """Adapts a Hugging Face causal LM to glubench's interface: ``idx (B, T) int64 -> logits (B, T, V)``."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        return self.model(input_ids=idx, use_cache=False).logits
