"""A glubench language model as a Hugging Face ``transformers`` model (``trust_remote_code=True``).

``glubench-export`` writes this file into an export folder, registered in ``config.json`` through
``auto_map``, when no stock ``transformers`` class computes the trained model exactly (a gated FFN in
the GPT-2-style block, a non-gated one in the Llama-style block, ELU, mixed norm/position choices).
It depends on ``torch`` and ``transformers`` only, so the folder works without glubench installed.

The model (Shapes: B batch, T new tokens, P cached tokens, C = d_model, H heads, D = C/H, V vocab):
pre-norm blocks ``x + attn(norm(x))`` then ``x + ffn(norm(x))``, a final norm and an output
projection tied to the token embedding (Press & Wolf 2017).

* norm: ``layernorm`` (Ba et al. 2016; its bias only with ``bias``) or ``rmsnorm``
  ``x / sqrt(mean(x²) + eps) · g`` (Zhang & Sennrich 2019, arXiv 1910.07467, eq. 4).
* positions: ``learned`` (an embedding added to the token embedding) or ``rope``: each adjacent
  channel pair ``(x_2i, x_2i+1)`` of every query and key head at position m is rotated by
  ``m·θ_i``, ``θ_i = base^(-2i/D)`` (Su et al. 2021, RoFormer, arXiv 2104.09864, eq. 34); the angles
  are computed in float64 and rounded to float32.
* FFN (Shazeer 2020, "GLU Variants Improve Transformer", arXiv 2002.05202, eqs. 1 and 5-6):
  non-gated ``act(x W1) W2``; gated ``(act(x W) ⊗ x V) W2``, where ``w_in`` stacks W (rows
  ``[0, h)``, the gate) over V (rows ``[h, 2h)``, the value).

The forward pass fills a ``transformers`` ``Cache`` when generation passes one, so ``generate()``
decodes one token per step; positions past ``seq_len`` have no learned embedding, as in training.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from transformers import GenerationMixin, PretrainedConfig, PreTrainedModel
from transformers.modeling_outputs import CausalLMOutputWithPast


def _gelu(x: torch.Tensor) -> torch.Tensor:
    return F.gelu(x, approximate="none")  # the erf form, x·Φ(x) (Hendrycks & Gimpel 2016)


def _identity(x: torch.Tensor) -> torch.Tensor:
    return x


def _elu(x: torch.Tensor) -> torch.Tensor:
    return F.elu(x, alpha=1.0)


def _relu2(x: torch.Tensor) -> torch.Tensor:
    return F.relu(x).square()  # So et al. 2021, Primer, arXiv 2109.08668


ACTIVATIONS = {"relu": F.relu, "gelu": _gelu, "silu": F.silu, "sigmoid": torch.sigmoid, "identity": _identity,
               "mish": F.mish, "elu": _elu, "relu2": _relu2}
"""``config.activation`` -> function."""

# transformers 5 renamed the cache argument and output field from ``past_key_values`` to ``cache``.
_CACHE_FIELD = "cache" if "cache" in CausalLMOutputWithPast.__dataclass_fields__ else "past_key_values"


class GlubenchConfig(PretrainedConfig):
    """The sizes and choices of a glubench model (``model.*`` of its checkpoint); ``ffn_hidden`` is the
    FFN width after glubench's parameter matching, ``gated`` and ``activation`` describe the FFN."""

    model_type = "glubench"
    attribute_map = {"hidden_size": "d_model", "num_hidden_layers": "n_layers", "num_attention_heads": "n_heads",
                     "max_position_embeddings": "seq_len"}

    def __init__(self, vocab_size: int = 256, d_model: int = 128, n_layers: int = 4, n_heads: int = 4,
                 seq_len: int = 128, ffn_hidden: int = 512, gated: bool = False, activation: str = "relu",
                 bias: bool = False, norm: str = "layernorm", pos: str = "learned", norm_eps: float = 1e-5,
                 rope_base: float = 10000.0, dropout: float = 0.0, **kwargs) -> None:
        self.vocab_size, self.d_model, self.n_layers, self.n_heads = vocab_size, d_model, n_layers, n_heads
        self.seq_len, self.ffn_hidden, self.gated, self.activation = seq_len, ffn_hidden, gated, activation
        self.bias, self.norm, self.pos, self.norm_eps = bias, norm, pos, norm_eps
        self.rope_base, self.dropout = rope_base, dropout
        kwargs.setdefault("tie_word_embeddings", True)
        super().__init__(**kwargs)


