"""Where a run computes: mixed precision is off on the CPU unless asked for; the CPU that int8
results are reported with is named with the flags that pick the int8 kernels."""

import platform

import pytest
import torch

from mobilenets.engine.device import autocast_dtype, cpu_info


def test_autocast_is_off_on_cpu_unless_asked():
    cpu = torch.device("cpu")
    assert autocast_dtype("auto", cpu) is None
    assert autocast_dtype("off", cpu) is None
    assert autocast_dtype("bf16", cpu) == torch.bfloat16
    assert autocast_dtype("fp16", cpu) == torch.float16


# --- the CPU that int8 results are reported with ----------------------------------------------

AMD_AVX2 = "fpu vme sse sse2 ssse3 sse4_1 sse4_2 avx f16c fma avx2 bmi2 sha_ni vaes"
XEON_AMX = (
    "sse4_2 avx avx2 avx512f avx512bw avx512_vnni avx512_bf16 avx_vnni amx_bf16 amx_tile amx_int8"
)


def cpuinfo_file(tmp_path, name: str, flags: str, key: str = "flags"):
    path = tmp_path / "cpuinfo"
    path.write_text(
        f"processor\t: 0\nmodel name\t: {name}\n{key}\t\t: {flags}\n\n"
        f"processor\t: 1\nmodel name\t: {name}\n{key}\t\t: {flags}\n"
    )
    return path


@pytest.mark.parametrize(
    "name, flags, described, dot",
    [
        ("AMD EPYC", AMD_AVX2, "AMD EPYC (x86_64): AVX2, no AVX-512, no VNNI, no AMX", ()),
        (
            "Intel Xeon",
            XEON_AMX,
            "Intel Xeon (x86_64): AVX-512, AVX512-VNNI, AVX-VNNI, AMX-INT8",
            ("AVX512-VNNI", "AVX-VNNI", "AMX-INT8"),
        ),
        (
            "Intel Core",
            "avx2 avx_vnni",
            "Intel Core (x86_64): AVX2, no AVX-512, AVX-VNNI, no AMX",
            ("AVX-VNNI",),
        ),
    ],
)
def test_the_cpu_is_described_by_the_flags_that_pick_int8_kernels(
    tmp_path, monkeypatch, name, flags, described, dot
):
    monkeypatch.setattr(platform, "machine", lambda: "x86_64")
    info = cpu_info(cpuinfo_file(tmp_path, name, flags))
    assert info.describe() == described and info.int8_dot == dot
    assert info.int16_pairs == (not dot)  # pmaddubsw's int16 pairs only where nothing better


def test_an_arm_cpu_names_its_dot_product_and_a_missing_file_its_machine(tmp_path, monkeypatch):
    monkeypatch.setattr(platform, "machine", lambda: "aarch64")
    path = tmp_path / "cpuinfo"
    path.write_text("processor\t: 0\nFeatures\t: fp asimd asimddp i8mm\nCPU part\t: 0xd4f\n")
    monkeypatch.setattr(platform, "processor", lambda: "")
    info = cpu_info(path)
    assert info.describe() == "aarch64 (aarch64): dot product, i8mm" and not info.int16_pairs
    missing = cpu_info(tmp_path / "absent")
    assert missing.flags == frozenset()
    assert missing.describe() == "aarch64 (aarch64): no int8 dot product"


def test_this_machines_cpu_is_read():
    info = cpu_info()
    assert info.name and info.machine == platform.machine()
    if platform.system() == "Linux" and platform.machine() == "x86_64":
        assert "sse2" in info.flags  # every x86_64 CPU has it
