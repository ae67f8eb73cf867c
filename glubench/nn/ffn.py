"""Feed-forward (FFN) variants and the one rule that matches their parameter counts.

Shazeer 2020, "GLU Variants Improve Transformer" (arXiv 2002.05202), eqs. (5)-(6):

* non-gated:  ``FFN(x)   = act(x W1) W2``                 (two matrices, width ``d_ff``)
* gated:      ``FFN(x)   = (act(x W) ⊗ x V) W2``          (three matrices, width ``h``)

``act(x W)`` is the **gate**, ``x V`` the **value**.  GLU (Dauphin et al. 2017) uses the
sigmoid, Bilinear the identity, ReGLU ReLU, GEGLU GELU and SwiGLU Swish (SiLU, beta=1).
A gated FFN has three matrices instead of two, so its hidden width shrinks to about
``2/3 · d_ff`` to keep parameters and FLOPs equal; that rule, the variant names and which of
them are gated live in the torch-free :mod:`glubench.nn.config` (:func:`~glubench.nn.config.ffn_hidden_dim`,
:data:`~glubench.nn.config.FFN_VARIANTS`); this module supplies the activations and the modules,
which take the hidden width as given.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from glubench.nn.config import get_variant

Activation = Callable[[torch.Tensor], torch.Tensor]


def relu_squared(x: torch.Tensor) -> torch.Tensor:
    """Squared ReLU, ``max(x, 0)²`` (So et al. 2021, "Primer", arXiv 2109.08668, §3)."""
    return F.relu(x).square()


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


ACTIVATIONS: dict[str, Activation] = {
    "relu": F.relu,
    "gelu": F.gelu,  # the exact erf form x·Φ(x) (Hendrycks & Gimpel 2016), not the tanh approximation
    "silu": F.silu,  # Swish with beta = 1 (Ramachandran et al. 2017)
    "sigmoid": torch.sigmoid,
    "identity": identity,
    "mish": F.mish,
    "elu": F.elu,  # alpha = 1 (Clevert et al. 2016)
    "relu2": relu_squared,
}
"""Activation name (:attr:`glubench.nn.config.FFNVariant.activation`) -> function."""


def build_ffn(name: str, d_model: int, hidden: int, bias: bool = False) -> FeedForward:
    """The FFN variant ``name`` (``model.ffn``) with hidden width ``hidden``, e.g. the matched
    :attr:`glubench.nn.config.ModelConfig.ffn_hidden`: ``(..., d_model) -> (..., d_model)``.

    Raises:
        ValueError: unknown ``name``; the message lists the valid ones.
    """
    variant = get_variant(name)
    cls = GatedMLP if variant.gated else MLP
    return cls(d_model, hidden, ACTIVATIONS[variant.activation], bias=bias)


__all__ = [
    "ACTIVATIONS",
    "Activation",
    "FeedForward",
    "GatedMLP",
    "MLP",
    "build_ffn",
    "identity",
    "relu_squared",
]
