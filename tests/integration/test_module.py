"""LanguageModel under a real Lightning Trainer: corpus-level validation metrics (bits per byte on a real corpus
too), the throughput callback and the training clock across accumulation and validation, and clipping as
Lightning's own."""

import math

import lightning.pytorch as pl
import numpy as np
import pytest
import torch
import torch.nn.functional as F

import glubench.data.cache as gd
import glubench.data.sources as gs
import glubench.data.tokenizers as gt
from glubench.data.windows import ValWindows
from glubench.nn.config import ModelConfig
from glubench.train.module import LanguageModel
from glubench.train.schema import OptimConfig

# Several tests train without validation on purpose: Lightning warns that validation_step then has no loader.
pytestmark = pytest.mark.filterwarnings("ignore:You defined a `validation_step` but have no `val_dataloader`")


def _module():
    torch.manual_seed(0)
    cfg = ModelConfig(vocab_size=50, d_model=16, n_layers=1, n_heads=2, seq_len=8, ffn="swiglu")
    return LanguageModel(cfg).double()


def _validate(module, tokens, batch_size):
    token_bytes = np.arange(50) % 4 + 1  # 1..4 bytes per token id, as a BPE vocabulary would have
    dl = torch.utils.data.DataLoader(ValWindows(tokens, 8, token_bytes), batch_size=batch_size)
    trainer = pl.Trainer(accelerator="cpu", logger=False, enable_progress_bar=False,
                         enable_checkpointing=False, enable_model_summary=False)
    trainer.validate(module, dataloaders=dl, verbose=False)
    return dict(module.last_val)


def test_val_metrics_are_corpus_level_and_batch_size_free():
    tokens = np.random.default_rng(0).integers(0, 50, size=203).astype(np.uint16)  # 202 predicted, ragged tail
    module = _module()
    # Independent reference: every predicted token scored once, summed NLL / count.
    with torch.no_grad():
        t = torch.from_numpy(tokens.astype(np.int64))
        total, count = 0.0, 0
        for start in range(0, len(t) - 1, 8):
            x, y = t[start : start + 8], t[start + 1 : start + 9]
            x = x[: len(y)]
            logits = module.model(x[None])[0]
            total += F.cross_entropy(logits, y, reduction="sum").item()
            count += len(y)
    assert count == 202
    results = [_validate(module, tokens, bs) for bs in (1, 3, 7, 64)]
    for r in results:
        assert r["val/tokens"] == 202
        assert r["val/loss"] == pytest.approx(total / count, abs=1e-6)
        assert r["val/ppl"] == pytest.approx(math.exp(total / count), rel=1e-6)
        n_bytes = int((tokens[1:].astype(np.int64) % 4 + 1).sum())  # the bytes of the 202 predicted tokens
        assert r["val/bpb"] == pytest.approx(total / math.log(2) / n_bytes, rel=1e-9)
    # A mean of batch means would differ here (the last batch is short): make sure it does.
    assert len({round(r["val/loss"], 12) for r in results}) == 1


def test_throughput_callback_under_lightning_gradient_accumulation():
    """Real Trainer: the callback's step and token counts follow optimizer steps, not micro-batches."""
    from glubench.train.monitors import ThroughputCallback

    torch.manual_seed(0)
    module = LanguageModel(ModelConfig(vocab_size=16, d_model=8, n_layers=1, n_heads=2, seq_len=4),
                           OptimConfig(warmup_steps=1), max_steps=3)
    data = [(torch.randint(0, 16, (b, 4)),) * 2 for b in (1, 2, 3, 4, 5, 6)]  # variable micro-batch sizes
    cb = ThroughputCallback(1.0, None, warmup_steps=1, log_every_n_steps=1)
    trainer = pl.Trainer(accelerator="cpu", max_steps=3, accumulate_grad_batches=2, logger=False,
                         enable_progress_bar=False, enable_checkpointing=False, enable_model_summary=False,
                         callbacks=[cb])
    trainer.fit(module, train_dataloaders=torch.utils.data.DataLoader(data, batch_size=None))
    assert trainer.global_step == 3 and cb.meter.steps == 3
    assert cb.meter.tokens == (1 + 2 + 3 + 4 + 5 + 6) * 4
    s = cb.summary()
    assert s["measured_steps"] == 2  # warmup step excluded
    assert s["tokens_per_sec"] == pytest.approx((3 + 4 + 5 + 6) * 4 / s["measured_seconds"])


