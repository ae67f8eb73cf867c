"""The model's configuration and the FFN variant table, without torch.

Validating a config (``glubench`` before any heavy work) needs the variant names, which of them
are gated, the parameter-matching rule and :class:`ModelConfig`'s checks, but not the modules
themselves; this module holds exactly that and imports nothing beyond the standard library, so
validation stays fast.  :func:`glubench.nn.ffn.build_ffn` builds a variant's module from its row
of :data:`FFN_VARIANTS` at the width :attr:`ModelConfig.ffn_hidden`, so a variant's name, gatedness
and width are declared here only.

Shazeer 2020, "GLU Variants Improve Transformer" (arXiv 2002.05202), eqs. (5)-(6): a gated FFN
``(act(x W) ⊗ x V) W2`` has three matrices instead of the two of ``act(x W1) W2``, so its hidden
width shrinks to about ``2/3 · d_ff`` to keep parameters and FLOPs equal; :func:`ffn_hidden_dim`
is the only place in glubench where that rule lives.
"""

from __future__ import annotations

from dataclasses import dataclass

INIT_SCHEMES = ("scaled_normal", "normal", "kaiming", "fan_in")
NORMS = ("layernorm", "rmsnorm")
POSITIONS = ("learned", "rope")


@dataclass(frozen=True)
class FFNVariant:
    """One row of the variant table: whether the FFN is gated and the name of its activation.

    ``activation`` is a key of :data:`glubench.nn.ffn.ACTIVATIONS` (resolved to a function there).
    """

    gated: bool
    activation: str


FFN_VARIANTS: dict[str, FFNVariant] = {
    "relu": FFNVariant(False, "relu"),
    "gelu": FFNVariant(False, "gelu"),
    "swish": FFNVariant(False, "silu"),
    "glu": FFNVariant(True, "sigmoid"),
    "bilinear": FFNVariant(True, "identity"),
    "reglu": FFNVariant(True, "relu"),
    "geglu": FFNVariant(True, "gelu"),
    "swiglu": FFNVariant(True, "silu"),
    # Beyond the paper (matched by the same rule): Mish, x·tanh(softplus(x)) (Misra 2019,
    # arXiv 1908.08681); ELU (Clevert et al. 2016); squared ReLU (So et al. 2021, Primer);
    # and Mish as a GLU gate.
    "mish": FFNVariant(False, "mish"),
    "elu": FFNVariant(False, "elu"),
    "relu2": FFNVariant(False, "relu2"),
    "mishglu": FFNVariant(True, "mish"),
}
"""Config name (``model.ffn``) -> :class:`FFNVariant`."""

PAPER_VARIANTS: tuple[str, ...] = ("relu", "gelu", "swish", "glu", "bilinear", "reglu", "geglu", "swiglu")
"""The eight variants of Shazeer 2020, Table 1, in the paper's order."""


def get_variant(name: str) -> FFNVariant:
    """Return the table row for ``name``.

    Raises:
        ValueError: unknown name; the message lists the valid ones.
    """
    try:
        return FFN_VARIANTS[name]
    except KeyError:
        valid = ", ".join(FFN_VARIANTS)
        raise ValueError(f"model.ffn={name!r} is not a known FFN variant; valid: {valid}") from None


def ffn_params(d_model: int, hidden: int, gated: bool, bias: bool) -> int:
    """Parameter count of one FFN: ``(2 or 3)·d_model·hidden`` plus biases on both inputs and the output."""
    n_in = 2 * hidden if gated else hidden
    return d_model * n_in + hidden * d_model + ((n_in + d_model) if bias else 0)


