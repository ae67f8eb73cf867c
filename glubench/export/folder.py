"""Write a Hugging Face model folder from a glubench checkpoint, check it, and load one back.

:func:`export_folder` writes ``model.safetensors``, ``config.json``, ``generation_config.json``, the
tokenizer (``tokenizer.json``, ``tokenizer_config.json``), for a remote-code plan ``modeling_glubench.py``,
and ``glubench_export.json`` (what was exported from where, and the measured logit difference).  Before
the folder is put in place it is loaded back with ``transformers`` and its logits compared with glubench's
own model on a batch; a difference beyond :data:`VERIFY_TOL` refuses the export.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from pathlib import Path

import torch

from glubench.core.errors import ExportError
from glubench.core.io import atomic_write_json
from glubench.data.cache import load_tokenizer
from glubench.export.convert import ExportPlan, hf_config, hf_weights, model_config, plan_export
from glubench.export.tokenizer import hf_tokenizer, special_ids
from glubench.nn.config import ModelConfig
from glubench.nn.transformer import Transformer, load_weights

log = logging.getLogger(__name__)

EXPORT_FILE = "glubench_export.json"
VERIFY_TOL = 1e-4
"""Largest ``max |logit difference| / max(1, max |logit|)`` accepted by the check (fp32 gives ~1e-6)."""


def glubench_model(model_hparams: dict, state_dict: dict[str, torch.Tensor]) -> tuple[Transformer, ModelConfig]:
    """The checkpoint's :class:`Transformer` in eval mode, from ``LanguageModel``'s ``state_dict`` (keys ``model.*``).

    Raises:
        ExportError: see :func:`~glubench.export.convert.model_config`; weights that do not fit ``model.*``.
    """
    cfg = model_config(model_hparams)
    try:
        return load_weights(Transformer(cfg), state_dict), cfg
    except ValueError as e:
        raise ExportError(str(e)) from None


def hf_model(model: Transformer, cfg: ModelConfig, plan: ExportPlan, special: dict[str, int | None]):
    """The ``transformers`` model of ``plan`` holding ``model``'s weights (fp32, eval mode).

    Raises:
        ExportError: a weight of the target class that the conversion did not fill, or the reverse.
    """
    config = hf_config(cfg, plan, special)
    if plan.arch == "gpt2":
        from transformers import GPT2LMHeadModel as cls  # optional: the [export] extra (transformers)
    elif plan.arch == "llama":
        from transformers import LlamaForCausalLM as cls  # optional: the [export] extra (transformers)
    else:
        from glubench.export.modeling_glubench import GlubenchForCausalLM as cls
    out = cls(config)
    missing, unexpected = out.load_state_dict(hf_weights(model.state_dict(), cfg, plan), strict=False)
    missing = [k for k in missing if k != "lm_head.weight"]  # tied to the token embedding
    if missing or unexpected or out.get_output_embeddings().weight is not out.get_input_embeddings().weight:
        raise ExportError(f"{cls.__name__} does not hold this model's weights (missing: {missing[:3]}, "
                          f"unexpected: {unexpected[:3]}, tied head: "
                          f"{out.get_output_embeddings().weight is out.get_input_embeddings().weight})")
    for key, value in special.items():
        setattr(out.generation_config, key, value)
    return out.eval()


def max_logit_diff(model: Transformer, folder: Path, remote_code: bool, batch: int = 2) -> tuple[float, float]:
    """``(max |logit difference|, max |logit|)`` between ``model`` and the folder loaded with ``transformers`` on
    ``batch`` windows of ``seq_len`` random token ids (seed 0), in float32."""
    from transformers import AutoModelForCausalLM  # optional: the [export] extra (transformers)

    loaded = AutoModelForCausalLM.from_pretrained(folder, trust_remote_code=remote_code, dtype=torch.float32).eval()
    gen = torch.Generator().manual_seed(0)
    idx = torch.randint(model.cfg.vocab_size, (batch, model.cfg.seq_len), generator=gen)  # (B, T)
    with torch.no_grad():
        ours, theirs = model(idx), loaded(idx).logits  # (B, T, V) each
    return float((ours - theirs).abs().max()), float(ours.abs().max())


def export_folder(hparams: dict, data: dict, state_dict: dict[str, torch.Tensor], out_dir: Path, *,
                  verify: bool = True, overwrite: bool = False, source: dict | None = None) -> dict:
    """Export a checkpoint (``hyper_parameters``, ``datamodule_hyper_parameters``, ``state_dict``) to ``out_dir``.

    Returns the record written to ``glubench_export.json``: ``arch``, ``remote_code``, ``ffn``, ``tokenizer``,
    ``max_abs_logit_diff`` (``None`` without ``verify``) and ``source``.

    Raises:
        ExportError: ``out_dir`` not empty (without ``overwrite``), a model the export cannot represent, a
            tokenizer whose vocabulary differs from the model's, or a check beyond :data:`VERIFY_TOL`.
        TokenizerUnavailable, CorpusUnavailable: the checkpoint's tokenizer cannot be built here.
    """
    out_dir = Path(out_dir)
    if out_dir.exists() and any(out_dir.iterdir()) and not overwrite:
        raise ExportError(f"out_dir={str(out_dir)!r} is not empty; choose another folder or set overwrite=true")
    model, cfg = glubench_model(hparams["model"], state_dict)
    plan = plan_export(cfg)
    tok = hf_tokenizer(data, load_tokenizer(data), cfg.seq_len)
    if len(tok) != cfg.vocab_size:
        raise ExportError(f"data.tokenizer={data['tokenizer']!r} has {len(tok)} tokens but model.vocab_size="
                          f"{cfg.vocab_size}; the export needs the tokenizer the checkpoint trained with")
    hf = hf_model(model, cfg, plan, special_ids(tok))
    tmp = out_dir.with_name(f"{out_dir.name}-partial{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        _save(hf, tok, plan, tmp)
        diff = _check(model, tmp, plan) if verify else None
        record = {"arch": plan.arch, "class": type(hf).__name__, "remote_code": plan.remote_code, "ffn": cfg.ffn,
                  "norm": cfg.norm, "pos": cfg.pos, "tokenizer": data["tokenizer"], "vocab_size": cfg.vocab_size,
                  "seq_len": cfg.seq_len, "max_abs_logit_diff": diff, "source": source or {}}
        atomic_write_json(tmp / EXPORT_FILE, record)
        if out_dir.exists():
            shutil.rmtree(out_dir)
        out_dir.parent.mkdir(parents=True, exist_ok=True)
        os.replace(tmp, out_dir)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    log.debug("exported %s (%s%s) to %s", cfg.ffn, type(hf).__name__, ", trust_remote_code" * plan.remote_code,
             out_dir)
    return record


def _save(hf, tok, plan: ExportPlan, folder: Path) -> None:
    if plan.remote_code:  # save_pretrained then copies modeling_glubench.py and writes config.json's auto_map
        from glubench.export.modeling_glubench import GlubenchConfig, GlubenchForCausalLM  # optional

        GlubenchConfig.register_for_auto_class()
        GlubenchForCausalLM.register_for_auto_class("AutoModelForCausalLM")
    hf.save_pretrained(folder, safe_serialization=True)
    tok.save_pretrained(folder)


def _check(model: Transformer, folder: Path, plan: ExportPlan) -> float:
    diff, scale = max_logit_diff(model, folder, plan.remote_code)
    if diff > VERIFY_TOL * max(1.0, scale):
        raise ExportError(f"the exported {plan.arch} model's logits differ from glubench's by {diff:.3g} "
                          f"(max |logit| {scale:.3g}, tolerance {VERIFY_TOL:g} relative); nothing was written")
    return diff


def load_folder(folder: Path, trust_remote_code: bool = False):
    """``(model, tokenizer, seq_len)`` of an exported folder, loaded with ``transformers`` in float32, eval mode.

    Raises:
        ExportError: the folder needs its own modeling code and ``trust_remote_code`` is false.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer  # optional: the [export] extra (transformers)

    config = json.loads((Path(folder) / "config.json").read_text())
    if config.get("auto_map") and not trust_remote_code:
        raise ExportError(f"ckpt_path={str(folder)!r} runs its own modeling code (modeling_glubench.py); "
                          "add trust_remote_code=true to allow it")
    model = AutoModelForCausalLM.from_pretrained(folder, trust_remote_code=trust_remote_code, dtype=torch.float32)
    tok = AutoTokenizer.from_pretrained(folder, trust_remote_code=trust_remote_code)  # else it asks on a terminal
    return model.eval(), tok, int(model.config.max_position_embeddings)
