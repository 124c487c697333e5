"""The fused KL's CPU row kernel (kl_rows.cpp) against float64 torch, and how it is built and cached."""

from __future__ import annotations

import ctypes
import warnings
from pathlib import Path

import pytest
import torch

from vgid_dist.losses import cpu_kernel


@pytest.fixture
def fresh_loader(monkeypatch, tmp_path):
    """row_kernel() as in a new process, building into an empty cache folder."""
    monkeypatch.setattr(cpu_kernel, "_loaded", [])
    monkeypatch.setenv("VGID_KERNEL_CACHE", str(tmp_path / "kernels"))
    monkeypatch.delenv(cpu_kernel.ENV_SWITCH, raising=False)
    return tmp_path / "kernels"


@pytest.fixture(scope="module")
def kernel():
    k = cpu_kernel.row_kernel()
    if k is None:
        pytest.skip("no C++ compiler here (test_builds_where_a_compiler_exists covers the build)")
    return k


def reference(s: torch.Tensor, t: torch.Tensor):
    log_ps, log_pt = s.double().log_softmax(1), t.double().log_softmax(1)
    return (log_pt.exp() * (log_pt - log_ps)).sum(1), log_ps.exp() - log_pt.exp()


def supported_here() -> bool:
    return cpu_kernel._compiler() is not None and torch.backends.cpu.get_cpu_capability() in cpu_kernel._ISA_FLAGS


def test_builds_where_a_compiler_exists():
    if not supported_here():
        pytest.skip("no C++ compiler, or a CPU without AVX2 / AVX-512")
    assert cpu_kernel.row_kernel() is not None


@pytest.mark.parametrize("isa", ["AVX2", "AVX512"])
def test_each_supported_isa_builds_and_passes_its_self_check(isa, tmp_path, monkeypatch):
    """Both builds, on whatever this machine is (an AVX2 build runs on an AVX-512 CPU; not the reverse)."""
    flags = open("/proc/cpuinfo").read() if Path("/proc/cpuinfo").is_file() else ""
    if cpu_kernel._compiler() is None or (isa == "AVX512" and " avx512f" not in flags) or " avx2" not in flags:
        pytest.skip(f"no compiler, or this CPU cannot run {isa} code")
    monkeypatch.setenv("VGID_KERNEL_CACHE", str(tmp_path))
    path = cpu_kernel._build(cpu_kernel._compiler(), isa)
    assert cpu_kernel._self_check(cpu_kernel.RowKernel(ctypes.CDLL(str(path)), path, isa))


def test_other_isas_take_the_eager_path_silently(fresh_loader, monkeypatch):
    monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: "DEFAULT")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert cpu_kernel.row_kernel() is None


# Vocabulary sizes around the vector width (16 / 8 lanes) and the 2048-element summation block.
@pytest.mark.parametrize("vocab", [1, 7, 16, 17, 1003, 2048, 2049, 5000])
@pytest.mark.parametrize("scale", [1.0, 30.0, 400.0])
def test_matches_float64_softmax_kl_and_gradient(kernel, vocab, scale):
    g = torch.Generator().manual_seed(vocab)
    s = torch.randn(5, vocab, generator=g) * scale
    t = (s + torch.randn(5, vocab, generator=g) * scale * 0.3) if vocab > 1 else torch.randn(5, 1, generator=g)
    want_kl, want_grad = reference(s, t)
    kl = torch.empty(5, dtype=torch.float64)
    kernel(s, t, kl, True)
    torch.testing.assert_close(kl, want_kl, rtol=1e-5, atol=1e-6 * max(1.0, float(want_kl.abs().max())))
    torch.testing.assert_close(s.double(), want_grad, rtol=1e-5, atol=1e-6)


def test_strided_rows_and_loss_only(kernel):
    """Rows of a wider buffer (row stride > V), and want_grad=False leaves no gradient but the same KL."""
    g = torch.Generator().manual_seed(0)
    wide_s, wide_t = torch.randn(4, 1100, generator=g), torch.randn(4, 1100, generator=g)
    s, t = wide_s[:, :1003], wide_t[:, :1003]
    want_kl, _ = reference(s, t)
    untouched = wide_s[:, 1003:].clone()
    kl = torch.empty(4, dtype=torch.float64)
    kernel(s, t, kl, False)
    torch.testing.assert_close(kl, want_kl, rtol=1e-5, atol=1e-7)
    assert torch.equal(wide_s[:, 1003:], untouched)


def test_nan_propagates_to_the_kl(kernel):
    s, t = torch.randn(3, 100), torch.randn(3, 100)
    s[1, 40] = float("nan")
    kl = torch.empty(3, dtype=torch.float64)
    kernel(s, t, kl, True)
    assert torch.isfinite(kl[[0, 2]]).all() and torch.isnan(kl[1])


def test_rejects_wrong_dtypes_and_shapes(kernel):
    kl = torch.empty(2, dtype=torch.float64)
    with pytest.raises(TypeError):
        kernel(torch.randn(2, 8).double(), torch.randn(2, 8).double(), kl, True)
    with pytest.raises(ValueError):
        kernel(torch.randn(2, 8), torch.randn(2, 9), kl, True)
    with pytest.raises(ValueError):
        kernel(torch.randn(2, 8).t(), torch.randn(2, 8).t(), torch.empty(8, dtype=torch.float64), True)


def test_built_once_then_served_from_the_cache(fresh_loader):
    if not supported_here():
        pytest.skip("no C++ compiler, or a CPU without AVX2 / AVX-512")
    first = cpu_kernel.row_kernel()
    assert first is not None and first.path.parent == fresh_loader
    mtime = first.path.stat().st_mtime_ns
    cpu_kernel._loaded.clear()  # a new process
    second = cpu_kernel.row_kernel()
    assert second.path == first.path and second.path.stat().st_mtime_ns == mtime
    assert [p.name for p in fresh_loader.iterdir()] == [first.path.name]  # no temporary left behind


def test_switched_off_without_warning(fresh_loader, monkeypatch):
    monkeypatch.setenv(cpu_kernel.ENV_SWITCH, "0")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert cpu_kernel.row_kernel() is None
    assert not fresh_loader.exists()


def test_failed_build_warns_once_and_falls_back(fresh_loader, monkeypatch):
    monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: "AVX2")
    monkeypatch.setenv("CXX", "false")  # a "compiler" that always fails
    with pytest.warns(RuntimeWarning, match="not used .*false exited 1"):
        assert cpu_kernel.row_kernel() is None
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert cpu_kernel.row_kernel() is None  # decided once per process
    assert list(fresh_loader.glob("*.so")) == []
