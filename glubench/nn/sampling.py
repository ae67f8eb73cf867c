"""Autoregressive sampling from any next-token model: greedy, temperature and top-k.

The loop re-reads the whole context at each step (no KV cache), cropped to the model's last
``seq_len`` tokens, so a model with learned positions never sees a position it was not trained on.
Sampling divides the logits by a temperature before the softmax and may keep only the ``top_k``
largest (top-k sampling, Fan et al. 2018, "Hierarchical Neural Story Generation", arXiv 1805.04833).
"""

from __future__ import annotations

from collections.abc import Callable

import torch

LogitsFn = Callable[[torch.Tensor], torch.Tensor]
"""Token ids ``(B, T)`` -> logits ``(B, T, V)``."""


def check_sampling(max_new_tokens: int, temperature: float, top_k: int | None) -> None:
    """Raises:
        ValueError: ``max_new_tokens < 0``, ``temperature < 0`` or ``top_k < 1`` (one line naming the key).
    """
    if max_new_tokens < 0:
        raise ValueError(f"max_new_tokens={max_new_tokens} must be >= 0")
    if temperature < 0:
        raise ValueError(f"temperature={temperature} must be >= 0 (0: greedy)")
    if top_k is not None and top_k < 1:
        raise ValueError(f"top_k={top_k} must be a positive integer or null (no truncation)")


@torch.no_grad()
def sample(logits_fn: LogitsFn, idx: torch.Tensor, max_new_tokens: int, seq_len: int, temperature: float = 1.0,
           top_k: int | None = None, generator: torch.Generator | None = None) -> torch.Tensor:
    """Extend ``idx (B, T)`` by ``max_new_tokens`` tokens: ``(B, T + max_new_tokens)``.

    Each step feeds the last ``seq_len`` tokens to ``logits_fn`` and draws the next token from the last
    position's logits: ``temperature == 0`` takes the argmax (greedy; ties go to the lowest id), otherwise
    ``softmax(logits / temperature)`` restricted to the ``top_k`` largest logits (all when ``None``) is
    sampled with ``generator``.

    Raises:
        ValueError: see :func:`check_sampling`; an empty ``idx`` (no token to start from).
    """
    check_sampling(max_new_tokens, temperature, top_k)
    if idx.shape[1] == 0:
        raise ValueError("the prompt encodes to no tokens; give at least one character")
    for _ in range(max_new_tokens):
        logits = logits_fn(idx[:, -seq_len:])[:, -1, :].float()  # (B, V)
        if temperature == 0:
            nxt = logits.argmax(dim=-1, keepdim=True)  # (B, 1)
        else:
            logits = logits / temperature
            if top_k is not None and top_k < logits.shape[-1]:
                kth = torch.topk(logits, top_k, dim=-1).values[:, -1:]  # (B, 1)
                logits = logits.masked_fill(logits < kth, float("-inf"))
            nxt = torch.multinomial(torch.softmax(logits, dim=-1), 1, generator=generator)  # (B, 1)
        idx = torch.cat((idx, nxt.to(idx.dtype)), dim=1)
    return idx