def ffn_hidden_dim(
    d_model: int, d_ff: int, gated: bool, bias: bool = False, multiple_of: int | None = None
) -> int:
    """Hidden width that gives a FFN the parameter count of the non-gated baseline of width ``d_ff``.

    Non-gated FFNs use ``d_ff`` itself.  A gated FFN has three matrices, so without biases
    ``3·d·h = 2·d·d_ff`` gives ``h = round(2/3 · d_ff)`` (Shazeer 2020, §2: 3072 -> 2048 at
    d_model 768).  With biases, ``3·d·h + 2·h + d = 2·d·d_ff + d_ff + d`` gives
    ``h = round(d_ff·(2d+1)/(3d+2))``.  ``multiple_of`` then rounds ``h`` to the nearest
    positive multiple, for hardware; the residual mismatch is reported by :func:`matching_error`.

    How close the match is (the relative FFN parameter difference, rounding ``h`` to an integer):
    without biases ``|error| <= 1/(2·d_ff)``, so within 0.5% for ``d_ff >= 100`` (at most 0.10% at 512,
    0.016% at 3072); with biases ``|error| <= (3d+2)/(2·(2d+1)·d_ff) < 0.77/d_ff`` for ``d_model >= 8``,
    within 0.5% for ``d_ff >= 150`` (at ``d_ff`` 100: -0.74% to +0.67% depending on ``d_model``).
    With ``multiple_of = m`` (and ``d_ff >= m``) the bound grows to about ``0.77·(m+1)/d_ff``, e.g.
    -1.5% at ``d_ff`` 3120 with ``m`` 64 (width 2048); below ``m`` the width is ``m`` itself.  Bounds
    checked over every ``d_ff`` up to 16384 and ``d_model`` from 8 to 4096
    (``tests/unit/test_ffn.py::test_matching_error_bounds`` re-checks ``d_ff`` up to 4096).

    Raises:
        ValueError: a non-positive size or ``multiple_of``.
    """
    if d_model <= 0 or d_ff <= 0:
        raise ValueError(f"d_model and d_ff must be positive, got d_model={d_model}, d_ff={d_ff}")
    if multiple_of is not None and multiple_of <= 0:
        raise ValueError(f"model.ffn_multiple_of={multiple_of} must be a positive integer or null")
    if not gated:
        hidden = d_ff
    elif bias:
        hidden = round(d_ff * (2 * d_model + 1) / (3 * d_model + 2))
    else:
        hidden = round(2 * d_ff / 3)
    if multiple_of:
        hidden = max(multiple_of, multiple_of * round(hidden / multiple_of))
    return max(1, hidden)


def matching_error(d_model: int, d_ff: int, hidden: int, gated: bool, bias: bool) -> float:
    """Relative FFN parameter difference vs the non-gated baseline of width ``d_ff`` (0.01 = +1%)."""
    base = ffn_params(d_model, d_ff, gated=False, bias=bias)
    return ffn_params(d_model, hidden, gated, bias) / base - 1.0