def _tiny(cls=LanguageModel, max_steps=4):
    torch.manual_seed(0)
    return cls(ModelConfig(vocab_size=16, d_model=8, n_layers=1, n_heads=2, seq_len=4), OptimConfig(warmup_steps=1),
               max_steps=max_steps)


def test_training_clock_counts_training_only():
    """``train_clock`` runs from ``on_train_start`` to ``on_train_end`` and stops for validation: neither the
    sanity check, nor the validations during fit, nor ``trainer.validate`` after it count."""
    now = [0.0]

    class Ticking(LanguageModel):
        def training_step(self, batch, batch_idx):
            now[0] += 1.0
            return super().training_step(batch, batch_idx)

        def validation_step(self, batch, batch_idx):
            now[0] += 100.0
            super().validation_step(batch, batch_idx)

    class Setup(pl.Callback):  # work between the sanity check and the training, not counted either
        def on_train_start(self, trainer, pl_module):
            now[0] += 10_000.0

    module = _tiny(Ticking)
    module.train_clock.clock = lambda: now[0]
    loader = torch.utils.data.DataLoader([(torch.randint(0, 16, (2, 4)),) * 2 for _ in range(4)], batch_size=None)
    trainer = pl.Trainer(accelerator="cpu", max_steps=4, val_check_interval=2, num_sanity_val_steps=1,
                         limit_val_batches=1, logger=False, enable_progress_bar=False, enable_checkpointing=False,
                         enable_model_summary=False, callbacks=[Setup()])
    trainer.fit(module, train_dataloaders=loader, val_dataloaders=loader)
    trainer.validate(module, dataloaders=loader, verbose=False)
    assert now[0] == 4 * 1.0 + (1 + 2 + 1) * 100.0 + 10_000.0  # 4 steps; sanity check, 2 validations, 1 after
    assert module.train_clock.elapsed() == 4.0


# The GradScaler's skipped first updates make torch warn that the LR scheduler stepped before the optimizer: true,
# and what this case tests.
@pytest.mark.filterwarnings("ignore:Detected call of `lr_scheduler.step\\(\\)` before `optimizer.step\\(\\)`")
@pytest.mark.parametrize("clip_val,algorithm,scaler", [(0.05, None, False), (0.05, None, True), (1e-3, "value", False),
                                                        (0, None, False)])
