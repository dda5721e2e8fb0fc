"""How a training step runs: its arithmetic (fp32, bf16 or fp16 autocast), its memory format and its threads.

Each choice follows from what the CPU has (``ensemble.cpu``), and says why (``StepMode.reason``, logged and kept
in each model's history.json):

- **bf16 autocast + channels-last** where bf16 is native (AVX-512 BF16 or AMX): 1.6-2.3x faster than fp32 on an
  Intel Xeon, 1.4-2.5x on an AMD EPYC (``python -m bench.training --modes``; docs/training.md has the table per
  CPU). The weights and the optimiser stay fp32 under autocast, so only the convolutions' arithmetic changes.
- **fp32 + channels-last** on such a CPU for the towers whose attention gates gain nothing from bf16 (cbam:
  ``TOWER_MODES``, measured on both).
- **plain fp32** on any other CPU (AVX2 only): emulated bf16 is slower than fp32, and channels-last is never
  chosen without AVX-512: torch 2.13's AVX2 kernel for a channels-last fp32 convolution's backward pass
  corrupts the heap at one thread (tests/test_torch_bugs.py records whether the installed torch still does).
- On CUDA, fp16 autocast with a loss scaler (bf16 where the GPU has it: no scaler needed).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass, field, replace

import torch

from ensemble.cpu import Cpu, this_cpu

PRECISIONS = ("auto", "fp32", "bf16")  # what a user may ask for (--precision)


@dataclass(frozen=True)
class StepMode:
    """One way to run a training step, and why it was chosen (not part of its identity)."""

    dtype: torch.dtype | None  # autocast dtype; None: plain fp32
    channels_last: bool
    reason: str = field(default="", compare=False)

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

    def because(self, reason: str) -> StepMode:
        return replace(self, reason=reason)


FP32 = StepMode(None, channels_last=False)
FAST_CPU_MODE = StepMode(torch.bfloat16, channels_last=True)
# Measured with ``python -m bench.training --modes --threads 1`` (docs/training.md) on an Intel Xeon and an AMD
# EPYC, both with AVX-512 BF16: every tower gains from channels-last; bf16 pays on top for all but the attention
# (CBAM) tower, whose pooling and sigmoid gates run slower in bf16 than fp32 on the Xeon and level on the EPYC.
TOWER_MODES: dict[str, StepMode] = {"cbam": StepMode(None, channels_last=True)}


def cpu_has_native_bf16(cpu: Cpu | None = None) -> bool:
    """True when the CPU computes bf16 natively (AVX-512 BF16 or AMX), so bf16 autocast is faster."""
    return bool((cpu or this_cpu()).native_bf16)


def cpu_modes(cpu: Cpu | None = None) -> list[StepMode]:
    """Every mode the product may pick on this CPU: what a test or a benchmark may run here in process."""
    cpu = cpu or this_cpu()
    if not cpu.native_bf16:
        return [FP32]
    return list(dict.fromkeys([FP32, *TOWER_MODES.values(), FAST_CPU_MODE]))


def choose_mode(device: torch.device, tower: str, precision: str = "auto", cpu: Cpu | None = None) -> StepMode:
    """The step mode for one model on one device, with its reason.

    ``precision`` is ``auto`` (the fastest measured mode this hardware supports), ``fp32`` (plain, as
    asked) or ``bf16`` (refused where the hardware would only emulate it).
    """
    if precision not in PRECISIONS:
        raise ValueError(f"unknown precision {precision!r}; known: {', '.join(PRECISIONS)}")
    if precision == "fp32":
        return FP32.because("--precision fp32 asked for")
    if device.type == "cuda":
        if precision == "bf16" or torch.cuda.is_bf16_supported():
            return StepMode(torch.bfloat16, True, "this GPU computes bf16")
        return StepMode(torch.float16, True, "this GPU has no bf16: fp16 with a loss scaler")
    if device.type != "cpu":
        return FP32.because(f"{device.type}: no measured faster mode")
    cpu = cpu or this_cpu()
    bf16_flags = ", ".join(cpu.native_bf16)
    if not cpu.native_bf16:
        if precision == "bf16":
            raise ValueError(f"--precision bf16 asked for, but this CPU ({cpu.model}) has no native bf16 "
                             "(AVX-512 BF16 or AMX): it would only be emulated, slower than fp32")
        return FP32.because(f"{cpu.model} has no native bf16 (avx512_bf16 or amx_bf16): emulated bf16 is slower, "
                            "and channels-last is kept to AVX-512 CPUs")
    if precision == "bf16":
        return FAST_CPU_MODE.because(f"--precision bf16 asked for; {cpu.model} has {bf16_flags}")
    if tower in TOWER_MODES:
        return TOWER_MODES[tower].because(f"{cpu.model} has {bf16_flags}, but the {tower} tower measured faster "
                                          "in fp32 + channels-last")
    return FAST_CPU_MODE.because(f"{cpu.model} has {bf16_flags}: native bf16")


@contextlib.contextmanager
def torch_threads(threads: int | None) -> Iterator[None]:
    """Torch's intra-op threads set to ``threads`` (None: left as they are) for a block, then put back: a caller
    in the same process (a test, a notebook, ``run_all``'s next step) keeps its own setting."""
    before = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)
