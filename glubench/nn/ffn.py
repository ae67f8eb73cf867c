"""Feed-forward (FFN) variants and the one rule that matches their parameter counts.

Shazeer 2020, "GLU Variants Improve Transformer" (arXiv 2002.05202), eqs. (5)-(6):

* non-gated:  ``FFN(x)   = act(x W1) W2``                 (two matrices, width ``d_ff``)
* gated:      ``FFN(x)   = (act(x W) ⊗ x V) W2``          (three matrices, width ``h``)

``act(x W)`` is the **gate**, ``x V`` the **value**.  GLU (Dauphin et al. 2017) uses the
sigmoid, Bilinear the identity, ReGLU ReLU, GEGLU GELU and SwiGLU Swish (SiLU, beta=1).
A gated FFN has three matrices instead of two, so its hidden width shrinks to about
``2/3 · d_ff`` to keep parameters and FLOPs equal; :func:`ffn_hidden_dim` is the only
place in glubench where that rule lives.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

Activation = Callable[[torch.Tensor], torch.Tensor]


def gelu_exact(x: torch.Tensor) -> torch.Tensor:
    """GELU with the exact erf form, ``x·Φ(x)`` (Hendrycks & Gimpel 2016), not the tanh approximation."""
    return F.gelu(x, approximate="none")


def relu_squared(x: torch.Tensor) -> torch.Tensor:
    """Squared ReLU, ``max(x, 0)²`` (So et al. 2021, "Primer", arXiv 2109.08668, §3)."""
    return F.relu(x).square()


def elu(x: torch.Tensor) -> torch.Tensor:
    """ELU with ``alpha = 1``: ``x`` for ``x > 0``, ``exp(x) - 1`` otherwise (Clevert et al. 2016)."""
    return F.elu(x, alpha=1.0)


def identity(x: torch.Tensor) -> torch.Tensor:
    """The identity; the gate of the Bilinear variant (Shazeer 2020, eq. 5)."""
    return x


class FeedForward(nn.Module):
    """Base class: maps ``(..., d_model) -> (..., d_model)`` through a hidden layer of width ``hidden``.

    Subclasses set ``gated`` and implement :meth:`hidden_activations`, which returns the
    tensor that enters the output projection ``w_out`` (used by the diagnostics).
    """

    gated: bool = False

    def __init__(self, d_model: int, hidden: int, act: Activation, bias: bool = False) -> None:
        super().__init__()
        self.d_model, self.hidden, self.act = d_model, hidden, act
        n_in = 2 * hidden if self.gated else hidden
        self.w_in = nn.Linear(d_model, n_in, bias=bias)
        self.w_out = nn.Linear(hidden, d_model, bias=bias)

    def hidden_activations(self, x: torch.Tensor) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x``: ``(..., d_model)`` -> ``(..., d_model)``."""
        return self.w_out(self.hidden_activations(x))


class MLP(FeedForward):
    """Non-gated FFN ``act(x W1) W2`` (Shazeer 2020, eq. 1/4).

    ``w_in`` holds ``W1`` (``d_model -> hidden``), ``w_out`` holds ``W2`` (``hidden -> d_model``).
    """

    gated = False

    def hidden_activations(self, x: torch.Tensor) -> torch.Tensor:
        """``(..., d_model) -> (..., hidden)``: ``act(x W1)``."""
        return self.act(self.w_in(x))


