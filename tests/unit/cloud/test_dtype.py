"""``cloud.model.dtype = "auto"``: bfloat16 only where the hardware multiplies it natively."""

from __future__ import annotations

from pathlib import Path

import pytest

from edgecloud.cloud._torch import auto_dtype, cpu_has_native_bf16

ZEN4 = "processor\t: 0\nflags\t\t: fpu sse2 avx2 avx512f avx512_bf16 avx512_vnni\n"
SKYLAKE = "processor\t: 0\nflags\t\t: fpu sse2 avx2 avx512f avx512bw avx512_vnni\n"
SAPPHIRE = "processor\t: 0\nflags\t\t: avx512f amx_bf16 amx_tile amx_int8\n"


@pytest.mark.parametrize(
    ("cpuinfo", "native"), [(ZEN4, True), (SKYLAKE, False), (SAPPHIRE, True), ("", False)]
)
def test_native_bf16_is_read_from_the_cpu_flags(tmp_path: Path, cpuinfo: str, native: bool) -> None:
    path = tmp_path / "cpuinfo"
    path.write_text(cpuinfo)
    assert cpu_has_native_bf16(path) is native


def test_unreadable_cpuinfo_means_float32(tmp_path: Path) -> None:
    assert cpu_has_native_bf16(tmp_path / "missing") is False


def test_cuda_is_always_bfloat16() -> None:
    assert auto_dtype(cuda=True) == "bfloat16"
    assert auto_dtype(cuda=False) == ("bfloat16" if cpu_has_native_bf16() else "float32")
