"""A decoder-only transformer language model whose FFN is any variant from :mod:`glubench.nn.ffn`.

Pre-norm blocks (LayerNorm -> causal self-attention -> residual; LayerNorm -> FFN ->
residual), learned absolute positions, tied input/output embeddings, no dropout by
default.  Shapes: B = batch, T = sequence length, C = d_model, H = heads, V = vocab.
The sizes come from :class:`glubench.nn.config.ModelConfig` (torch-free, so configs validate fast).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from glubench.nn.config import ModelConfig, ffn_params
from glubench.nn.ffn import FeedForward, build_ffn


class CausalSelfAttention(nn.Module):
    """Multi-head causal self-attention through ``F.scaled_dot_product_attention``."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.n_heads, self.dropout = cfg.n_heads, cfg.dropout
        self.qkv = nn.Linear(cfg.d_model, 3 * cfg.d_model, bias=cfg.bias)
        self.proj = nn.Linear(cfg.d_model, cfg.d_model, bias=cfg.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, T, C = x.shape
        q, k, v = self.qkv(x).split(C, dim=2)  # 3 × (B, T, C)
        q, k, v = (t.view(B, T, self.n_heads, C // self.n_heads).transpose(1, 2) for t in (q, k, v))
        y = F.scaled_dot_product_attention(  # (B, H, T, C/H)
            q, k, v, is_causal=True, dropout_p=self.dropout if self.training else 0.0
        )
        return self.proj(y.transpose(1, 2).reshape(B, T, C))  # (B, T, C)


class Block(nn.Module):
    """Pre-norm transformer block: ``x + attn(ln(x))`` then ``x + ffn(ln(x))``."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.ln_attn = nn.LayerNorm(cfg.d_model, bias=cfg.bias)
        self.attn = CausalSelfAttention(cfg)
        self.ln_ffn = nn.LayerNorm(cfg.d_model, bias=cfg.bias)
        self.ffn: FeedForward = build_ffn(
            cfg.ffn, cfg.d_model, cfg.d_ff, bias=cfg.bias, multiple_of=cfg.ffn_multiple_of
        )
        self.drop = nn.Dropout(cfg.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.drop(self.attn(self.ln_attn(x)))  # (B, T, C)
        return x + self.drop(self.ffn(self.ln_ffn(x)))  # (B, T, C)


class Transformer(nn.Module):
    """Decoder-only LM: token ids ``(B, T)`` -> next-token logits ``(B, T, V)``.

    The output projection is tied to the token embedding (Press & Wolf 2017).
    """

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.tok_emb = nn.Embedding(cfg.vocab_size, cfg.d_model)
        self.pos_emb = nn.Embedding(cfg.seq_len, cfg.d_model)
        self.drop = nn.Dropout(cfg.dropout)
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.n_layers))
        self.ln_f = nn.LayerNorm(cfg.d_model, bias=cfg.bias)
        self.lm_head = nn.Linear(cfg.d_model, cfg.vocab_size, bias=False)
        self.lm_head.weight = self.tok_emb.weight
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Initialise every weight by ``cfg.init``; identical rules for every FFN variant.

        * ``scaled_normal`` / ``normal``: every matrix and embedding ~ N(0, init_std²);
          ``scaled_normal`` divides the std of the residual-output projections (attention
          ``proj`` and FFN ``w_out``) by sqrt(2·n_layers) (Radford et al. 2019, GPT-2 §2.3).
          A constant std is tuned for one width: GPT-2's 0.02 suits d_model 768, and at small
          width it starts a gated FFN, whose output is a product of two projections, far
          smaller than a non-gated one.
        * ``fan_in``: every ``nn.Linear`` weight ~ N(0, 1/fan_in), fan_in = ``in_features``:
          the default of Mesh TensorFlow's dense layers (variance scaling, scale 1, mode
          fan_in, normal), in which Shazeer 2020 trained.  So the FFN's ``W`` and ``V`` (and
          ``W1``) get std 1/sqrt(d_model), ``W2`` 1/sqrt(hidden width), attention's ``qkv`` and
          ``proj`` 1/sqrt(d_model).  The token embedding is tied to the output head, a
          ``d_model -> vocab`` projection whose fan-in is d_model, so it gets the same
          1/sqrt(d_model): logits start with unit variance (initial loss ≈ ln V + 1/2) for
          any width.  The position embedding uses the same std so that neither embedding
          dominates the sum; each block's pre-norm LayerNorm makes the small input scale harmless.
        * ``kaiming``: every ``nn.Linear`` weight ~ N(0, 2/fan_in) (He et al. 2015, "Delving
          Deep into Rectifiers", arXiv 1502.01852, eq. 10); embeddings N(0, init_std²).

        LayerNorm gains are 1 and biases 0 under every scheme.
        """
        cfg = self.cfg
        residual_out = {id(b.attn.proj.weight) for b in self.blocks} | {
            id(b.ffn.w_out.weight) for b in self.blocks
        }
        emb_std = 1.0 / math.sqrt(cfg.d_model) if cfg.init == "fan_in" else cfg.init_std
        for module in self.modules():
            if isinstance(module, nn.LayerNorm):
                module.reset_parameters()
            elif isinstance(module, nn.Embedding):
                nn.init.normal_(module.weight, std=emb_std)
            elif isinstance(module, nn.Linear) and module is not self.lm_head:
                if cfg.init in ("kaiming", "fan_in"):
                    gain = 2.0 if cfg.init == "kaiming" else 1.0
                    nn.init.normal_(module.weight, std=math.sqrt(gain / module.in_features))
                else:
                    std = cfg.init_std
                    if cfg.init == "scaled_normal" and id(module.weight) in residual_out:
                        std /= math.sqrt(2 * cfg.n_layers)
                    nn.init.normal_(module.weight, std=std)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        """``idx``: ``(B, T)`` int64 token ids, ``T <= seq_len`` -> logits ``(B, T, V)``.

        Raises:
            ValueError: ``T > seq_len`` (there is no learned position beyond ``seq_len``).
        """
        B, T = idx.shape
        if T > self.cfg.seq_len:
            raise ValueError(f"input of T={T} tokens is longer than model.seq_len={self.cfg.seq_len}")
        pos = torch.arange(T, device=idx.device)
        x = self.drop(self.tok_emb(idx) + self.pos_emb(pos))  # (B, T, C)
        for block in self.blocks:
            x = block(x)
        return self.lm_head(self.ln_f(x))  # (B, T, V)


@dataclass(frozen=True)
class ParamCounts:
    """Parameter counts of a :class:`Transformer`.

    ``total`` counts tied weights once; ``nonembedding`` excludes the token and position
    embeddings; ``ffn_per_layer`` is one FFN; ``matmul`` is every weight used in a matmul
    per token (all block Linears plus the tied ``d_model × vocab`` output projection) and
    feeds :func:`glubench.nn.flops.flops_per_token`.
    """

    total: int
    nonembedding: int
    ffn_per_layer: int
    ffn_total: int
    matmul: int


def count_params(model: Transformer) -> ParamCounts:
    """Count parameters from the module's real tensors (tied weights once)."""
    cfg = model.cfg
    total = sum(p.numel() for p in model.parameters())  # parameters() de-duplicates ties
    emb = model.tok_emb.weight.numel() + model.pos_emb.weight.numel()
    ffn_layer = sum(p.numel() for p in model.blocks[0].ffn.parameters())
    matmul = sum(
        m.weight.numel() for m in model.modules() if isinstance(m, nn.Linear)
    )  # lm_head included: it is a real (B·T, C) x (C, V) matmul
    expected = ffn_params(cfg.d_model, cfg.ffn_hidden, cfg.gated, cfg.bias)
    assert ffn_layer == expected, (ffn_layer, expected)
    return ParamCounts(
        total=total,
        nonembedding=total - emb,
        ffn_per_layer=ffn_layer,
        ffn_total=ffn_layer * cfg.n_layers,
        matmul=matmul,
    )
