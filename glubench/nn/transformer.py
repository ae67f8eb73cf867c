"""A decoder-only transformer language model whose FFN is any variant from :mod:`glubench.nn.ffn`.

Pre-norm blocks (norm -> causal self-attention -> residual; norm -> FFN -> residual), tied
input/output embeddings, no dropout by default.  The GPT-2 block (LayerNorm, learned absolute
positions) is the default; ``model.norm=rmsnorm model.pos=rope model.bias=false`` gives the
Llama-family block (RMSNorm, rotary positions).  The norm modules keep the names ``ln_*``
whichever norm they are, so hooks and checkpoints address them the same way.
Shapes: B = batch, T = sequence length, C = d_model, H = heads, V = vocab.
The sizes come from :class:`glubench.nn.config.ModelConfig` (torch-free, so configs validate fast).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from glubench.nn.config import ModelConfig
from glubench.nn.ffn import FeedForward, build_ffn

NORM_EPS = 1e-5
"""The eps of every norm, LayerNorm or RMSNorm (PyTorch's LayerNorm default)."""

ROPE_BASE = 10000.0


def build_norm(cfg: ModelConfig) -> nn.Module:
    """The norm ``cfg.norm`` over the last dimension C, gain initialised to 1.

    ``layernorm``: ``(x - mean x) / sqrt(var x + eps) · g (+ b if cfg.bias)`` (Ba et al. 2016).
    ``rmsnorm``: ``x / sqrt(mean(x²) + eps) · g``, gain only (Zhang & Sennrich 2019,
    arXiv 1910.07467, eq. 4).
    """
    if cfg.norm == "rmsnorm":
        return nn.RMSNorm(cfg.d_model, eps=NORM_EPS)
    return nn.LayerNorm(cfg.d_model, eps=NORM_EPS, bias=cfg.bias)


def rope_angles(seq_len: int, head_dim: int, base: float = ROPE_BASE) -> tuple[torch.Tensor, torch.Tensor]:
    """``cos(m·θ_i)`` and ``sin(m·θ_i)``, each ``(seq_len, head_dim/2)``, for positions m and
    ``θ_i = base^(-2i/head_dim)``, i = 0 .. head_dim/2 - 1 (Su et al. 2021, RoFormer,
    arXiv 2104.09864, eq. 34), computed in float32.
    """
    theta = base ** (-torch.arange(0, head_dim, 2, dtype=torch.float64) / head_dim)  # (C/H/2,)
    angles = torch.outer(torch.arange(seq_len, dtype=torch.float64), theta)  # (T, C/H/2)
    return angles.cos().float(), angles.sin().float()


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate each channel pair ``(x_2i, x_2i+1)`` of ``x (B, H, T, C/H)`` at position m by ``m·θ_i``.

    ``cos``, ``sin``: ``(T, C/H/2)`` from :func:`rope_angles`.  RoFormer eq. 34 (adjacent pairs):
    ``(x_2i cos - x_2i+1 sin, x_2i sin + x_2i+1 cos)``, so ``q_m · k_n`` depends on m - n only.
    Returns ``x``'s shape and dtype.
    """
    x1, x2 = x[..., 0::2], x[..., 1::2]  # (B, H, T, C/H/2) each
    out = torch.stack((x1 * cos - x2 * sin, x1 * sin + x2 * cos), dim=-1)  # (B, H, T, C/H/2, 2)
    return out.flatten(-2).type_as(x)  # (B, H, T, C/H)


class CausalSelfAttention(nn.Module):
    """Multi-head causal self-attention through ``F.scaled_dot_product_attention``.

    With ``rope`` (the ``(cos, sin)`` pair of :func:`rope_angles`, cut to T) queries and keys are
    rotated before the scores (:func:`apply_rope`).
    """

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.n_heads, self.dropout = cfg.n_heads, cfg.dropout
        self.qkv = nn.Linear(cfg.d_model, 3 * cfg.d_model, bias=cfg.bias)
        self.proj = nn.Linear(cfg.d_model, cfg.d_model, bias=cfg.bias)

    def forward(self, x: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor:
        B, T, C = x.shape
        q, k, v = self.qkv(x).split(C, dim=2)  # 3 × (B, T, C)
        q, k, v = (t.view(B, T, self.n_heads, C // self.n_heads).transpose(1, 2) for t in (q, k, v))
        if rope is not None:
            q, k = apply_rope(q, *rope), apply_rope(k, *rope)  # (B, H, T, C/H)
        y = F.scaled_dot_product_attention(  # (B, H, T, C/H)
            q, k, v, is_causal=True, dropout_p=self.dropout if self.training else 0.0
        )
        return self.proj(y.transpose(1, 2).reshape(B, T, C))  # (B, T, C)


class Block(nn.Module):
    """Pre-norm transformer block: ``x + attn(ln(x))`` then ``x + ffn(ln(x))``; ``ln`` is ``cfg.norm``."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.ln_attn = build_norm(cfg)
        self.attn = CausalSelfAttention(cfg)
        self.ln_ffn = build_norm(cfg)
        self.ffn: FeedForward = build_ffn(cfg.ffn, cfg.d_model, cfg.ffn_hidden, bias=cfg.bias)  # C -> hidden -> C
        self.drop = nn.Dropout(cfg.dropout)

    def forward(self, x: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor:
        x = x + self.drop(self.attn(self.ln_attn(x), rope))  # (B, T, C)
        return x + self.drop(self.ffn(self.ln_ffn(x)))  # (B, T, C)


class Transformer(nn.Module):
    """Decoder-only LM: token ids ``(B, T)`` -> next-token logits ``(B, T, V)``.

    The output projection is tied to the token embedding (Press & Wolf 2017).  ``pos_emb`` is
    ``None`` under ``pos=rope``; then ``rope_cos`` and ``rope_sin`` ``(seq_len, C/H/2)`` are
    non-persistent buffers (not in checkpoints, not parameters).
    """

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.tok_emb = nn.Embedding(cfg.vocab_size, cfg.d_model)
        self.pos_emb = nn.Embedding(cfg.seq_len, cfg.d_model) if cfg.pos == "learned" else None
        if cfg.pos == "rope":
            cos, sin = rope_angles(cfg.seq_len, cfg.head_dim)
            self.register_buffer("rope_cos", cos, persistent=False)
            self.register_buffer("rope_sin", sin, persistent=False)
        self.drop = nn.Dropout(cfg.dropout)
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.n_layers))
        self.ln_f = build_norm(cfg)
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
          any width.  The position embedding (``pos=learned``) uses the same std so that neither
          embedding dominates the sum; each block's pre-norm makes the small input scale harmless.
        * ``kaiming``: every ``nn.Linear`` weight ~ N(0, 2/fan_in) (He et al. 2015, "Delving
          Deep into Rectifiers", arXiv 1502.01852, eq. 10); embeddings N(0, init_std²).

        Norm gains (LayerNorm and RMSNorm) are 1 and LayerNorm biases 0 under every scheme.
        """
        cfg = self.cfg
        residual_out = {id(b.attn.proj.weight) for b in self.blocks} | {
            id(b.ffn.w_out.weight) for b in self.blocks
        }
        emb_std = 1.0 / math.sqrt(cfg.d_model) if cfg.init == "fan_in" else cfg.init_std
        for module in self.modules():
            if isinstance(module, (nn.LayerNorm, nn.RMSNorm)):
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
            ValueError: ``T > seq_len`` (there is no learned position or rotary angle beyond ``seq_len``).
        """
        B, T = idx.shape
        if T > self.cfg.seq_len:
            raise ValueError(f"input of T={T} tokens is longer than model.seq_len={self.cfg.seq_len}")
        x = self.tok_emb(idx)  # (B, T, C)
        rope = None
        if self.pos_emb is not None:
            x = x + self.pos_emb(torch.arange(T, device=idx.device))  # (B, T, C)
        else:
            rope = (self.rope_cos[:T], self.rope_sin[:T])  # 2 × (T, C/H/2)
        x = self.drop(x)
        for block in self.blocks:
            x = block(x, rope=rope)
        return self.lm_head(self.ln_f(x))  # (B, T, V)


@dataclass(frozen=True)
class ParamCounts:
    """Parameter counts of a :class:`Transformer`.

    ``total`` counts tied weights once; ``nonembedding`` excludes the token and (``pos=learned``)
    position embeddings; ``ffn_per_layer`` is one FFN; ``matmul`` is every weight used in a matmul
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
    emb = model.tok_emb.weight.numel() + (model.pos_emb.weight.numel() if model.pos_emb is not None else 0)
    ffn_layer = sum(p.numel() for p in model.blocks[0].ffn.parameters())
    matmul = sum(
        m.weight.numel() for m in model.modules() if isinstance(m, nn.Linear)
    )  # lm_head included: it is a real (B·T, C) x (C, V) matmul
    return ParamCounts(
        total=total,
        nonembedding=total - emb,
        ffn_per_layer=ffn_layer,
        ffn_total=ffn_layer * cfg.n_layers,
        matmul=matmul,
    )


def load_weights(model: Transformer, state_dict: dict[str, torch.Tensor]) -> Transformer:
    """Load the weights of a ``LanguageModel`` checkpoint's ``state_dict`` (keys ``model.*``; other keys, such as
    metric states, are ignored) into ``model``; returns it in eval mode.

    Raises:
        ValueError: the weights do not fit ``model.cfg`` (names the first missing and unexpected keys).
    """
    sd = {k.removeprefix("model."): v for k, v in state_dict.items() if k.startswith("model.")}
    missing, unexpected = model.load_state_dict(sd, strict=False)
    if missing or unexpected:
        raise ValueError(f"the checkpoint's weights do not fit its model config (missing: {missing[:3]}, "
                         f"unexpected: {unexpected[:3]})")
    return model.eval()
