"""What this CPU computes natively, read once from its flags: the one place every hardware-dependent choice asks.

Development, CI and serving machines differ: Intel Xeons with AVX-512, VNNI and BF16 (some with AMX), AMD EPYCs
with AVX-512 BF16 and VNNI (Zen 4), and AMD EPYCs with AVX2 only (Zen 2/3). Three choices follow from the flags
(docs/speed.md, "Per CPU"):

- training arithmetic: bf16 autocast only where bf16 is native (``training.precision``); emulated, it is slower;
- training memory format: channels-last only on AVX-512, where oneDNN's channels-last kernels are measured faster;
  torch 2.13's AVX2 kernel for a channels-last fp32 convolution's backward pass corrupts the heap at one thread
  (tests/test_torch_bugs.py);
- serving arithmetic: the int8 graph only where the CPU has an int8 dot product (VNNI or AMX); without it ONNX
  Runtime's int8 kernels are slower than fp32 (``ensemble.runtime.resolve_precision``).

Torch-free: the serving side reads it too.
"""

from __future__ import annotations

import functools
import platform
from dataclasses import dataclass
from pathlib import Path

NATIVE_BF16_FLAGS = ("avx512_bf16", "amx_bf16")
INT8_DOT_FLAGS = ("avx512_vnni", "avx_vnni", "amx_int8")
AVX512_FLAG = "avx512f"
#: The flags named in /info and in the docs' tables: the ones a choice here depends on, and AVX2 for context.
DECIDING_FLAGS = ("avx2", AVX512_FLAG, *NATIVE_BF16_FLAGS, *INT8_DOT_FLAGS)


@dataclass(frozen=True)
class Cpu:
    """A CPU's model name and its flags, as /proc/cpuinfo lists them."""

    model: str
    flags: frozenset[str]

    def present(self, names: tuple[str, ...]) -> tuple[str, ...]:
        return tuple(name for name in names if name in self.flags)

    @property
    def native_bf16(self) -> tuple[str, ...]:
        """The flags that make bf16 arithmetic native here (empty: bf16 would be emulated)."""
        return self.present(NATIVE_BF16_FLAGS)

    @property
    def int8_dot(self) -> tuple[str, ...]:
        """The flags that give ONNX Runtime an int8 dot product (empty: its int8 kernels are slower than fp32)."""
        return self.present(INT8_DOT_FLAGS)

    @property
    def avx512(self) -> bool:
        return AVX512_FLAG in self.flags

    def describe(self) -> dict[str, object]:
        """For /info and the measurements' tables: the model name and the deciding flags it has."""
        return {"model": self.model, "flags": list(self.present(DECIDING_FLAGS))}

    def label(self) -> str:
        """One line naming the CPU and its deciding flags, as every recorded figure is labelled."""
        flags = self.present(DECIDING_FLAGS)
        return f"{self.model} ({', '.join(flags) if flags else 'none of ' + ', '.join(DECIDING_FLAGS)})"


def parse_cpuinfo(text: str) -> Cpu:
    """The first processor's model name and flags from the text of /proc/cpuinfo."""
    model, flags = "", frozenset()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        key = key.strip()
        if key == "model name" and not model:
            model = value.strip()
        elif key == "flags" and not flags:
            flags = frozenset(value.split())
    return Cpu(model or platform.processor() or "unknown CPU", flags)


@functools.cache
def this_cpu() -> Cpu:
    """This machine's CPU. Where /proc/cpuinfo is missing (not Linux) no flag is known, so every choice is the
    safe one: fp32, no channels-last, no int8."""
    cpuinfo = Path("/proc/cpuinfo")
    try:
        return parse_cpuinfo(cpuinfo.read_text())
    except OSError:
        return Cpu(platform.processor() or "unknown CPU", frozenset())
