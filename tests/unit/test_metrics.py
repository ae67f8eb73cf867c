import math

import numpy as np
import pytest
import torch

from glubench.core.clock import Stopwatch
from glubench.data.windows import IGNORE_INDEX, ValWindows
from glubench.nn.flops import mfu
from glubench.train.metrics import ThroughputMeter, bits_per_byte, peak_flops, perplexity
from glubench.train.module import lr_lambda


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

    from glubench.train.monitors import ThroughputCallback

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
