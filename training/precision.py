"""How a training step runs: its arithmetic (fp32, bf16 or fp16 autocast) and its memory format.

On a CPU with AVX-512 BF16 (or AMX), ``torch.autocast("cpu", dtype=torch.bfloat16)`` plus channels-last
tensors train these CNNs 1.6-2.4x faster than fp32 (``python -m bench.training --modes`` measures it);
the weights and the optimiser stay fp32 under autocast, so only the convolutions' arithmetic changes.
A CPU without native bf16 would emulate it (slower than fp32), so it trains in fp32. On CUDA, fp16
autocast with a loss scaler, as before (bf16 where the GPU has it: no scaler needed).

The choice per architecture is ``TOWER_MODES``, decided by measurement: a tower whose attention gates
gain nothing from bf16 (cbam) keeps fp32 with channels-last alone.
"""

from __future__ import annotations

import contextlib
import functools
import sys
from dataclasses import dataclass
from pathlib import Path

import torch

PRECISIONS = ("auto", "fp32", "bf16")  # what a user may ask for (--precision)


@dataclass(frozen=True)
class StepMode:
    """One way to run a training step."""

    dtype: torch.dtype | None  # autocast dtype; None: plain fp32
    channels_last: bool

    @property
    def name(self) -> str:
        arithmetic = {None: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}[self.dtype]
        return arithmetic + (" + channels-last" if self.channels_last else "")

    @property
    def needs_scaler(self) -> bool:
        """fp16 gradients underflow without loss scaling; bf16 has fp32's exponent range."""
        return self.dtype == torch.float16

    def autocast(self, device: torch.device) -> contextlib.AbstractContextManager:
        if self.dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device.type, dtype=self.dtype)

    def prepare_model(self, model: torch.nn.Module) -> torch.nn.Module:
        return model.to(memory_format=torch.channels_last) if self.channels_last else model


FP32 = StepMode(None, channels_last=False)
# Measured with ``python -m bench.training --modes --threads 1`` (README): every tower gains from
# channels-last; bf16 pays on top for all but the attention (CBAM) tower, whose pooling and sigmoid gates
# run slower in bf16 than in fp32.
TOWER_MODES: dict[str, StepMode] = {"cbam": StepMode(None, channels_last=True)}
FAST_CPU_MODE = StepMode(torch.bfloat16, channels_last=True)


def _cpu_flags() -> set[str]:
    cpuinfo = Path("/proc/cpuinfo")
    if not cpuinfo.is_file():
        return set()
    for line in cpuinfo.read_text().splitlines():
        if line.startswith("flags"):
            return set(line.split(":", 1)[1].split())
    return set()


@functools.cache
def cpu_has_native_bf16() -> bool:
    """True when this CPU computes bf16 natively (AVX-512 BF16 or AMX), so bf16 autocast is faster."""
    if sys.platform.startswith("linux"):
        return bool(_cpu_flags() & {"avx512_bf16", "amx_bf16"})
    return False  # elsewhere we cannot tell cheaply: fp32 is the safe choice


def choose_mode(device: torch.device, tower: str, precision: str = "auto") -> StepMode:
    """The step mode for one model on one device.

    ``precision`` is ``auto`` (the fastest measured mode this hardware supports), ``fp32`` (plain, as
    asked) or ``bf16`` (refused where the hardware would only emulate it).
    """
    if precision not in PRECISIONS:
        raise ValueError(f"unknown precision {precision!r}; known: {', '.join(PRECISIONS)}")
    if precision == "fp32":
        return FP32
    if device.type == "cuda":
        if precision == "bf16" or torch.cuda.is_bf16_supported():
            return StepMode(torch.bfloat16, channels_last=True)
        return StepMode(torch.float16, channels_last=True)
    if device.type != "cpu":
        return FP32
    if precision == "bf16":
        if not cpu_has_native_bf16():
            raise ValueError("--precision bf16 asked for, but this CPU has no native bf16 (AVX-512 BF16 or AMX): "
                             "it would only be emulated, slower than fp32")
        return FAST_CPU_MODE
    if not cpu_has_native_bf16():
        return FP32
    return TOWER_MODES.get(tower, FAST_CPU_MODE)