@dataclass
class ModelConfig:
    """Sizes of the model; ``__post_init__`` derives the rest and checks invariants.

    Attributes:
        vocab_size: tokens in the vocabulary (set from the tokenizer).
        d_model: residual width C.
        n_layers, n_heads: depth and attention heads (``d_model % n_heads == 0``).
        seq_len: context length T.
        ffn: variant name, a key of :data:`FFN_VARIANTS`.
        d_ff: the *baseline* (non-gated) FFN width; ``None`` means ``4·d_model``.
        bias: biases in every Linear (off in Shazeer 2020).
        ffn_multiple_of: round the FFN width to a multiple of this (``None``: no rounding).
        init: ``scaled_normal`` (N(0, init_std²), residual-output projections scaled by
            1/sqrt(2·n_layers), GPT-2 style), ``normal`` (no scaling), ``kaiming``
            (He et al. 2015: std = sqrt(2/fan_in)) or ``fan_in`` (std = 1/sqrt(fan_in), the
            Mesh-TensorFlow default of Shazeer 2020).  The same rule for every FFN variant;
            see :meth:`glubench.nn.transformer.Transformer.reset_parameters`.
        init_std: the std of ``normal`` and ``scaled_normal`` (ignored by the fan-in rules).
        dropout: dropout probability on attention and residual outputs (0 in the paper).
        norm: ``layernorm`` (Ba et al. 2016) or ``rmsnorm`` (Zhang & Sennrich 2019, a gain and no bias
            whatever ``bias`` says) for every norm in the model.
        pos: ``learned`` (absolute position embedding added to the token embedding) or ``rope``
            (rotary embedding of queries and keys, Su et al. 2021; no position parameters).
            ``norm=rmsnorm, pos=rope, bias=false`` is the Llama-family block (Touvron et al. 2023).
        compile: wrap the Transformer with ``torch.compile`` (static shapes) when
            :class:`glubench.train.module.LanguageModel` builds it; the Transformer itself ignores it.

    Derived in ``__post_init__`` (not config keys): ``d_ff`` when ``None``, and
    :attr:`ffn_hidden`, the FFN hidden width after parameter matching.

    Raises:
        ValueError: on an unknown variant, init, norm or pos, or inconsistent sizes.
    """

    vocab_size: int = 256
    d_model: int = 128
    n_layers: int = 4
    n_heads: int = 4
    seq_len: int = 128
    ffn: str = "relu"
    d_ff: int | None = None
    bias: bool = False
    ffn_multiple_of: int | None = None
    init: str = "scaled_normal"
    init_std: float = 0.02
    dropout: float = 0.0
    norm: str = "layernorm"
    pos: str = "learned"
    compile: bool = False

    def __post_init__(self) -> None:
        for key in ("vocab_size", "d_model", "n_layers", "n_heads", "seq_len"):
            if getattr(self, key) <= 0:
                raise ValueError(f"model.{key}={getattr(self, key)} must be a positive integer")
        if self.d_model % self.n_heads:
            raise ValueError(
                f"model.d_model={self.d_model} must be divisible by model.n_heads={self.n_heads}"
            )
        if self.d_ff is None:
            self.d_ff = 4 * self.d_model
        if self.d_ff <= 0:
            raise ValueError(f"model.d_ff={self.d_ff} must be a positive integer or null")
        if self.init not in INIT_SCHEMES:
            raise ValueError(f"model.init={self.init!r} is not known; valid: {', '.join(INIT_SCHEMES)}")
        for key, valid in (("norm", NORMS), ("pos", POSITIONS)):
            if getattr(self, key) not in valid:
                raise ValueError(f"model.{key}={getattr(self, key)!r} is not known; valid: {', '.join(valid)}")
        if self.pos == "rope" and self.head_dim % 2:
            raise ValueError(f"model.pos='rope' rotates pairs of channels: the head size "
                             f"model.d_model/model.n_heads={self.head_dim} must be even")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"model.dropout={self.dropout} must be in [0, 1)")
        variant = get_variant(self.ffn)
        self._ffn_hidden = ffn_hidden_dim(
            self.d_model, self.d_ff, variant.gated, self.bias, self.ffn_multiple_of
        )

    @property
    def ffn_hidden(self) -> int:
        """The FFN hidden width after parameter matching (``d_ff`` for non-gated variants)."""
        return self._ffn_hidden

    @property
    def gated(self) -> bool:
        return get_variant(self.ffn).gated

    @property
    def head_dim(self) -> int:
        return self.d_model // self.n_heads

    @property
    def ffn_matching_error(self) -> float:
        """FFN parameters relative to the non-gated baseline of width ``d_ff`` (0.0 = exact)."""
        return matching_error(self.d_model, self.d_ff, self.ffn_hidden, self.gated, self.bias)


__all__ = [
    "FFN_VARIANTS",
    "INIT_SCHEMES",
    "NORMS",
    "POSITIONS",
    "PAPER_VARIANTS",
    "FFNVariant",
    "ModelConfig",
    "ffn_hidden_dim",
    "ffn_params",
    "get_variant",
    "matching_error",
]