def rope_angles(positions: torch.Tensor, head_dim: int, base: float) -> tuple[torch.Tensor, torch.Tensor]:
    """``cos`` and ``sin`` of ``m·θ_i`` for positions ``(B, T)``: each ``(B, 1, T, D/2)`` float32."""
    theta = base ** (-torch.arange(0, head_dim, 2, dtype=torch.float64, device=positions.device) / head_dim)
    angles = positions.to(torch.float64)[..., None] * theta  # (B, T, D/2)
    return angles.cos().float()[:, None], angles.sin().float()[:, None]


def rotate_pairs(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate each channel pair ``(x_2i, x_2i+1)`` of ``x (B, H, T, D)``: RoFormer eq. 34."""
    x1, x2 = x[..., 0::2], x[..., 1::2]  # (B, H, T, D/2) each
    return torch.stack((x1 * cos - x2 * sin, x1 * sin + x2 * cos), dim=-1).flatten(-2).type_as(x)


def build_norm(config: GlubenchConfig) -> nn.Module:
    if config.norm == "rmsnorm":
        return nn.RMSNorm(config.d_model, eps=config.norm_eps)
    return nn.LayerNorm(config.d_model, eps=config.norm_eps, bias=config.bias)


def attention_mask_for(t: int, past: int, attention_mask: torch.Tensor | None, device) -> torch.Tensor | None:
    """Boolean mask ``(B or 1, 1, T, P+T)`` (True: attend) for ``t`` new tokens after ``past`` cached ones;
    ``None`` when plain causal attention is exact (no padding and no cache, or one new token).

    ``attention_mask (B, P+T)`` marks padding with 0.  Each token also attends to itself, so that a padded
    query row is never empty (its output is ignored, but an empty row would give NaN).
    """
    padded = attention_mask is not None and not bool(attention_mask.all())
    if not padded and (past == 0 or t == 1):
        return None
    keys = torch.arange(past + t, device=device)
    queries = torch.arange(past, past + t, device=device)[:, None]
    mask = (keys <= queries)[None, None]  # (1, 1, T, P+T)
    if padded:
        mask = (mask & attention_mask[:, None, None, :].bool()) | (keys == queries)[None, None]
    return mask


class GlubenchAttention(nn.Module):
    """Multi-head causal self-attention; ``qkv`` stacks the query, key and value projections."""

    def __init__(self, config: GlubenchConfig, layer_idx: int) -> None:
        super().__init__()
        self.n_heads, self.layer_idx, self.dropout = config.n_heads, layer_idx, config.dropout
        self.qkv = nn.Linear(config.d_model, 3 * config.d_model, bias=config.bias)
        self.proj = nn.Linear(config.d_model, config.d_model, bias=config.bias)

    def forward(self, x: torch.Tensor, rope, mask: torch.Tensor | None, cache) -> torch.Tensor:
        b, t, c = x.shape
        q, k, v = (z.view(b, t, self.n_heads, c // self.n_heads).transpose(1, 2)
                   for z in self.qkv(x).split(c, dim=2))  # 3 × (B, H, T, D)
        if rope is not None:
            q, k = rotate_pairs(q, *rope), rotate_pairs(k, *rope)
        if cache is not None:
            k, v = cache.update(k, v, self.layer_idx)  # (B, H, P+T, D)
        causal = mask is None and t > 1  # attention_mask_for gives a mask whenever cached keys precede t > 1 queries
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=causal,
                                           dropout_p=self.dropout if self.training else 0.0)  # (B, H, T, D)
        return self.proj(y.transpose(1, 2).reshape(b, t, c))


class GlubenchFFN(nn.Module):
    """``act(x W1) W2`` or, gated, ``(act(x W) ⊗ x V) W2``: ``(..., C) -> (..., C)``."""

    def __init__(self, config: GlubenchConfig) -> None:
        super().__init__()
        self.gated, self.act = config.gated, ACTIVATIONS[config.activation]
        n_in = 2 * config.ffn_hidden if config.gated else config.ffn_hidden
        self.w_in = nn.Linear(config.d_model, n_in, bias=config.bias)
        self.w_out = nn.Linear(config.ffn_hidden, config.d_model, bias=config.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.gated:
            return self.w_out(self.act(self.w_in(x)))
        gate, value = self.w_in(x).chunk(2, dim=-1)
        return self.w_out(self.act(gate) * value)


class GlubenchBlock(nn.Module):
    def __init__(self, config: GlubenchConfig, layer_idx: int) -> None:
        super().__init__()
        self.ln_attn, self.attn = build_norm(config), GlubenchAttention(config, layer_idx)
        self.ln_ffn, self.ffn = build_norm(config), GlubenchFFN(config)
        self.drop = nn.Dropout(config.dropout)

    def forward(self, x: torch.Tensor, rope, mask, cache) -> torch.Tensor:
        x = x + self.drop(self.attn(self.ln_attn(x), rope, mask, cache))
        return x + self.drop(self.ffn(self.ln_ffn(x)))


class GlubenchPreTrainedModel(PreTrainedModel):
    config_class = GlubenchConfig
    base_model_prefix = "model"
    _no_split_modules = ["GlubenchBlock"]

    def _init_weights(self, module: nn.Module) -> None:
        """Only for weights a checkpoint does not hold (there are none in an export): N(0, 0.02²), zero biases."""
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, std=0.02)
        if isinstance(module, nn.Linear) and module.bias is not None:
            nn.init.zeros_(module.bias)
        if isinstance(module, (nn.LayerNorm, nn.RMSNorm)):
            module.reset_parameters()


class GlubenchModel(GlubenchPreTrainedModel):
    """Token ids ``(B, T)`` -> final-norm hidden states ``(B, T, C)``."""

    def __init__(self, config: GlubenchConfig) -> None:
        super().__init__(config)
        self.tok_emb = nn.Embedding(config.vocab_size, config.d_model)
        self.pos_emb = nn.Embedding(config.seq_len, config.d_model) if config.pos == "learned" else None
        self.drop = nn.Dropout(config.dropout)
        self.blocks = nn.ModuleList(GlubenchBlock(config, i) for i in range(config.n_layers))
        self.ln_f = build_norm(config)
        self.post_init()

    def get_input_embeddings(self) -> nn.Embedding:
        return self.tok_emb

    def set_input_embeddings(self, value: nn.Embedding) -> None:
        self.tok_emb = value

    def forward(self, input_ids=None, attention_mask=None, position_ids=None, cache=None, inputs_embeds=None):
        x = self.tok_emb(input_ids) if inputs_embeds is None else inputs_embeds  # (B, T, C)
        b, t = x.shape[:2]
        past = cache.get_seq_length() if cache is not None else 0
        if position_ids is None:
            position_ids = torch.arange(past, past + t, device=x.device)[None].expand(b, t)
        rope = None
        if self.pos_emb is not None:
            x = x + self.pos_emb(position_ids)
        else:
            rope = rope_angles(position_ids, self.config.d_model // self.config.n_heads, self.config.rope_base)
        mask = attention_mask_for(t, past, attention_mask, x.device)
        x = self.drop(x)
        for block in self.blocks:
            x = block(x, rope, mask, cache)
        return self.ln_f(x)


class GlubenchForCausalLM(GlubenchPreTrainedModel, GenerationMixin):
    """:class:`GlubenchModel` plus the output projection tied to the token embedding: logits ``(B, T, V)``."""

    _tied_weights_keys = {"lm_head.weight": "model.tok_emb.weight"}

    def __init__(self, config: GlubenchConfig) -> None:
        super().__init__(config)
        self.model = GlubenchModel(config)
        self.lm_head = nn.Linear(config.d_model, config.vocab_size, bias=False)
        self.post_init()

    def get_input_embeddings(self) -> nn.Embedding:
        return self.model.tok_emb

    def set_input_embeddings(self, value: nn.Embedding) -> None:
        self.model.tok_emb = value

    def get_output_embeddings(self) -> nn.Linear:
        return self.lm_head

    def set_output_embeddings(self, value: nn.Linear) -> None:
        self.lm_head = value

    def forward(self, input_ids=None, attention_mask=None, position_ids=None, cache=None, past_key_values=None,
                inputs_embeds=None, labels=None, use_cache=None, **kwargs) -> CausalLMOutputWithPast:
        """Logits ``(B, T, V)``; with ``labels (B, T)``, also the mean next-token cross-entropy over labels != -100.

        ``cache`` (``past_key_values`` before transformers 5) is updated in place with this call's keys and
        values; other keyword arguments of ``generate()`` are accepted and ignored.
        """
        cache = cache if cache is not None else past_key_values
        hidden = self.model(input_ids, attention_mask, position_ids, cache, inputs_embeds)
        logits = self.lm_head(hidden)
        loss = None
        if labels is not None:
            loss = F.cross_entropy(logits[:, :-1].flatten(0, 1).float(), labels[:, 1:].flatten(), ignore_index=-100)
        return CausalLMOutputWithPast(loss=loss, logits=logits, **{_CACHE_FIELD: cache})
