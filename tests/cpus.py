"""The two kinds of development and CI machine, as /proc/cpuinfo shows them, for tests that fake the CPU: each
hardware-dependent choice is tested as it would be made on both (ensemble.cpu)."""

from __future__ import annotations

from ensemble.cpu import Cpu, parse_cpuinfo

# The lines that matter of each machine's /proc/cpuinfo (first processor; the flags cut to a representative set).
INTEL_AVX512_CPUINFO = """\
processor	: 0
vendor_id	: GenuineIntel
model name	: Intel(R) Xeon(R) Platinum 8481C CPU @ 2.70GHz
flags		: fpu sse sse2 ssse3 sse4_1 sse4_2 avx f16c fma avx2 avx512f avx512dq avx512cd avx512bw avx512vl \
avx512_vnni avx512_bf16 avx_vnni amx_bf16 amx_tile amx_int8

processor	: 1
model name	: Intel(R) Xeon(R) Platinum 8481C CPU @ 2.70GHz
flags		: fpu sse sse2 ssse3 sse4_1 sse4_2 avx f16c fma avx2 avx512f avx512_vnni avx512_bf16
"""
AMD_AVX2_CPUINFO = """\
processor	: 0
vendor_id	: AuthenticAMD
model name	: AMD EPYC 7B13
flags		: fpu sse sse2 ssse3 sse4_1 sse4_2 sse4a avx f16c fma avx2 bmi1 bmi2 sha_ni vaes vpclmulqdq
"""

INTEL_AVX512: Cpu = parse_cpuinfo(INTEL_AVX512_CPUINFO)
AMD_AVX2: Cpu = parse_cpuinfo(AMD_AVX2_CPUINFO)
BOTH = [INTEL_AVX512, AMD_AVX2]


def cpu_id(cpu: Cpu) -> str:
    return "intel-avx512" if cpu is INTEL_AVX512 else "amd-avx2"
