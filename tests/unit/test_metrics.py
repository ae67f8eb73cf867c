import math

import lightning.pytorch as pl
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from glubench.core.clock import Stopwatch
from glubench.data.windows import IGNORE_INDEX, ValWindows
from glubench.nn.config import ModelConfig
from glubench.nn.flops import mfu
from glubench.train.metrics import ThroughputMeter, bits_per_byte, peak_flops, perplexity
from glubench.train.module import LanguageModel, lr_lambda
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


def test_val_windows_pad_with_ignore_index():
    x, y = ValWindows(np.arange(11, dtype=np.uint16), 4)[2]
    assert x.tolist() == [8, 9, 0, 0] and y.tolist() == [9, 10, IGNORE_INDEX, IGNORE_INDEX]


def test_bits_per_byte_and_perplexity():
    assert bits_per_byte(math.log(2) * 100, 50) == pytest.approx(2.0)
    assert perplexity(math.log(7.5)) == pytest.approx(7.5)
    assert perplexity(1e6) == math.inf
    with pytest.raises(ValueError):
        bits_per_byte(1.0, 0)


class FakeClock:
    def __init__(self):
        self.t = 100.0

    def __call__(self):
        return self.t


def test_throughput_with_fake_clock_excludes_warmup_and_pauses():
    clock = FakeClock()
    watch = Stopwatch(clock)
    watch.start()
    meter = ThroughputMeter(watch, warmup_steps=2)
    for tokens in (1000, 1000):  # warmup: 10 s each, never counted
        clock.t += 10
        meter.step(tokens)
    assert meter.started and meter.read() is None  # the window opens as warmup ends: nothing measured yet
    # Variable batch sizes, e.g. 4 micro-batches × 2 devices × 128 tokens = 1024 per step.
    for tokens, dt in ((1024, 0.5), (2048, 0.5), (1024, 1.0)):
        clock.t += dt
        meter.step(tokens)
    r = meter.read()
    assert r["tokens_per_sec"] == pytest.approx(4096 / 2.0)
    assert r["step_time_ms"] == pytest.approx(2000 / 3)
    watch.pause()
    clock.t += 50  # validation: not counted
    watch.resume()
    clock.t += 2.0
    meter.step(3000)
    r = meter.read()
    assert r["tokens_per_sec"] == pytest.approx(1500.0)
    s = meter.summary()
    assert s["tokens_per_sec"] == pytest.approx((4096 + 3000) / 4.0)
    assert s["measured_steps"] == 4


def test_throughput_no_warmup():
    clock = FakeClock()
    watch = Stopwatch(clock)
    watch.start()
    meter = ThroughputMeter(watch, warmup_steps=0)
    clock.t += 4
    meter.step(400)
    assert meter.read()["tokens_per_sec"] == pytest.approx(100.0)


def test_peak_flops_and_mfu():
    cuda = torch.device("cuda", 0)
    # glubench's dense table where Lightning lists the sparse rate (H200 bf16: 2e15 there)
    assert peak_flops(cuda, "bf16-mixed", "NVIDIA H200") == 989e12
    assert peak_flops(cuda, "32-true", "NVIDIA H200") == 67e12
    assert peak_flops(cuda, "bf16-mixed", "NVIDIA H200 NVL") == 835.5e12
    assert peak_flops(torch.device("cpu"), "bf16-mixed") is None  # no MFU on a CPU, never a guess


@pytest.mark.parametrize("name,precision,expected", [
    ("NVIDIA H100 80GB HBM3", "bf16-mixed", 989.4e12),  # NVIDIA H100 SXM datasheet, dense bf16
    ("NVIDIA H100 PCIe", "16-mixed", 756e12),
    ("NVIDIA A100-SXM4-80GB", "bf16-mixed", 312e12),
    ("NVIDIA Quantum Z9", "bf16-mixed", None),  # unknown: no MFU
])
def test_peak_flops_from_lightning_elsewhere(monkeypatch, name, precision, expected):
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: name)
    if expected is None:  # Lightning says so: no MFU for this run
        with pytest.warns(UserWarning, match=f"FLOPs not found for '{name}'"):
            assert peak_flops(torch.device("cuda", 0), precision) is None
    else:
        assert peak_flops(torch.device("cuda", 0), precision) == expected


def test_mfu():
    assert mfu(1000.0, 6e9, 1e13) == pytest.approx(0.6)
    assert mfu(1000.0, 6e9, None) is None


def test_lr_schedule():
    assert lr_lambda(0, 10, 100, 0.1) == pytest.approx(0.1)
    assert lr_lambda(9, 10, 100, 0.1) == pytest.approx(1.0)
    assert lr_lambda(10, 10, 100, 0.1) == pytest.approx(1.0)
    assert lr_lambda(55, 10, 100, 0.1) == pytest.approx(0.1 + 0.9 * 0.5)
    assert lr_lambda(100, 10, 100, 0.1) == pytest.approx(0.1)


def _batch(n_windows, seq_len=8):
    y = torch.zeros(n_windows, seq_len, dtype=torch.long)
    return y, y


def test_throughput_callback_counts_accumulation_and_devices_with_fake_clock():
    """Tokens per optimizer step = every micro-batch of gradient accumulation × every device."""
    from types import SimpleNamespace

    from glubench.train.callbacks import ThroughputCallback

    cb = ThroughputCallback(flops_per_token=6.0, peak_flops=1200.0, warmup_steps=1, log_every_n_steps=100)
    trainer = SimpleNamespace(global_step=0, world_size=4, max_steps=3)
    clock = FakeClock()
    # The module's side, as LanguageModel keeps it: its training clock, the tokens of its micro-batches
    # and whether the batch just ended finished an optimizer step.
    module = SimpleNamespace(train_clock=Stopwatch(clock), tokens_seen=0, step_finished=False)
    cb.on_train_start(trainer, module)
    module.train_clock.start()
    # accumulate_grad_batches=2; Lightning raises global_step at the end of the 2nd micro-batch.
    # Micro-batches of 3, 5 | 2, 2 | 4, 4 windows of 8 tokens; optimizer steps take 9, 1, 3 s.
    for windows, dt in (((3, 5), 9.0), ((2, 2), 1.0), ((4, 4), 3.0)):
        for i, n in enumerate(windows):
            clock.t += dt / 2
            module.tokens_seen += _batch(n)[1].numel()
            module.step_finished = i == 1
            if i == 1:
                trainer.global_step += 1
            cb.on_train_batch_end(trainer, module, None, _batch(n), 0)
    cb.on_train_end(trainer, module)
    s = cb.summary()
    # Step 1 (warmup) excluded: (2+2 + 4+4) windows × 8 tokens × 4 devices over 1 + 3 s.
    assert cb.meter.tokens == (3 + 5 + 2 + 2 + 4 + 4) * 8 * 4
    assert s["tokens_per_sec"] == pytest.approx(12 * 8 * 4 / 4.0)
    assert s["step_time_ms"] == pytest.approx(2000.0)
    assert s["measured_steps"] == 2
    assert s["mfu"] == pytest.approx(12 * 8 * 4 / 4.0 * 6.0 / 1200.0)


def test_throughput_callback_under_lightning_gradient_accumulation():
    """Real Trainer: the callback's step and token counts follow optimizer steps, not micro-batches."""
    from glubench.train.callbacks import ThroughputCallback

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