def test_clipping_is_lightnings_with_one_norm_per_step(monkeypatch, clip_val, algorithm, scaler):
    """LanguageModel's clipping trains bit for bit as Lightning's own (``clip_grad_norm_``), while the gradient
    norm is computed once per optimizer step for the guard, the clipping and ``train/grad_norm`` together.
    ``scaler``: 16-mixed with a GradScaler (which Lightning uses on CUDA), whose gradients Lightning unscales
    before clipping; the initial scale overflows, so the first updates are skipped too."""
    from lightning.pytorch.plugins.precision import MixedPrecision

    from glubench.train.callbacks import NonFiniteGuard

    calls = {"n": 0}
    inner = torch.nn.utils.clip_grad._get_total_norm

    def counting(*args, **kwargs):
        calls["n"] += 1
        return inner(*args, **kwargs)

    norms = []

    class LightningClipping(LanguageModel):
        configure_gradient_clipping = pl.LightningModule.configure_gradient_clipping

        def on_before_optimizer_step(self, optimizer):  # the pre-clip norm, as clip_grad_norm_ measures it
            norms.append(inner([p.grad for g in optimizer.param_groups for p in g["params"]]))

    def fit(module):
        data = [(torch.randint(0, 16, (b, 4), generator=torch.Generator().manual_seed(b)),) * 2 for b in range(1, 9)]
        amp = [MixedPrecision("16-mixed", "cpu", torch.amp.GradScaler("cpu", init_scale=2.0**20))] if scaler else []
        trainer = pl.Trainer(accelerator="cpu", max_steps=4, accumulate_grad_batches=2, log_every_n_steps=2,
                             gradient_clip_val=clip_val, gradient_clip_algorithm=algorithm, logger=False,
                             enable_progress_bar=False, enable_checkpointing=False, enable_model_summary=False,
                             callbacks=[NonFiniteGuard("stop")], plugins=amp)
        trainer.fit(module, train_dataloaders=torch.utils.data.DataLoader(data, batch_size=None))
        return trainer

    reference = _tiny(LightningClipping)
    fit(reference)
    monkeypatch.setattr(torch.nn.utils.clip_grad, "_get_total_norm", counting)
    monkeypatch.setattr(torch.nn.utils, "get_total_norm", counting)
    ours = _tiny()
    trainer = fit(ours)
    assert trainer.global_step == 4 and calls["n"] == 4
    if scaler:
        assert trainer.precision_plugin.scaler.get_scale() < 2.0**20  # overflowing steps were skipped
    for a, b in zip(ours.parameters(), reference.parameters(), strict=True):
        assert torch.equal(a, b)
    if clip_val:
        assert float(norms[-1]) > clip_val  # the clipping did act
    assert trainer.callback_metrics["train/grad_norm"].item() == pytest.approx(float(norms[-1]), rel=1e-6)


def test_bpb_is_loss_over_ln2_times_tokens_per_byte(shared_data, tmp_path, make_dm):
    path = tmp_path / "shakespeare-100k.txt"  # a slice keeps validation quick on 2 shared cores
    raw = (shared_data / "tinyshakespeare" / "input.txt").read_bytes()[:100_000]
    path.write_bytes(raw[: raw.rindex(b"\n\n") + 2])
    dm = make_dm(["data=text", f"data.files={path}", "data.tokenizer=bpe", "data.vocab_size=300",
                    "data.val_batch_size=64"], tmp_path, seq_len=64)
    s = dm.splits
    dm_corpus = gs.load_corpus_spec(gd.data_spec(dm.data), tmp_path)
    tok = gt.BPETokenizer.train_or_load(dm_corpus, 300, tmp_path)
    first = tok.tok.decode([int(s.val[0])]).encode()
    predicted_bytes = s.meta["val"]["bytes"] - len(first)  # every byte but the first token's
    torch.manual_seed(0)
    module = LanguageModel(ModelConfig(vocab_size=s.vocab_size, d_model=32, n_layers=1, n_heads=2, seq_len=64))
    trainer = pl.Trainer(accelerator="cpu", logger=False, enable_progress_bar=False, enable_model_summary=False)
    trainer.validate(module, dataloaders=dm.val_dataloader(), verbose=False)
    loss, bpb = module.last_val["val/loss"], module.last_val["val/bpb"]
    # Independent reference: F.cross_entropy over every predicted validation token.
    module.eval()
    val = torch.from_numpy(np.asarray(s.val, dtype=np.int64))
    n = val.numel() - 1
    full = n // 64
    with torch.no_grad():
        x = val[: full * 64].view(full, 64)
        y = val[1 : full * 64 + 1].view(full, 64)
        nll = F.cross_entropy(module(x).flatten(0, 1), y.flatten(), reduction="sum").item()
        if n > full * 64:  # the last, shorter window
            nll += F.cross_entropy(module(val[full * 64 : -1][None])[0], val[full * 64 + 1 :], reduction="sum").item()
    assert loss == pytest.approx(nll / n, rel=1e-4)
    assert bpb == pytest.approx(loss / math.log(2) * n / predicted_bytes, rel=1e-6)
    assert dm_corpus.fingerprint == s.meta["fingerprint"]
