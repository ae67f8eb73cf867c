"""Which Hugging Face class computes a glubench model exactly, and its weights in that class's layout.

Three targets, chosen by :func:`plan_export` from the checkpoint's ``model.*``:

* ``gpt2`` (``GPT2LMHeadModel``): LayerNorm, learned positions and a non-gated FFN whose activation
  ``transformers`` has under the same definition (relu, exact-erf gelu, silu, mish, squared relu).
  GPT-2 always has biases: ``model.bias=false`` exports them as zeros.  Its ``Conv1D`` layers store
  weights as ``(in, out)``, the transpose of ``nn.Linear``'s.
* ``llama`` (``LlamaForCausalLM``): RMSNorm, rotary positions and a gated FFN; Llama's MLP computes
  ``down(act(gate(x)) · up(x))``, glubench's ``(act(x W) ⊗ x V) W2`` with ``gate = W`` (rows
  ``[0, h)`` of ``w_in``), ``up = V`` (rows ``[h, 2h)``); silu -> SwiGLU, gelu -> GEGLU, relu ->
  ReGLU, sigmoid -> GLU, linear -> Bilinear, mish -> MishGLU.  glubench rotates adjacent channel
  pairs ``(2i, 2i+1)`` by ``θ_i`` (RoFormer eq. 34); Llama rotates channel ``i`` with ``i + D/2``
  (its ``rotate_half``) by the same ``θ_i``.  So the rows of each head's query and key projections are
  reordered ``[0, 2, 4, …, D-2, 1, 3, …, D-1]``: Llama's channel ``i`` is glubench's ``2i`` and its
  ``i + D/2`` is glubench's ``2i+1``, which turns one rotation into the other; the scores ``q·k`` are
  sums over the same products, so they do not change.  ``model.bias=true`` maps to Llama's
  ``attention_bias`` and ``mlp_bias``.
* ``glubench`` (``modeling_glubench.GlubenchForCausalLM``, remote code): everything else, with
  glubench's own parameter names.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch

from glubench.core.errors import ExportError
from glubench.export.modeling_glubench import ACTIVATIONS as REMOTE_ACTIVATIONS
from glubench.nn.config import ModelConfig, get_variant
from glubench.nn.transformer import NORM_EPS, ROPE_BASE

GPT2_ACTIVATIONS = {"relu": "relu", "gelu": "gelu", "silu": "silu", "mish": "mish", "relu2": "relu2"}
"""glubench activation -> ``transformers`` ``ACT2FN`` name of the same function (GPT-2's ``activation_function``)."""

LLAMA_ACTIVATIONS = {"relu": "relu", "gelu": "gelu", "silu": "silu", "sigmoid": "sigmoid", "identity": "linear",
                     "mish": "mish"}
"""glubench gate activation -> Llama's ``hidden_act``."""

HANDLED_KEYS = frozenset({"vocab_size", "d_model", "n_layers", "n_heads", "seq_len", "ffn", "d_ff", "bias",
                          "ffn_multiple_of", "init", "init_std", "dropout", "norm", "pos", "compile"})
"""``model.*`` keys whose every value the export represents (``init*`` and ``compile`` do not change the function;
``d_ff`` and ``ffn_multiple_of`` only set the FFN width, which is exported)."""


@dataclass(frozen=True)
class ExportPlan:
    """``arch``: ``gpt2``, ``llama`` or ``glubench``; ``activation``: its name in that class's config."""

    arch: str
    activation: str

    @property
    def remote_code(self) -> bool:
        """Whether loading needs ``trust_remote_code=True`` (the folder's own modeling file)."""
        return self.arch == "glubench"


def model_config(model: dict) -> ModelConfig:
    """The checkpoint's ``model.*`` as a :class:`ModelConfig`, refusing a setting the export does not handle.

    Raises:
        ExportError: a key the export does not know set to a non-default value (a checkpoint from a newer
            glubench), an activation the exported model lacks, or values ModelConfig rejects.
    """
    defaults = {f.name: f.default for f in dataclasses.fields(ModelConfig)}
    for key, value in model.items():
        if key not in HANDLED_KEYS and value != defaults.get(key, object()):
            raise ExportError(f"model.{key}={value!r}: glubench-export cannot represent this setting exactly "
                              f"(it handles {', '.join(sorted(HANDLED_KEYS))})")
    try:
        cfg = ModelConfig(**{k: v for k, v in model.items() if k in defaults})
    except ValueError as e:
        raise ExportError(f"the checkpoint's model config is invalid: {e}") from None
    act = get_variant(cfg.ffn).activation
    if act not in REMOTE_ACTIVATIONS:
        raise ExportError(f"model.ffn={cfg.ffn!r}: its activation {act!r} has no exact counterpart in the exported "
                          f"model (known: {', '.join(REMOTE_ACTIVATIONS)})")
    return cfg


def plan_export(cfg: ModelConfig) -> ExportPlan:
    """The stock class that computes ``cfg`` exactly, else glubench's own modeling file (module docstring)."""
    act = get_variant(cfg.ffn).activation
    if cfg.norm == "layernorm" and cfg.pos == "learned" and not cfg.gated and act in GPT2_ACTIVATIONS:
        return ExportPlan("gpt2", GPT2_ACTIVATIONS[act])
    if cfg.norm == "rmsnorm" and cfg.pos == "rope" and cfg.gated and act in LLAMA_ACTIVATIONS:
        return ExportPlan("llama", LLAMA_ACTIVATIONS[act])
    return ExportPlan("glubench", act)


def hf_config(cfg: ModelConfig, plan: ExportPlan, special: dict[str, int | None]):
    """The ``transformers`` config of ``plan`` for ``cfg``; ``special``: ``bos_token_id``, ``eos_token_id``,
    ``pad_token_id`` (``None`` when the tokenizer has none)."""
    common = dict(vocab_size=cfg.vocab_size, tie_word_embeddings=True, dtype="float32", **special)
    if plan.arch == "gpt2":
        from transformers import GPT2Config  # optional: the [export] extra (transformers)

        return GPT2Config(n_positions=cfg.seq_len, n_embd=cfg.d_model, n_layer=cfg.n_layers, n_head=cfg.n_heads,
                          n_inner=cfg.ffn_hidden, activation_function=plan.activation, resid_pdrop=cfg.dropout,
                          embd_pdrop=cfg.dropout, attn_pdrop=cfg.dropout, layer_norm_epsilon=NORM_EPS, **common)
    if plan.arch == "llama":
        from transformers import LlamaConfig  # optional: the [export] extra (transformers)

        return LlamaConfig(hidden_size=cfg.d_model, intermediate_size=cfg.ffn_hidden, num_hidden_layers=cfg.n_layers,
                           num_attention_heads=cfg.n_heads, num_key_value_heads=cfg.n_heads, head_dim=cfg.head_dim,
                           hidden_act=plan.activation, max_position_embeddings=cfg.seq_len, rms_norm_eps=NORM_EPS,
                           rope_parameters={"rope_type": "default", "rope_theta": ROPE_BASE},
                           attention_bias=cfg.bias, mlp_bias=cfg.bias, attention_dropout=cfg.dropout, **common)
    from glubench.export.modeling_glubench import GlubenchConfig  # optional: the [export] extra (transformers)

    return GlubenchConfig(d_model=cfg.d_model, n_layers=cfg.n_layers, n_heads=cfg.n_heads, seq_len=cfg.seq_len,
                          ffn_hidden=cfg.ffn_hidden, gated=cfg.gated, activation=plan.activation, bias=cfg.bias,
                          norm=cfg.norm, pos=cfg.pos, norm_eps=NORM_EPS, rope_base=ROPE_BASE, dropout=cfg.dropout,
                          **common)


def pairs_to_halves(d: int) -> torch.Tensor:
    """Row order ``[0, 2, …, d-2, 1, 3, …, d-1]`` that takes adjacent-pair rotary channels to rotate-half ones."""
    return torch.cat((torch.arange(0, d, 2), torch.arange(1, d, 2)))


def _gpt2_weights(sd: dict[str, torch.Tensor], cfg: ModelConfig) -> dict[str, torch.Tensor]:
    def bias(key: str, n: int) -> torch.Tensor:
        return sd[key] if key in sd else torch.zeros(n, dtype=sd["tok_emb.weight"].dtype)

    out = {"transformer.wte.weight": sd["tok_emb.weight"], "transformer.wpe.weight": sd["pos_emb.weight"],
           "transformer.ln_f.weight": sd["ln_f.weight"], "transformer.ln_f.bias": bias("ln_f.bias", cfg.d_model)}
    for i in range(cfg.n_layers):
        g, h = f"blocks.{i}.", f"transformer.h.{i}."
        for ours, theirs in (("ln_attn", "ln_1"), ("ln_ffn", "ln_2")):
            out[f"{h}{theirs}.weight"] = sd[f"{g}{ours}.weight"]
            out[f"{h}{theirs}.bias"] = bias(f"{g}{ours}.bias", cfg.d_model)
        for ours, theirs in (("attn.qkv", "attn.c_attn"), ("attn.proj", "attn.c_proj"), ("ffn.w_in", "mlp.c_fc"),
                             ("ffn.w_out", "mlp.c_proj")):
            w = sd[f"{g}{ours}.weight"]  # (out, in)
            out[f"{h}{theirs}.weight"] = w.t().contiguous()  # Conv1D: (in, out)
            out[f"{h}{theirs}.bias"] = bias(f"{g}{ours}.bias", w.shape[0])
    return out


def _llama_weights(sd: dict[str, torch.Tensor], cfg: ModelConfig) -> dict[str, torch.Tensor]:
    c, d, h = cfg.d_model, cfg.head_dim, cfg.ffn_hidden
    perm = torch.cat([head * d + pairs_to_halves(d) for head in range(cfg.n_heads)])  # (C,) within each head
    out = {"model.embed_tokens.weight": sd["tok_emb.weight"], "model.norm.weight": sd["ln_f.weight"]}
    for i in range(cfg.n_layers):
        g, m = f"blocks.{i}.", f"model.layers.{i}."
        out[f"{m}input_layernorm.weight"] = sd[f"{g}ln_attn.weight"]
        out[f"{m}post_attention_layernorm.weight"] = sd[f"{g}ln_ffn.weight"]
        for suffix in ("weight", "bias") if cfg.bias else ("weight",):
            qkv, w_in = sd[f"{g}attn.qkv.{suffix}"], sd[f"{g}ffn.w_in.{suffix}"]
            out[f"{m}self_attn.q_proj.{suffix}"] = qkv[:c][perm].contiguous()
            out[f"{m}self_attn.k_proj.{suffix}"] = qkv[c:2 * c][perm].contiguous()
            out[f"{m}self_attn.v_proj.{suffix}"] = qkv[2 * c:].contiguous()
            out[f"{m}self_attn.o_proj.{suffix}"] = sd[f"{g}attn.proj.{suffix}"]
            out[f"{m}mlp.gate_proj.{suffix}"] = w_in[:h].contiguous()  # W, the gate
            out[f"{m}mlp.up_proj.{suffix}"] = w_in[h:].contiguous()  # V, the value
            out[f"{m}mlp.down_proj.{suffix}"] = sd[f"{g}ffn.w_out.{suffix}"]
    return out


def hf_weights(sd: dict[str, torch.Tensor], cfg: ModelConfig, plan: ExportPlan) -> dict[str, torch.Tensor]:
    """The weights of a :class:`~glubench.nn.transformer.Transformer` (its ``state_dict()``) under ``plan``'s
    names and layouts; the tied output projection is left to the class (``lm_head.weight`` from the embedding)."""
    if plan.arch == "gpt2":
        return _gpt2_weights(sd, cfg)
    if plan.arch == "llama":
        return _llama_weights(sd, cfg)
    return {f"model.{k}": v for k, v in sd.items() if k != "lm_head.weight"}
