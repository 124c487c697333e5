"""Builds and loads the C++ row kernel of the fused KL's CPU path (``kl_rows.cpp``) on first use.

The kernel is compiled with the system C++ compiler against the installed torch's headers (ATen's
``Vectorized<float>``, built for the vector ISA torch itself dispatches to on this CPU), cached on disk, and
called through ctypes (which releases the GIL; the kernel spreads rows over torch's intra-op threads).
Whenever it cannot be had (no compiler, a failed build) ``row_kernel()`` returns None and warns once with
the reason, and fused_linear_kl takes its pure-torch path: the same results, slower. It returns None
silently with ``VGID_CPU_KERNEL=0``, and on CPUs where torch dispatches to neither AVX2 nor AVX-512: the
kernel is only used where its vector code was measured (ATen's generic fallback runs it at about half the
eager path's speed).

Cache: ``$VGID_KERNEL_CACHE``, else ``$XDG_CACHE_HOME/vgid_dist/kernels`` (``~/.cache/...``). The file
name carries a hash of the source, the torch version, the compiler and the flags, so a cache on a shared
file system holds one build per CPU type and torch install and never serves a stale or foreign one.
Builds write a temporary file and rename it into place, so ranks that build at once cannot see half a
file, and a killed build leaves no lock behind.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import shutil
import subprocess
import tempfile
import warnings
from pathlib import Path

import torch

__all__ = ["ENV_SWITCH", "RowKernel", "row_kernel"]

ENV_SWITCH = "VGID_CPU_KERNEL"  # "0" / "off" / "false": never build or use the kernel
SOURCE = Path(__file__).with_name("kl_rows.cpp")
BUILD_TIMEOUT_S = 600

# Flags per vector ISA that this torch build dispatches to (torch.backends.cpu.get_cpu_capability()); the
# CPU_CAPABILITY macros select ATen's Vectorized<float> implementation for it. Other ISAs: no kernel.
_ISA_FLAGS = {
    "AVX512": ["-mavx512f", "-mavx512dq", "-mavx512vl", "-mavx512bw", "-mfma",
               "-DCPU_CAPABILITY=AVX512", "-DCPU_CAPABILITY_AVX512"],
    "AVX2": ["-mavx2", "-mfma", "-DCPU_CAPABILITY=AVX2", "-DCPU_CAPABILITY_AVX2"],
}

_loaded: list = []  # [RowKernel | None] once row_kernel() has run in this process


class RowKernel:
    """``kl_rows(s, t, kl_out, want_grad)`` on [rows, V] fp32 logits; see kl_rows.cpp for the contract."""

    def __init__(self, lib: ctypes.CDLL, path: Path, isa: str):
        self._fn = lib.vgid_kl_rows
        self._fn.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int64, ctypes.c_int64,
                             ctypes.c_int64, ctypes.c_int, ctypes.c_void_p]
        self._fn.restype = None
        self.path = path
        self.isa = isa

    def __call__(self, s: torch.Tensor, t: torch.Tensor, kl_out: torch.Tensor, want_grad: bool) -> None:
        """s, t: [rows, V] fp32 CPU, unit stride along V, the same row stride; kl_out: [rows] fp64.

        Writes KL(softmax(t) || softmax(s)) per row into kl_out; if want_grad, s becomes
        softmax(s) - softmax(t); t is left holding scratch values.
        """
        rows, vocab = s.shape
        if not (s.dtype == t.dtype == torch.float32 and kl_out.dtype == torch.float64
                and s.device.type == t.device.type == kl_out.device.type == "cpu"):
            raise TypeError("row kernel: s, t must be fp32 CPU tensors and kl_out fp64")
        if t.shape != s.shape or s.stride() != t.stride() or s.stride(1) != 1 or kl_out.shape != (rows,) \
                or not kl_out.is_contiguous():
            raise ValueError(f"row kernel: shapes/strides s {tuple(s.shape)}/{s.stride()}, "
                             f"t {tuple(t.shape)}/{t.stride()}, kl_out {tuple(kl_out.shape)}")
        if rows == 0:
            return
        self._fn(s.data_ptr(), t.data_ptr(), rows, vocab, s.stride(0), int(bool(want_grad)),
                 kl_out.data_ptr())


def _warn(reason: str) -> None:
    warnings.warn(f"fused KL: the CPU row kernel is not used ({reason}); falling back to the pure-torch "
                  f"path, which gives the same results more slowly. Set {ENV_SWITCH}=0 to silence this.",
                  RuntimeWarning, stacklevel=3)


def _cache_dir() -> Path:
    if os.environ.get("VGID_KERNEL_CACHE"):
        return Path(os.environ["VGID_KERNEL_CACHE"])
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "vgid_dist" / "kernels"


def _compiler() -> str | None:
    for candidate in (os.environ.get("CXX"), "c++", "g++", "clang++"):
        if candidate and (path := shutil.which(candidate)):
            return path
    return None


def _build_command(cxx: str, isa: str, src: Path, out: Path) -> list[str]:
    from torch.utils.cpp_extension import include_paths, library_paths

    torch_lib = library_paths()[0]
    # -fopenmp: at::parallel_for is inline OpenMP code in the headers; without it the rows run serially.
    # The libgomp it links is the one torch already loaded (same soname), so both share one thread pool.
    return [cxx, "-O3", "-std=c++17", "-shared", "-fPIC", "-fopenmp",
            f"-D_GLIBCXX_USE_CXX11_ABI={int(torch._C._GLIBCXX_USE_CXX11_ABI)}",
            *_ISA_FLAGS[isa], *(f"-I{p}" for p in include_paths()), str(src), "-o", str(out),
            f"-L{torch_lib}", "-ltorch_cpu", "-lc10", f"-Wl,-rpath,{torch_lib}"]


def _build(cxx: str, isa: str) -> Path:
    """Path of a built kernel for this (source, torch, compiler, ISA), building it if not cached."""
    version = subprocess.run([cxx, "--version"], capture_output=True, text=True, timeout=60).stdout
    key_cmd = _build_command(cxx, isa, SOURCE, Path("out.so"))
    key = hashlib.sha256("\0".join([SOURCE.read_text(), torch.__version__, version, *key_cmd])
                         .encode()).hexdigest()[:20]
    cache = _cache_dir()
    try:
        cache.mkdir(parents=True, exist_ok=True)
        probe = tempfile.NamedTemporaryFile(dir=cache, suffix=".tmp")
        probe.close()
    except OSError:  # read-only home, full disk: build for this process only
        cache = Path(tempfile.mkdtemp(prefix="vgid-kernels-"))
    target = cache / f"kl_rows-{isa.lower()}-{key}.so"
    if target.exists():
        return target
    fd, tmp = tempfile.mkstemp(dir=cache, prefix=target.stem + ".", suffix=".building.so")
    os.close(fd)
    try:
        proc = subprocess.run(_build_command(cxx, isa, SOURCE, Path(tmp)), capture_output=True, text=True,
                              timeout=BUILD_TIMEOUT_S)
        if proc.returncode != 0:
            tail = " | ".join((proc.stderr or proc.stdout).strip().splitlines()[-3:])
            raise RuntimeError(f"{Path(cxx).name} exited {proc.returncode}: {tail}")
        os.replace(tmp, target)  # atomic: a concurrent builder's rename of an identical file is harmless
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return target


def _self_check(kernel: RowKernel) -> bool:
    """Deterministic small case (odd length, tail lanes) against the torch formulas; no global RNG use."""
    s = torch.linspace(-3.0, 5.0, 2 * 37).view(2, 37).sin_().mul_(4)
    t = torch.linspace(-1.0, 2.0, 2 * 37).view(2, 37).cos_().mul_(3)
    log_ps, log_pt = s.double().log_softmax(1), t.double().log_softmax(1)
    want_kl = (log_pt.exp() * (log_pt - log_ps)).sum(1)
    want_grad = log_ps.exp() - log_pt.exp()
    kl = torch.empty(2, dtype=torch.float64)
    kernel(s, t, kl, True)
    return torch.allclose(kl, want_kl, rtol=1e-5, atol=1e-7) and torch.allclose(
        s.double(), want_grad, rtol=1e-5, atol=1e-7)


def row_kernel() -> RowKernel | None:
    """The loaded kernel, or None (with one warning saying why) if it cannot be built or loaded here."""
    if _loaded:
        return _loaded[0]
    kernel = None
    if os.environ.get(ENV_SWITCH, "1").strip().lower() in ("0", "off", "false", "no"):
        pass  # switched off on purpose: no warning
    elif (isa := torch.backends.cpu.get_cpu_capability()) not in _ISA_FLAGS:
        pass  # measured only with AVX2 / AVX-512 vector code: the eager path, without a warning
    elif (cxx := _compiler()) is None:
        _warn("no C++ compiler found (tried $CXX, c++, g++, clang++)")
    else:
        try:
            path = _build(cxx, isa)
            kernel = RowKernel(ctypes.CDLL(str(path)), path, isa)
            if not _self_check(kernel):
                kernel = None
                _warn(f"{path} failed its self-check against torch")
        except Exception as e:  # noqa: BLE001 - any failure here only costs speed
            kernel = None
            _warn(f"{type(e).__name__}: {e}")
    _loaded.append(kernel)
    return kernel
