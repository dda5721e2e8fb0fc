"""The step mode of training (training/precision.py): bf16 + channels-last on a CPU that computes bf16
natively, fp32 where asked or where it would only be emulated; a training step runs in each mode and
gives a finite loss; the learning-rate schedule's shape."""

from __future__ import annotations

import pytest
import torch

from training import precision
from training.models import REGISTRY, build_model
from training.precision import FP32, choose_mode
from training.profiles import Recipe
from training.train import training_loss, warmup_cosine

WARMUP_FRACTION, FINAL_LR_FRACTION = Recipe().warmup_fraction, Recipe().final_lr_fraction

CPU = torch.device("cpu")


@pytest.fixture
def bf16_cpu(monkeypatch):
    monkeypatch.setattr(precision, "cpu_has_native_bf16", lambda: True)


@pytest.fixture
def old_cpu(monkeypatch):
    monkeypatch.setattr(precision, "cpu_has_native_bf16", lambda: False)


def test_auto_picks_bf16_channels_last_on_a_bf16_cpu(bf16_cpu):
    mode = choose_mode(CPU, "resnet")
    assert mode.dtype == torch.bfloat16 and mode.channels_last
    assert mode.name == "bf16 + channels-last"


def test_measured_exceptions_keep_fp32_arithmetic(bf16_cpu):
    mode = choose_mode(CPU, "cbam")
    assert mode.dtype is None and mode.channels_last


def test_fp32_when_asked_or_unsupported(bf16_cpu, monkeypatch):
    assert choose_mode(CPU, "resnet", "fp32") == FP32
    monkeypatch.setattr(precision, "cpu_has_native_bf16", lambda: False)
    assert choose_mode(CPU, "resnet") == FP32
    with pytest.raises(ValueError, match="no native bf16"):
        choose_mode(CPU, "resnet", "bf16")
    with pytest.raises(ValueError, match="unknown precision"):
        choose_mode(CPU, "resnet", "fp8")


def test_cpu_flags_decide_native_bf16(monkeypatch):
    precision.cpu_has_native_bf16.cache_clear()
    try:
        monkeypatch.setattr(precision, "_cpu_flags", lambda: {"avx512f", "avx512_bf16"})
        assert precision.cpu_has_native_bf16() is precision.sys.platform.startswith("linux")
        precision.cpu_has_native_bf16.cache_clear()
        monkeypatch.setattr(precision, "_cpu_flags", lambda: {"avx2", "avx512f"})
        assert precision.cpu_has_native_bf16() is False
    finally:
        precision.cpu_has_native_bf16.cache_clear()


@pytest.mark.parametrize("mode", [FP32, precision.StepMode(None, True), precision.FAST_CPU_MODE],
                         ids=lambda m: m.name)
def test_a_training_step_runs_in_each_mode(mode):
    torch.manual_seed(0)
    model = mode.prepare_model(build_model("resnet", 4, 16).train())
    optimizer = torch.optim.AdamW(model.parameters())
    x, y, digits = torch.rand(8, 28, 56), torch.randint(0, 2, (8,)).float(), torch.randint(0, 10, (8, 2))
    before = [p.detach().clone() for p in model.parameters()]
    with mode.autocast(CPU):
        logits, digit_logits = model(x)
        loss = training_loss(REGISTRY["resnet"], logits, y, digit_logits, digits, 0.5)
    loss.backward()
    optimizer.step()
    assert torch.isfinite(loss)
    assert all(p.dtype == torch.float32 for p in model.parameters())  # weights stay fp32 under autocast
    assert any(not torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=True))
    if mode.dtype is torch.bfloat16:
        assert logits.dtype == torch.bfloat16  # the arithmetic really ran in bf16


def test_warmup_cosine_shape():
    total = 1000

    def cosine(step: int) -> float:
        return warmup_cosine(step, total, WARMUP_FRACTION, FINAL_LR_FRACTION)

    warmup = round(WARMUP_FRACTION * total)
    assert cosine(0) == pytest.approx(FINAL_LR_FRACTION)
    assert cosine(warmup) == pytest.approx(1.0)
    assert cosine(total - 1) == pytest.approx(FINAL_LR_FRACTION)
    values = [cosine(s) for s in range(total)]
    assert all(a <= b for a, b in zip(values[:warmup], values[1:warmup + 1], strict=True))  # rising
    assert all(a >= b for a, b in zip(values[warmup:], values[warmup + 1:], strict=False))  # then falling
    # Half-way through the cosine the rate is half-way between peak and floor.
    middle = warmup + (total - 1 - warmup) // 2
    assert cosine(middle) == pytest.approx((1 + FINAL_LR_FRACTION) / 2, abs=0.01)


def test_weight_average_warms_up_then_holds_its_decay():
    from training.profiles import EMA_DECAY
    from training.train import ema_decay, update_ema

    assert ema_decay(0) == pytest.approx(0.1)  # the second weights seen count 90%: the start is forgotten fast
    assert ema_decay(10**6) == EMA_DECAY
    averaged, current = [torch.zeros(3)], [torch.ones(3)]
    update_ema(averaged, current, torch.tensor(1))
    assert torch.allclose(averaged[0], torch.full((3,), 1 - ema_decay(1)))
    for step in range(2, 3000):
        update_ema(averaged, current, torch.tensor(step))
    assert torch.allclose(averaged[0], torch.ones(3), atol=1e-3)  # the initial zeros are forgotten
    counter = [torch.tensor(5)]
    update_ema(counter, [torch.tensor(9)], torch.tensor(3))
    assert counter[0].item() == 9  # integer buffers are counts: taken as they are
