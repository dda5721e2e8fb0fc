"""What the CPU computes natively, read from /proc/cpuinfo (ensemble.cpu): the facts every hardware choice
asks, on an Intel AVX-512 BF16/VNNI machine and an AVX2-only AMD one."""

from __future__ import annotations

from ensemble.cpu import parse_cpuinfo, this_cpu
from tests.cpus import AMD_AVX2, AMD_AVX2_CPUINFO, INTEL_AVX512, INTEL_AVX512_CPUINFO


def test_an_intel_avx512_machine_has_native_bf16_and_int8_dot_products():
    cpu = parse_cpuinfo(INTEL_AVX512_CPUINFO)
    assert cpu.model == "Intel(R) Xeon(R) Platinum 8481C CPU @ 2.70GHz"
    assert set(cpu.native_bf16) == {"avx512_bf16", "amx_bf16"}
    assert set(cpu.int8_dot) == {"avx512_vnni", "avx_vnni", "amx_int8"}
    assert cpu.avx512


def test_an_avx2_amd_machine_has_neither():
    cpu = parse_cpuinfo(AMD_AVX2_CPUINFO)
    assert cpu.model == "AMD EPYC 7B13"
    assert cpu.native_bf16 == () and cpu.int8_dot == () and not cpu.avx512
    assert "avx2" in cpu.flags


def test_the_first_processor_is_read():
    # The Intel sample's second processor lists fewer flags (amx_* missing): the first one's are kept.
    assert "amx_int8" in parse_cpuinfo(INTEL_AVX512_CPUINFO).flags


def test_a_cpuinfo_without_flags_knows_nothing_so_every_choice_is_the_safe_one():
    cpu = parse_cpuinfo("processor\t: 0\n")
    assert cpu.flags == frozenset() and cpu.native_bf16 == () and cpu.int8_dot == ()
    assert cpu.model  # still named (the platform's word, or "unknown CPU")


def test_the_description_names_the_model_and_only_the_deciding_flags():
    intel, amd = INTEL_AVX512.describe(), AMD_AVX2.describe()
    assert intel["model"] == INTEL_AVX512.model and amd["model"] == AMD_AVX2.model
    assert {"avx512_bf16", "avx512_vnni", "amx_int8", "avx2"} <= set(intel["flags"])
    assert "fpu" not in intel["flags"] and "sse2" not in amd["flags"]
    assert amd["flags"] == ["avx2"]
    assert AMD_AVX2.model in AMD_AVX2.label() and "avx2" in AMD_AVX2.label()


def test_this_machine_is_read():
    cpu = this_cpu()
    assert cpu.model and cpu is this_cpu()  # read once
