"""What ``glubench-bench`` benchmarks: :class:`BenchConfig` and the contenders' names (no torch at import)."""

from __future__ import annotations

from copy import copy
from dataclasses import dataclass, field, fields, replace
from typing import Any, get_type_hints

from glubench.nn.config import FFN_VARIANTS, ModelConfig

CONTENDERS = ("lightning", "plain", "plain-split", "hf")
HF_PEERS = {"gelu": "hf-gpt2", "swiglu": "hf-llama"}
"""glubench variant -> its Hugging Face peer (the ``hf`` contender runs it for these variants only)."""

MODEL_SIZES: tuple[str, ...] = tuple(
    f.name for f in fields(ModelConfig) if get_type_hints(ModelConfig)[f.name] is int)
""":class:`ModelConfig`'s integer sizes (``vocab_size``, ``d_model``, ``n_layers``, ``n_heads``, ``seq_len``):
the model fields the benchmark sets, each the flag ``--<field>``; the others keep ModelConfig's defaults."""


@dataclass
class BenchConfig:
    """What to benchmark; each field is the command-line flag ``--<field>`` (``ffns``: ``--ffn``; ``model``:
    one flag per name in :data:`MODEL_SIZES`, checked by :class:`ModelConfig` itself).

    ``model.ffn`` is replaced by each entry of ``ffns``; ``compile`` applies to every contender.
    """

    ffns: list[str] = field(default_factory=lambda: ["relu", "gelu", "swiglu"])
    contenders: list[str] = field(default_factory=lambda: ["lightning", "plain", "hf"])
    model: ModelConfig = field(default_factory=ModelConfig)
    batch_size: int = 16
    warmup: int = 3
    steps: int = 10
    repeats: int = 3
    compile: bool = False
    bf16: bool = False
    device: str = "auto"
    threads: int | None = None
    peak_flops: float | None = None
    progress_bar: bool = False
    seed: int = 0

    def check(self) -> None:
        """Raise ``ValueError`` with one line naming the bad flag, its value and what is allowed.

        The model's sizes were checked when :class:`ModelConfig` was built (``model.<key>`` messages).
        """
        for name in self.ffns:
            if name not in FFN_VARIANTS:
                raise ValueError(f"--ffn {name!r} is not a known FFN variant; valid: {', '.join(FFN_VARIANTS)}")
        for name in self.contenders:
            if name not in CONTENDERS:
                raise ValueError(f"--contenders {name!r} is not known; valid: {', '.join(CONTENDERS)}")
        for key in ("batch_size", "steps", "repeats"):
            if getattr(self, key) <= 0:
                raise ValueError(f"--{key.replace('_', '-')}={getattr(self, key)} must be a positive integer")
        if self.warmup < (2 if self.compile else 1):
            raise ValueError(f"--warmup={self.warmup} must be >= {2 if self.compile else 1} "
                             f"(the first steps {'compile and ' if self.compile else ''}allocate)")
        if self.device not in ("auto", "cpu", "cuda"):
            raise ValueError(f"--device={self.device!r} is not known; valid: auto, cpu, cuda")
        if self.peak_flops is not None and not self.peak_flops > 0:
            raise ValueError(f"--peak-flops={self.peak_flops} must be positive")
        if self.device == "cuda":
            import torch  # only here: checking the other flags loads no torch

            if not torch.cuda.is_available():
                raise ValueError("--device=cuda but torch.cuda.is_available() is False")

    def model_config(self, ffn: str = "relu") -> ModelConfig:
        """:attr:`model` with the variant ``ffn``."""
        return replace(self.model, ffn=ffn)

    def as_dict(self) -> dict[str, Any]:
        """The config as ``bench.json`` records it: one key per flag, the model's sizes inline."""
        out: dict[str, Any] = {}
        for f in fields(self):
            if f.name == "model":
                out.update({key: getattr(self.model, key) for key in MODEL_SIZES})
            else:
                out[f.name] = copy(getattr(self, f.name))
        return out
