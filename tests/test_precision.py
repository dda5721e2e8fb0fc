"""The step mode of training (training/precision.py), chosen on an Intel AVX-512 BF16 machine and an AVX2 AMD
one (faked flags): bf16 + channels-last where bf16 is native, fp32 where asked or where it would only be emulated,
each with its reason; a training step runs in each mode and gives a finite loss (in a child process where this CPU
never trains in it); threads put back; the learning-rate schedule's shape."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch

from ensemble.cpu import this_cpu
from tests.cpus import AMD_AVX2, BOTH, INTEL_AVX512, cpu_id
from tests.training_step import MODES, check_training_step
from training import precision
from training.models import REGISTRY
from training.precision import FAST_CPU_MODE, FP32, TOWER_MODES, choose_mode, cpu_modes, torch_threads
from training.profiles import Recipe
from training.train import warmup_cosine

WARMUP_FRACTION, FINAL_LR_FRACTION = Recipe().warmup_fraction, Recipe().final_lr_fraction

CPU = torch.device("cpu")
ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.parametrize("cpu", BOTH, ids=cpu_id)
def test_auto_follows_the_cpu_flags_for_every_tower(cpu):
    for tower in {config.tower for config in REGISTRY.values()}:
        mode = choose_mode(CPU, tower, cpu=cpu)
        assert mode.reason and cpu.model in mode.reason  # says why, naming the CPU it read
        if not cpu.native_bf16:  # AVX2: plain fp32, and never channels-last (oneDNN's AVX2 kernel: test_torch_bugs)
            assert mode == FP32, tower
        elif tower in TOWER_MODES:
            assert mode == TOWER_MODES[tower]
        else:
            assert mode.dtype == torch.bfloat16 and mode.channels_last and mode.name == "bf16 + channels-last"


def test_the_attention_tower_keeps_fp32_arithmetic_on_a_bf16_cpu():
    mode = choose_mode(CPU, "cbam", cpu=INTEL_AVX512)
    assert mode.dtype is None and mode.channels_last


@pytest.mark.parametrize("cpu", BOTH, ids=cpu_id)
def test_fp32_when_asked_and_bf16_only_where_native(cpu):
    assert choose_mode(CPU, "resnet", "fp32", cpu=cpu) == FP32
    if cpu.native_bf16:
        assert choose_mode(CPU, "resnet", "bf16", cpu=cpu) == FAST_CPU_MODE
    else:
        with pytest.raises(ValueError, match="no native bf16") as refused:
            choose_mode(CPU, "resnet", "bf16", cpu=cpu)
        assert cpu.model in str(refused.value)
    with pytest.raises(ValueError, match="unknown precision"):
        choose_mode(CPU, "resnet", "fp8", cpu=cpu)


@pytest.mark.parametrize("cpu", BOTH, ids=cpu_id)
def test_the_modes_a_cpu_may_run_are_exactly_what_training_picks_there(cpu):
    picked = {choose_mode(CPU, config.tower, cpu=cpu) for config in REGISTRY.values()}
    assert set(cpu_modes(cpu)) == picked | {FP32}  # fp32 on request, everywhere


def test_this_machine_is_asked_by_default(monkeypatch):
    monkeypatch.setattr(precision, "this_cpu", lambda: AMD_AVX2)
    assert choose_mode(CPU, "resnet") == FP32 and cpu_modes() == [FP32]
    monkeypatch.setattr(precision, "this_cpu", lambda: INTEL_AVX512)
    assert choose_mode(CPU, "resnet") == FAST_CPU_MODE


@pytest.mark.parametrize("mode", list(MODES.values()), ids=lambda m: m.name)
def test_a_training_step_runs_in_each_mode(mode):
    """In process where this CPU's training would pick the mode; in a child process otherwise, so that a kernel
    path this CPU is never meant to take (channels-last fp32 on AVX2: tests/test_torch_bugs.py) fails this test
    with its output rather than ending the suite."""
    if mode in cpu_modes():
        check_training_step(mode)
        return
    run = subprocess.run([sys.executable, "-m", "tests.training_step", mode.name], cwd=ROOT, capture_output=True,
                         text=True, timeout=300)
    assert run.returncode == 0, (f"a {mode.name} training step (a mode training never picks on {this_cpu().label()}) "
                                 f"ended with {run.returncode}:\n{run.stdout[-2000:]}{run.stderr[-2000:]}")


def test_threads_are_put_back_after_a_block_that_sets_them():
    before = torch.get_num_threads()
    with torch_threads(1):
        assert torch.get_num_threads() == 1
    assert torch.get_num_threads() == before
    with pytest.raises(RuntimeError), torch_threads(1):
        raise RuntimeError("a failed step")
    assert torch.get_num_threads() == before
    with torch_threads(None):
        assert torch.get_num_threads() == before


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
