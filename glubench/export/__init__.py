"""Trained models out of glubench: Hugging Face ``transformers`` folders, their tokenizers, and lm-evaluation-harness.

Below ``train`` and above ``data`` in the layers (torch, ``transformers`` and ``lm_eval``; no Lightning, Hydra or
W&B): :mod:`.convert` (which class, which weights), :mod:`.tokenizer`, :mod:`.folder` (write, check, load),
:mod:`.harness`, and :mod:`.modeling_glubench`, the standalone modeling file written into remote-code exports.
"""