class GatedMLP(FeedForward):
    """Gated FFN ``(act(x W) ⊗ x V) W2`` (Shazeer 2020, eqs. 5-6; Dauphin et al. 2017).

    ``W`` and ``V`` are fused into one ``nn.Linear(d_model, 2·hidden)`` so that one matmul
    computes both.  Rows ``[0, hidden)`` of ``w_in.weight`` are **W, the gate** (the
    activation is applied to ``x W``); rows ``[hidden, 2·hidden)`` are **V, the value**
    (used linearly).  :attr:`gate_weight` and :attr:`value_weight` are views of the two.
    """

    gated = True

    @property
    def gate_weight(self) -> torch.Tensor:
        """``W``, shape ``(hidden, d_model)``: a view into ``w_in.weight``."""
        return self.w_in.weight[: self.hidden]

    @property
    def value_weight(self) -> torch.Tensor:
        """``V``, shape ``(hidden, d_model)``: a view into ``w_in.weight``."""
        return self.w_in.weight[self.hidden :]

    def gate_and_value(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(..., d_model)`` -> ``(x W, x V)``, each ``(..., hidden)``; the gate before ``act``."""
        gate, value = self.w_in(x).chunk(2, dim=-1)
        return gate, value

    def hidden_activations(self, x: torch.Tensor) -> torch.Tensor:
        """``(..., d_model) -> (..., hidden)``: ``act(x W) ⊗ x V``."""
        gate, value = self.gate_and_value(x)
        return self.act(gate) * value


@dataclass(frozen=True)
class FFNSpec:
    """A registry entry: the class (gated or not) and the activation it applies."""

    cls: type[FeedForward]
    act: Activation

    @property
    def gated(self) -> bool:
        return self.cls.gated


FFN_REGISTRY: dict[str, FFNSpec] = {
    "relu": FFNSpec(MLP, F.relu),
    "gelu": FFNSpec(MLP, gelu_exact),
    "swish": FFNSpec(MLP, F.silu),
    "glu": FFNSpec(GatedMLP, torch.sigmoid),
    "bilinear": FFNSpec(GatedMLP, identity),
    "reglu": FFNSpec(GatedMLP, F.relu),
    "geglu": FFNSpec(GatedMLP, gelu_exact),
    "swiglu": FFNSpec(GatedMLP, F.silu),
    # Beyond the paper (matched by the same rule): Mish, x·tanh(softplus(x)) (Misra 2019,
    # arXiv 1908.08681); ELU (Clevert et al. 2016); squared ReLU (So et al. 2021, Primer);
    # and Mish as a GLU gate.
    "mish": FFNSpec(MLP, F.mish),
    "elu": FFNSpec(MLP, elu),
    "relu2": FFNSpec(MLP, relu_squared),
    "mishglu": FFNSpec(GatedMLP, F.mish),
}
"""Config name (``model.ffn``) -> :class:`FFNSpec`."""

PAPER_VARIANTS: tuple[str, ...] = ("relu", "gelu", "swish", "glu", "bilinear", "reglu", "geglu", "swiglu")
"""The eight variants of Shazeer 2020, Table 1, in the paper's order."""


def get_spec(name: str) -> FFNSpec:
    """Return the registry entry for ``name``.

    Raises:
        ValueError: unknown name; the message lists the valid ones.
    """
    try:
        return FFN_REGISTRY[name]
    except KeyError:
        valid = ", ".join(FFN_REGISTRY)
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


def build_ffn(
    name: str, d_model: int, d_ff: int, bias: bool = False, multiple_of: int | None = None
) -> FeedForward:
    """Build the FFN ``name`` with its matched hidden width (see :func:`ffn_hidden_dim`).

    Raises:
        ValueError: unknown ``name`` (lists the valid ones) or bad sizes.
    """
    spec = get_spec(name)
    hidden = ffn_hidden_dim(d_model, d_ff, spec.gated, bias, multiple_of)
    return spec.cls(d_model, hidden, spec.act, bias=bias)


__all__ = [
    "FFN_REGISTRY",
    "PAPER_VARIANTS",
    "FFNSpec",
    "FeedForward",
    "GatedMLP",
    "MLP",
    "build_ffn",
    "ffn_hidden_dim",
    "elu",
    "ffn_params",
    "gelu_exact",
    "get_spec",
    "identity",
    "matching_error",
    "relu_squared",
]
