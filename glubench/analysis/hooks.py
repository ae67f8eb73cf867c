"""Capture activations of a model with forward hooks that live for one forward pass only.

Every diagnostic in :mod:`glubench.analysis` reads intermediate tensors the same way: register
hooks, run the model once in eval mode without autograd, then remove the hooks and put the model
back in the mode it was in, whatever happens in between.  :func:`run_with_hooks` is that one way.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Literal, get_args

import torch
from torch import nn

HookKind = Literal["forward", "pre"]


def run_with_hooks(
    model: nn.Module,
    idx: torch.Tensor,
    hooks: Iterable[tuple[nn.Module, Callable] | tuple[nn.Module, Callable, HookKind]],
) -> torch.Tensor:
    """Run ``model`` on ``idx`` once, in eval mode and under ``torch.no_grad``, with ``hooks`` attached.

    Args:
        model: a :class:`glubench.nn.transformer.Transformer`, possibly compiled (in place with
            ``model.compile()`` or wrapped by ``torch.compile``).  Its Python ``forward`` runs
            eagerly either way: a compiled graph would recompile for the hooks and for the
            probe's shape, and the hooked submodules must really run.
        idx: ``(B, T)`` int64 token ids.
        hooks: ``(module, hook)`` or ``(module, hook, kind)`` with ``kind`` ``"forward"`` (the
            default; ``hook(module, inputs, output)``, see ``nn.Module.register_forward_hook``) or
            ``"pre"`` (``hook(module, inputs)``, see ``nn.Module.register_forward_pre_hook``).
            ``module`` must be a submodule of ``model``.  A hook must return ``None``, or it
            replaces the module's output (or input).

    Returns:
        The model's output, e.g. logits ``(B, T, V)``.

    Raises:
        ValueError: an unknown ``kind``, or a hook on ``model`` itself (only its ``forward`` runs,
            so the hook would never fire).  No hook stays registered after any error, and the
            model's training mode is restored.
    """
    inner = getattr(model, "_orig_mod", model)  # torch.compile(model) wraps the module in _orig_mod
    was_training = model.training
    handles = []
    try:
        for module, hook, *rest in hooks:
            kind = rest[0] if rest else "forward"
            if module is model or module is inner:
                raise ValueError("run_with_hooks: hook a submodule of the model, not the model itself")
            if kind == "forward":
                handles.append(module.register_forward_hook(hook))
            elif kind == "pre":
                handles.append(module.register_forward_pre_hook(hook))
            else:
                raise ValueError(f"run_with_hooks: kind={kind!r} is not known; valid: {', '.join(get_args(HookKind))}")
        model.eval()
        with torch.no_grad():
            return inner.forward(idx)
    finally:
        model.train(was_training)
        for h in handles:
            h.remove()
