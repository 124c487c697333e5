"""fused_linear_kl against a naive reference (materialised logits, log_softmax, kl_div, autograd)."""

from __future__ import annotations

import importlib.util
import warnings

import pytest
import torch
import torch.nn.functional as F

from vgid_dist.losses import fused_kl as fused_kl_module
from vgid_dist.losses import row_math
from vgid_dist.losses.cpu_kernel import row_kernel
from vgid_dist.losses.fused_kl import _FusedLinearKL, default_chunk_rows, fused_linear_kl

N, H, V = 37, 48, 1003
FP32_TOL = dict(rtol=1e-5, atol=1e-6)
# Sum-scale results (gradients of sums, not means) are ~N times larger; fp32 rounding grows with them.
FP32_SUM_TOL = dict(rtol=1e-5, atol=1e-5)


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """These shapes are tiny: on a busy machine each OpenMP fork/join costs more than the maths."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(params=["kernel-mm", "kernel-onednn", "eager-mm", "eager-onednn"])
def cpu_gemm(request, monkeypatch):
    """Every CPU code path: row kernel or eager torch for the elementwise part, times oneDNN linear or
    torch.mm for the logit GEMMs (oneDNN is forced on here whatever ISA this machine has)."""
    elementwise, gemm = request.param.split("-")
    if elementwise == "kernel" and row_kernel() is None:
        pytest.skip("the CPU row kernel cannot be built here (see test_cpu_kernel.py)")
    if elementwise == "eager":
        monkeypatch.setattr(fused_kl_module, "row_kernel", lambda: None)
    monkeypatch.setattr(fused_kl_module, "_onednn_probe", [])
    monkeypatch.setattr(fused_kl_module, "USE_ONEDNN_LINEAR", gemm == "onednn")
    monkeypatch.setattr(fused_kl_module, "_ONEDNN_ISAS", (torch.backends.cpu.get_cpu_capability(),))
    if gemm == "onednn" and fused_kl_module._onednn_linear() is None:
        pytest.skip("this torch build has no oneDNN linear")
    return request.param


DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA"))]


@pytest.fixture
def compiled_rows_path(monkeypatch):
    """The accelerators' row path (the torch.compile'd row function), also on CPU; fails loudly instead of
    falling back, so a test cannot pass on the eager path by accident."""
    monkeypatch.setenv(row_math.ENV_COMPILE, "1")
    monkeypatch.setitem(row_math._state, "failed", False)
    yield
    assert not row_math._state["failed"], "the compiled row function fell back to eager"


def make_inputs(n=N, h=H, v=V, dtype=torch.float32, seed=0, weight_grad=True, device="cpu"):
    g = torch.Generator().manual_seed(seed)
    hs = torch.randn(n, h, generator=g)
    ws = torch.randn(v, h, generator=g) / h**0.5 * 2
    ht = hs + 0.5 * torch.randn(n, h, generator=g)
    wt = ws + 0.5 * torch.randn(v, h, generator=g) / h**0.5
    hs, ws, ht, wt = (x.to(device=device, dtype=dtype) for x in (hs, ws, ht, wt))
    hs.requires_grad_(True)
    ws.requires_grad_(weight_grad)
    return hs, ws, ht, wt


def naive_rows(hs, ws, ht, wt, temperature=1.0):
    """Per-row KL(p_t || p_s), everything in fp32, grads through autograd to the student only."""
    s = (hs.float() @ ws.float().t()) / temperature
    with torch.no_grad():
        t = (ht.float() @ wt.float().t()) / temperature
    return F.kl_div(F.log_softmax(s, dim=-1), F.log_softmax(t, dim=-1), reduction="none",
                    log_target=True).sum(-1)


def naive(hs, ws, ht, wt, temperature=1.0, reduction="mean"):
    rows = naive_rows(hs, ws, ht, wt, temperature)
    return {"mean": rows.mean(), "sum": rows.sum(), "none": rows}[reduction]


def loss_and_grads(fn, hs, ws, ht, wt, **kw):
    """Loss and (grad_h, grad_w) of fn on fresh leaf copies of the inputs (same values)."""
    hs = hs.detach().clone().requires_grad_(hs.requires_grad)
    ws = ws.detach().clone().requires_grad_(ws.requires_grad)
    loss = fn(hs, ws, ht, wt, **kw)
    loss.sum().backward()
    return loss.detach(), hs.grad, ws.grad


def assert_matches_naive(hs, ws, ht, wt, tol=None, **kw):
    if tol is None:
        tol = FP32_SUM_TOL if kw.get("reduction") == "sum" else FP32_TOL
    ref_kw = {k: kw[k] for k in ("temperature", "reduction") if k in kw}
    ref = loss_and_grads(naive, hs, ws, ht, wt, **ref_kw)
    ours = loss_and_grads(fused_linear_kl, hs, ws, ht, wt, **kw)
    assert ours[0].dtype == torch.float32
    for a, b in zip(ours, ref):
        if b is None:
            assert a is None
        else:
            torch.testing.assert_close(a.float(), b.float(), **tol)
    return ours


@pytest.mark.parametrize("temperature", [1.0, 2.0, 0.7])
@pytest.mark.parametrize("chunk_size", [None, 5, 1, 64])
def test_fp32_matches_naive(temperature, chunk_size, cpu_gemm):
    loss, gh, gw = assert_matches_naive(*make_inputs(), temperature=temperature, chunk_size=chunk_size)
    assert loss > 0.05  # a non-trivial case
    assert gh.dtype == gw.dtype == torch.float32


def test_single_row():
    assert_matches_naive(*make_inputs(n=1), chunk_size=4)
    assert_matches_naive(*make_inputs(n=1), temperature=2.0)


def test_default_chunk_rows():
    assert default_chunk_rows(37, 1003) == 37
    assert default_chunk_rows(10**6, 151936) == 192  # 220 rows of 128 MB, down to a multiple of 64
    assert default_chunk_rows(10**6, 151936, fused_kl_module.CPU_KERNEL_CHUNK_BYTES) == 512
    assert default_chunk_rows(10**6, 2**20) == 32  # fewer than 64 rows: not rounded
    assert default_chunk_rows(10**6, 32064, fused_kl_module.CPU_KERNEL_CHUNK_BYTES) == 1024  # row cap
    assert default_chunk_rows(10**6, 10**12) == 1
    assert default_chunk_rows(0, 10) == 1


def test_default_chunk_budget_follows_the_path(monkeypatch):
    kernel_here = row_kernel() is not None
    budgets = fused_kl_module.CPU_KERNEL_CHUNK_BYTES, fused_kl_module.DEFAULT_CHUNK_BYTES
    assert fused_kl_module.default_chunk_bytes("cpu") == budgets[0 if kernel_here else 1]
    assert fused_kl_module.default_chunk_bytes("cpu", low_precision_gemm=True) == budgets[1]
    monkeypatch.setattr(fused_kl_module, "row_kernel", lambda: None)
    assert fused_kl_module.default_chunk_bytes("cpu") == budgets[1]


@pytest.mark.parametrize("where", ["student", "teacher"])
def test_non_finite_inputs_give_a_non_finite_loss(where, cpu_gemm):
    """The trainer detects bad steps from the loss: a NaN anywhere must not be swallowed by a max or exp."""
    hs, ws, ht, wt = make_inputs()
    with torch.no_grad():
        (hs if where == "student" else ht)[3, 5] = float("nan")
    assert not torch.isfinite(fused_linear_kl(hs, ws, ht, wt, chunk_size=5))


def test_large_logits_underflow_cleanly(cpu_gemm):
    """Logits spread over thousands: most exponentials underflow to 0, nothing becomes inf or NaN."""
    hs, ws, ht, wt = make_inputs()
    assert_matches_naive(hs * 40, ws, ht * 40, wt, tol=dict(rtol=1e-4, atol=1e-4), chunk_size=5)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_low_precision_inputs_match_fp32_reference(dtype):
    hs, ws, ht, wt = make_inputs(dtype=dtype)
    loss, gh, gw = assert_matches_naive(hs, ws, ht, wt, tol=dict(rtol=2e-2, atol=1e-4), temperature=0.7,
                                        chunk_size=5)
    assert gh.dtype == gw.dtype == dtype


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_low_precision_gemm_path(dtype):
    """The accelerator code path (GEMMs in bf16/fp16, softmax in fp32), exercised on CPU at a small size."""
    hs, ws, ht, wt = make_inputs(dtype=dtype)

    def lp(hs, ws, ht, wt, shared=False):
        return _FusedLinearKL.apply(hs, ws, ht, wt, 2.0, 5, "mean", True, shared, True)

    ref = loss_and_grads(naive, hs, ws, ht, wt, temperature=2.0)
    ours = loss_and_grads(lp, hs, ws, ht, wt)
    torch.testing.assert_close(ours[0], ref[0], rtol=2e-2, atol=1e-3)
    for a, b in zip(ours[1:], ref[1:]):
        assert a.dtype == dtype
        torch.testing.assert_close(a.float(), b.float(), rtol=5e-2, atol=2e-3)
    ws = ws.detach()
    shared = lp(hs, ws, ht, ws, shared=True)
    torch.testing.assert_close(shared, naive(hs, ws, ht, ws, temperature=2.0), rtol=2e-2, atol=1e-3)


@pytest.mark.parametrize("device", DEVICES)
def test_compiled_row_function_matches_naive(device, compiled_rows_path):
    """fp32 GEMMs, temperature, a shorter last chunk (37 = 7 x 5 + 2 rows: the row count is dynamic), per-row
    weights and a trainable head, through the torch.compile'd row function (CPU: inductor's C++ code)."""
    inputs = make_inputs(device=device)
    loss, _, _ = assert_matches_naive(*inputs, temperature=0.7, chunk_size=5)
    assert loss > 0.05
    assert row_math._state["fn"] is not None
    weights = torch.linspace(-0.5, 1.5, N, device=device)
    ours = loss_and_grads(lambda *a: (fused_linear_kl(*a, chunk_size=5, reduction="none") * weights).sum(), *inputs)
    ref = loss_and_grads(lambda *a: (naive(*a, reduction="none") * weights).sum(), *inputs)
    for a, b in zip(ours, ref):
        torch.testing.assert_close(a, b, **FP32_SUM_TOL)


@pytest.mark.parametrize("device", DEVICES)
def test_compiled_row_function_low_precision_gemm(device, compiled_rows_path):
    """The accelerator path proper: bf16 head and GEMMs, bf16 logits read by the compiled function, fp32
    softmax/KL inside it, bf16 gradient out."""
    hs, ws, ht, wt = make_inputs(dtype=torch.bfloat16, device=device)

    def lp(hs, ws, ht, wt):
        return _FusedLinearKL.apply(hs, ws, ht, wt, 2.0, 5, "mean", True, False, True)

    ref = loss_and_grads(naive, hs, ws, ht, wt, temperature=2.0)
    ours = loss_and_grads(lp, hs, ws, ht, wt)
    torch.testing.assert_close(ours[0], ref[0], rtol=2e-2, atol=1e-3)
    for a, b in zip(ours[1:], ref[1:]):
        assert a.dtype == torch.bfloat16
        torch.testing.assert_close(a.float(), b.float(), rtol=5e-2, atol=2e-3)


@pytest.mark.parametrize("device", DEVICES)
def test_failed_compilation_warns_once_and_falls_back_to_eager(device, monkeypatch):
    monkeypatch.setenv(row_math.ENV_COMPILE, "1")
    monkeypatch.setitem(row_math._state, "failed", False)
    calls = []

    def broken(*args):
        calls.append(1)
        raise RuntimeError("no working compiler")

    monkeypatch.setitem(row_math._state, "fn", broken)
    inputs = make_inputs(device=device)
    with pytest.warns(RuntimeWarning, match="torch.compile of the row function failed.*no working compiler"):
        assert_matches_naive(*inputs, temperature=0.7, chunk_size=5)
    assert row_math._state["failed"] and len(calls) == 1
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert_matches_naive(*inputs, chunk_size=5)  # eager from now on, silently
    assert len(calls) == 1


def test_row_path_switch(monkeypatch):
    monkeypatch.setitem(row_math._state, "failed", False)
    monkeypatch.delenv(row_math.ENV_COMPILE, raising=False)
    cpu, gpu = torch.device("cpu"), torch.device("cuda")
    assert not row_math.use_compiled_rows(cpu) and row_math.use_compiled_rows(gpu)
    monkeypatch.setenv(row_math.ENV_COMPILE, "0")
    assert not row_math.use_compiled_rows(cpu) and not row_math.use_compiled_rows(gpu)
    monkeypatch.setenv(row_math.ENV_COMPILE, "1")
    assert row_math.use_compiled_rows(cpu)
    assert fused_kl_module.default_chunk_bytes("cpu") == fused_kl_module.DEFAULT_CHUNK_BYTES


@pytest.mark.parametrize("weight_grad", [False, True])
def test_shared_weight_fast_path_equals_general_path(weight_grad, cpu_gemm):
    hs, ws, ht, _ = make_inputs(weight_grad=weight_grad)
    ws_copy = ws.detach().clone()
    results = []
    for wt in (ws, ws_copy):  # the same tensor object -> one GEMM; a clone -> two GEMMs
        hs.grad = ws.grad = None
        loss = fused_linear_kl(hs, ws, ht, wt, temperature=0.7, chunk_size=5)
        loss.backward()
        results.append((loss.detach(), hs.grad, ws.grad))
    (la, gha, gwa), (lb, ghb, gwb) = results
    torch.testing.assert_close(la, lb, **FP32_TOL)
    torch.testing.assert_close(gha, ghb, **FP32_TOL)
    if weight_grad:
        torch.testing.assert_close(gwa, gwb, **FP32_TOL)
    else:
        assert gwa is None and gwb is None
    ref = naive(hs.detach(), ws.detach(), ht, ws_copy, temperature=0.7)
    torch.testing.assert_close(la, ref, **FP32_TOL)


def test_teacher_with_other_hidden_size_and_dtype():
    hs, ws, _, _ = make_inputs()
    _, _, ht, wt = make_inputs(h=32, seed=3)
    assert_matches_naive(hs, ws, ht, wt, chunk_size=5)
    assert_matches_naive(hs, ws, ht.double(), wt.double(), chunk_size=5)
    lp = loss_and_grads(lambda *a: _FusedLinearKL.apply(*a, 1.0, 5, "mean", True, False, True),
                        hs.bfloat16(), ws.bfloat16(), ht, wt)
    ref = loss_and_grads(naive, hs.bfloat16(), ws.bfloat16(), ht, wt)
    torch.testing.assert_close(lp[0], ref[0], rtol=2e-2, atol=1e-3)


def test_teacher_gets_no_grad():
    hs, ws, ht, wt = make_inputs()
    ht.requires_grad_(True)
    wt.requires_grad_(True)
    fused_linear_kl(hs, ws, ht, wt, chunk_size=7).backward()
    assert ht.grad is None and wt.grad is None
    assert hs.grad is not None and ws.grad is not None


def test_frozen_student_weight():
    hs, ws, ht, wt = make_inputs(weight_grad=False)
    loss, gh, gw = assert_matches_naive(hs, ws, ht, wt, chunk_size=5)
    assert gw is None and gh is not None


@pytest.mark.parametrize("weight_grad", [False, True])
def test_sum_is_n_times_mean(weight_grad):
    inputs = make_inputs(weight_grad=weight_grad)
    mean = loss_and_grads(fused_linear_kl, *inputs, chunk_size=5, reduction="mean")
    total = loss_and_grads(fused_linear_kl, *inputs, chunk_size=5, reduction="sum")
    torch.testing.assert_close(total[0], N * mean[0], **FP32_TOL)
    for a, b in zip(total[1:], mean[1:]):
        if b is not None:
            torch.testing.assert_close(a, N * b, **FP32_TOL)
    assert_matches_naive(*inputs, chunk_size=5, reduction="sum")


@pytest.mark.parametrize("weight_grad", [False, True])
def test_reduction_none_rows_and_weighted_backward(weight_grad, cpu_gemm):
    hs, ws, ht, wt = make_inputs(weight_grad=weight_grad)
    weights = torch.rand(N, generator=torch.Generator().manual_seed(1)) * 2 - 0.5

    def weighted(fn, **kw):
        return loss_and_grads(lambda *a, **k: (fn(*a, **k) * weights).sum(), hs, ws, ht, wt, **kw)

    rows = fused_linear_kl(hs, ws, ht, wt, temperature=0.7, chunk_size=5, reduction="none")
    assert rows.shape == (N,) and rows.dtype == torch.float32
    torch.testing.assert_close(rows, naive_rows(hs, ws, ht, wt, 0.7), **FP32_TOL)
    ours = weighted(fused_linear_kl, temperature=0.7, chunk_size=5, reduction="none")
    ref = weighted(naive, temperature=0.7, reduction="none")
    for a, b in zip(ours, ref):
        if b is None:
            assert a is None
        else:
            torch.testing.assert_close(a, b, **FP32_SUM_TOL)


def test_identical_inputs_give_zero_loss_and_grads(cpu_gemm):
    hs, ws, _, _ = make_inputs()
    ht, wt = hs.detach().clone(), ws.detach().clone()
    loss = fused_linear_kl(hs, ws, ht, wt, temperature=0.7, chunk_size=5)
    loss.backward()
    assert abs(loss.item()) < 1e-6
    assert hs.grad.abs().max() < 1e-6 and ws.grad.abs().max() < 1e-6


def test_upstream_grad_scale_and_no_grad_mode():
    hs, ws, ht, wt = make_inputs()
    ref = loss_and_grads(lambda *a: naive(*a) * 3.0, hs, ws, ht, wt)
    ours = loss_and_grads(lambda *a: fused_linear_kl(*a, chunk_size=5) * 3.0, hs, ws, ht, wt)
    for a, b in zip(ours, ref):
        torch.testing.assert_close(a, b, **FP32_TOL)
    with torch.no_grad():
        loss = fused_linear_kl(hs, ws, ht, wt)
    assert not loss.requires_grad
    torch.testing.assert_close(loss, naive(hs, ws, ht, wt).detach(), **FP32_TOL)


def test_autocast_region_does_not_lower_precision():
    inputs = make_inputs()
    ref = loss_and_grads(fused_linear_kl, *inputs, chunk_size=5)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        ours = loss_and_grads(fused_linear_kl, *inputs, chunk_size=5)
    for a, b in zip(ours, ref):
        torch.testing.assert_close(a, b, **FP32_TOL)


def test_global_rng_untouched(monkeypatch):
    monkeypatch.setattr(fused_kl_module, "_onednn_probe", [])  # re-run the one-time kernel probe too
    inputs = make_inputs()
    state = torch.get_rng_state()
    fused_linear_kl(*inputs).backward()
    assert torch.equal(torch.get_rng_state(), state)


def test_second_backward_raises():
    loss = fused_linear_kl(*make_inputs())
    loss.backward(retain_graph=True)
    with pytest.raises(RuntimeError, match="twice"):
        loss.backward()


def test_empty_batch():
    hs, ws, ht, wt = make_inputs(n=0)
    loss = fused_linear_kl(hs, ws, ht, wt)
    loss.backward()
    assert loss.item() == 0.0 and hs.grad.shape == (0, H) and ws.grad.abs().max() == 0
    assert fused_linear_kl(hs, ws, ht, wt, reduction="none").shape == (0,)


@pytest.mark.parametrize("kwargs", [dict(reduction="avg"), dict(temperature=0.0), dict(chunk_size=0),
                                    dict(backend="triton")])
def test_bad_arguments(kwargs):
    with pytest.raises(ValueError):
        fused_linear_kl(*make_inputs(), **kwargs)


def test_bad_shapes():
    hs, ws, ht, wt = make_inputs()
    with pytest.raises(ValueError):
        fused_linear_kl(hs, ws, ht[:-1], wt)
    with pytest.raises(ValueError):
        fused_linear_kl(hs, ws, ht, wt[:-1])


@pytest.mark.skipif(importlib.util.find_spec("liger_kernel") is None, reason="liger-kernel not installed")
def test_liger_backend_same_forward_kl():
    inputs = make_inputs()
    for reduction in ("mean", "sum"):
        ours = loss_and_grads(fused_linear_kl, *inputs, temperature=0.7, reduction=reduction)
        liger = loss_and_grads(fused_linear_kl, *inputs, temperature=0.7, reduction=reduction,
                               backend="liger", chunk_size=16)
        for a, b in zip(liger, ours):
            torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6 if reduction == "mean" else 1e-5)
