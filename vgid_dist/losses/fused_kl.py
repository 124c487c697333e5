"""Fused linear + KL(teacher || student) distillation loss that never materialises the [N, V] logits.

The naive way to compute a full-vocabulary KL between a teacher and a student LM head is to build both
[N, V] logit matrices, take two log-softmaxes and let autograd keep every intermediate alive until
backward: with N = 2048 tokens and a 150k vocabulary that is several GB of fp32 per matrix. Here the rows
are processed in chunks, and the gradient with respect to each chunk's student logits is known in closed
form ((softmax_s - p_t) / T), so it is pushed through the head (``grad_h = g @ W``, ``grad_W += g.T @ h``)
while the chunk is still in memory. No autograd graph over logits is built, and the extra memory does not
grow with N: two [chunk, V] fp32 logit buffers (student, teacher) plus the [V, H] fp32 weight gradient.

On CPU the elementwise work of a chunk (row max, exp, normalisers, KL, softmax difference) runs in a
small C++ kernel (``kl_rows.cpp``, built on first use by ``cpu_kernel.py``) that reads each row from memory
once; where it cannot be built, the same maths runs as about ten eager torch passes over the chunk and a
third [chunk, V] buffer. On accelerators the same work is one ``torch.compile``d function (``row_math.py``):
inductor fuses it into a few kernels that read the logits in the GEMM dtype, so a bf16 head needs no fp32
copy of the chunk (eager torch, with the fp32 buffers, where compilation fails). Either way the four GEMMs
(student and teacher logits, grad_h, grad_W), all in torch, take most of the time.
"""

from __future__ import annotations

import torch

from vgid_dist.losses.cpu_kernel import row_kernel
from vgid_dist.losses.row_math import CompiledRowsFailed, compiled_rows, eager_rows, use_compiled_rows

__all__ = ["CPU_KERNEL_CHUNK_BYTES", "DEFAULT_CHUNK_BYTES", "default_chunk_bytes", "default_chunk_rows",
           "fused_linear_kl"]

# Size of ONE [chunk, V] fp32 buffer, for the default chunk. Rows are rounded down to a multiple of 64.
# Eager path and accelerators (three buffers alive): the GEMMs ran at the same rate for any chunk of more
# than ~100 rows on a 2-core AVX2 EPYC (N = 1024, H = 512, V = 151936: 128 / 220 / 330 / 441 / 660 rows,
# 20.1 / 19.5 / 19.9 / 19.6 / 19.1 s of CPU, noise ~3%), so the chunk is kept small since it sets the extra
# memory. With the CPU row kernel (two buffers alive), on a 2-core AVX-512 Xeon at N = 2048, H = 512,
# V = 151936: chunks of 384 / 448 / 512 / 576 rows took 5.20 / 5.32 / 5.15 / 5.36 s (best of 3; runs
# spread ~3%), the logits GEMM running at 252 GFLOP/s with 512 rows against 231 with 256. 320 MB is 512
# rows at V = 152k: 0.6 GB of logits + 0.3 GB of weight gradient.
DEFAULT_CHUNK_BYTES = 128 * 2**20
CPU_KERNEL_CHUNK_BYTES = 320 * 2**20
# ...and never more rows than this: at small vocabularies the byte budget would give thousands of rows
# for no speed (N = 8192, V = 32064 with the row kernel: 1024 rows 4.22 s / 375 MB, 2560 rows 4.19 s /
# 763 MB).
MAX_CHUNK_ROWS = 1024

# Logit GEMMs (h @ W.T) on CPU: oneDNN's fp32 linear (the kernel TorchInductor uses for linear layers on CPU)
# or torch.mm (MKL). Measured on this layout: on a 2-core AVX2 EPYC oneDNN ran ~37 GFLOP/s per core against
# ~31 for torch.mm; on a 2-core AVX-512 Xeon it was the other way round (190-207 against 231-260 GFLOP/s
# for both cores), and oneDNN returns fresh tensors whose first-touch page faults cost another ~80 ms per
# [512, 152k] chunk. So oneDNN is used only where torch dispatches to AVX2 (the op is probed once; any
# failure falls back to torch.mm). Set to False to force torch.mm everywhere.
USE_ONEDNN_LINEAR = True
_ONEDNN_ISAS = ("AVX2",)
_onednn_probe: list = []

_REDUCTIONS = ("mean", "sum", "none")
_BACKENDS = ("auto", "torch", "liger")
_LOW_PRECISION = (torch.float16, torch.bfloat16)


def default_chunk_rows(num_rows: int, vocab_size: int, chunk_bytes: int = DEFAULT_CHUNK_BYTES) -> int:
    """Rows per chunk so that one [rows, vocab_size] fp32 buffer takes at most about ``chunk_bytes``.

    At least 1; a multiple of 64 when there is room for 64 rows; at most ``MAX_CHUNK_ROWS`` and
    ``num_rows``.
    """
    rows = min(MAX_CHUNK_ROWS, max(1, chunk_bytes // (4 * max(1, vocab_size))))
    if rows >= 64:
        rows -= rows % 64
    return max(1, min(rows, num_rows))


def _row_kernel_for(device: torch.device, low_precision_gemm: bool):
    """The CPU row kernel if this call uses it (fp32 GEMMs on CPU, the kernel available and the compiled row
    function not chosen instead), else None."""
    if device.type != "cpu" or low_precision_gemm or use_compiled_rows(device):
        return None
    return row_kernel()


def default_chunk_bytes(device: torch.device | str, low_precision_gemm: bool = False) -> int:
    """The per-buffer budget of the default chunk for a call on ``device``: ``CPU_KERNEL_CHUNK_BYTES``
    where the CPU row kernel runs (two buffers alive), else ``DEFAULT_CHUNK_BYTES`` (three)."""
    kernel = _row_kernel_for(torch.device(device), low_precision_gemm)
    return CPU_KERNEL_CHUNK_BYTES if kernel is not None else DEFAULT_CHUNK_BYTES


def _onednn_linear():
    """oneDNN fp32 ``linear(x, w) = x @ w.T`` returning a new tensor, or None if unavailable."""
    if not USE_ONEDNN_LINEAR or torch.backends.cpu.get_cpu_capability() not in _ONEDNN_ISAS:
        return None
    if not _onednn_probe:
        linear = None
        try:
            if torch.backends.mkldnn.is_available():
                op = torch.ops.mkldnn._linear_pointwise

                def linear(x, w):
                    return op(x, w, None, "none", [], "")

                # Deterministic probe values: must not touch the global RNG.
                x = torch.arange(15.0).view(3, 5).div_(7)
                w = torch.arange(35.0).view(7, 5).cos_()
                if not torch.allclose(linear(x, w), x @ w.t(), rtol=1e-5, atol=1e-6):
                    linear = None
        except Exception:  # private op: absent or changed in this torch build
            linear = None
        _onednn_probe.append(linear)
    return _onednn_probe[0]


def _kl_chunks(h_s, w_s, h_t, w_t, **opts) -> tuple[torch.Tensor | None, torch.Tensor | None, torch.Tensor | None]:
    """Per-row KL [N] (fp32) and, if asked, grads of ``sum_i row_scale_i * KL_i`` w.r.t. h_s and w_s.

    Chooses the row path (the compiled row function on accelerators, the CPU row kernel, or eager torch) and
    runs ``_chunk_loop``; if the compiled function cannot be built here, the call is redone eagerly (the loop
    writes nothing but its own fresh outputs)."""
    if h_s.device.type in ("cpu", "cuda") and torch.is_autocast_enabled(h_s.device.type):
        # The dtypes below are chosen on purpose (fp32 softmax, fp32 GEMMs on CPU); an enclosing autocast
        # region would silently turn the fp32 GEMMs into bf16 ones.
        with torch.autocast(h_s.device.type, enabled=False):
            return _kl_chunks(h_s, w_s, h_t, w_t, **opts)
    if use_compiled_rows(h_s.device):
        try:
            return _chunk_loop(h_s, w_s, h_t, w_t, rows_path="compiled", **opts)
        except CompiledRowsFailed:
            pass  # warned once; use_compiled_rows() is False from now on
    kernel = _row_kernel_for(h_s.device, opts["low_precision_gemm"])
    return _chunk_loop(h_s, w_s, h_t, w_t, rows_path="eager" if kernel is None else "kernel", kernel=kernel,
                       **opts)


def _chunk_logits(hs, ht, ws, wt, both, s, t, *, shared_weight, inv_temp, linear, low_precision_gemm,
                  rows_path):
    """The [c, V] student and teacher logits of one chunk, written into the views ``both``/``s``/``t`` of the
    logits buffer (or returned fresh by oneDNN). Returns ``(both, s, t)``.

    Temperature: with fp32 GEMMs the [c, H] inputs are scaled (H/V of the work of scaling logits); the eager
    low-precision path scales its fp32 logits copy; the compiled path scales inside the row function."""
    if low_precision_gemm and rows_path != "compiled":
        # Eager path: the low-precision GEMM outputs are copied into the fp32 buffer and scaled there.
        if shared_weight:
            both.copy_(torch.mm(torch.cat([hs, ht]), ws.t()))
        else:
            s.copy_(torch.mm(hs, ws.t()))
            t.copy_(torch.mm(ht, wt.t()))
        if inv_temp != 1.0:
            both.mul_(inv_temp)
        return both, s, t
    if not low_precision_gemm and inv_temp != 1.0:
        hs, ht = hs * inv_temp, ht * inv_temp
    if linear is not None:
        if shared_weight:
            both = linear(torch.cat([hs, ht]), ws)
            return both, both[: hs.shape[0]], both[hs.shape[0]:]
        return None, linear(hs, ws), linear(ht, wt)
    # Into the logits buffer, in the GEMM dtype (the compiled path's low-precision logits need no fp32 copy).
    if shared_weight:
        torch.mm(torch.cat([hs, ht]), ws.t(), out=both)
    else:
        torch.mm(hs, ws.t(), out=s)
        torch.mm(ht, wt.t(), out=t)
    return both, s, t


def _push_through_head(g, coef, h_chunk, ws, grad_h_out, grad_w, *, first: bool) -> None:
    """Chunk gradients through the head: ``grad_h_out = (g @ W) * coef`` and ``grad_w (+)= g.T @ (h * coef)``.

    g: [c, V] logit gradient in the GEMM dtype; coef: [c, 1] fp32; grad_w: the fp32 [V, H] accumulator
    (written by the first chunk, accumulated after) or None."""
    if grad_h_out is not None:
        grad_h_out.copy_(torch.mm(g, ws).to(torch.float32).mul_(coef))
    if grad_w is None:
        return
    hs_scaled = h_chunk.to(torch.float32) * coef
    if g.dtype != torch.float32:
        part = torch.mm(g.t(), hs_scaled.to(g.dtype))
        if first:
            grad_w.copy_(part)
        else:
            grad_w.add_(part)
    elif first:
        torch.mm(g.t(), hs_scaled, out=grad_w)
    else:
        grad_w.addmm_(g.t(), hs_scaled)


def _chunk_rows(rows_path, s, t, both, kl_out, need_grads, *, kernel, kl_rows, exp_buf, inv_temp,
                low_precision_gemm, gemm_dtype):
    """The row work of one chunk on ``rows_path``: writes the chunk's per-row KL into ``kl_out`` (if given) and
    returns ``(g, z_s)``, the [c, V] logit gradient and, where g is not yet normalised (eager fp32 path), the
    student's row normalisers it must be divided by (else None)."""
    c, v = s.shape
    if rows_path == "kernel":
        # One fused pass per row (max, exp, normalisers, KL, softmax_s - p_t), in place in s.
        kernel(s, t, kl_rows[:c], need_grads)
        if kl_out is not None:
            kl_out.copy_(kl_rows[:c])
        return s, None
    if rows_path == "compiled":
        chunk_kl, g = compiled_rows(s, t, inv_temp if low_precision_gemm else 1.0, need_grads, gemm_dtype)
        if kl_out is not None:
            kl_out.copy_(chunk_kl)
        return g, None
    g, z_s = eager_rows(s, t, exp_buf[: c * v].view(c, v), both, kl_out, need_grads)
    if need_grads and low_precision_gemm:
        # Normalise before the cast: the bracket can reach z_s / z_t (up to V), beyond fp16 range, while
        # softmax_s - p_t lies in [-1, 1]. The remaining factor stays in fp32 on the [c, H] side.
        return g.mul_(z_s.reciprocal().unsqueeze(1)).to(gemm_dtype), None
    return g, z_s


def _chunk_loop(h_s: torch.Tensor, w_s: torch.Tensor, h_t: torch.Tensor, w_t: torch.Tensor, *, shared_weight: bool,
                inv_temp: float, chunk_rows: int | None, row_scale: float | torch.Tensor, need_grad_h: bool,
                need_grad_w: bool, want_loss: bool, low_precision_gemm: bool, rows_path: str, kernel=None) -> tuple[torch.Tensor | None, torch.Tensor | None, torch.Tensor | None]:
    """``_kl_chunks`` on one row path: ``"kernel"`` (``kernel``, the CPU row kernel), ``"compiled"`` or
    ``"eager"``. ``chunk_rows`` None: the default chunk for this device and path (``default_chunk_bytes``)."""
    n, v = h_s.shape[0], w_s.shape[0]
    device = h_s.device
    f32 = torch.float32
    if low_precision_gemm:
        # Accelerator with a bf16/fp16 head: GEMMs stay in each weight's dtype (tensor cores), softmax and
        # everything after it in fp32.
        gemm_dtype = w_s.dtype
        ws, wt = w_s, w_t
    else:
        # fp32 GEMMs. For low-precision weights on CPU this upcasts the head once per call ([V, H] fp32):
        # CPU bf16/fp16 GEMMs without native support are 10-100x slower than fp32 ones.
        gemm_dtype = f32
        ws = w_s.to(f32)
        wt = ws if shared_weight else w_t.to(f32)

    linear = _onednn_linear() if device.type == "cpu" and not low_precision_gemm else None
    if chunk_rows is None:
        budget = CPU_KERNEL_CHUNK_BYTES if rows_path == "kernel" else DEFAULT_CHUNK_BYTES
        rows = default_chunk_rows(n, v, budget)
    else:
        rows = max(1, min(chunk_rows, n))
    # Logits of the student (first c rows) and teacher (next c rows) share one flat buffer, so the shared
    # weight case is a single GEMM and the max-subtraction is one op over both; the last, shorter chunk
    # takes a prefix of the same storage instead of reallocating. (oneDNN has no out=: it returns fresh
    # logit tensors instead, freed before the next chunk's are made.) The row kernel works in place in the
    # logits; the eager path needs a third buffer for the exponentials; the compiled path reads the logits in
    # the GEMM dtype and returns a fresh gradient chunk.
    logit_dtype = gemm_dtype if rows_path == "compiled" else f32
    logits_buf = None if linear is not None else torch.empty(2 * rows * v, dtype=logit_dtype, device=device)
    exp_buf = torch.empty(rows * v, dtype=f32, device=device) if rows_path == "eager" else None
    kl_rows = torch.empty(rows, dtype=torch.float64) if rows_path == "kernel" else None  # kernel's KL output

    kl = torch.empty(n, dtype=f32, device=device) if want_loss else None
    grad_h = torch.empty_like(h_s) if need_grad_h else None
    # fp32 accumulator: summing many chunk contributions in bf16 would lose the small ones. Not zeroed:
    # the first chunk writes it (saves a pass over [V, H]).
    grad_w = torch.empty(w_s.shape, dtype=f32, device=device) if need_grad_w else None
    need_grads = need_grad_h or need_grad_w
    per_row_scale = isinstance(row_scale, torch.Tensor)

    for start in range(0, n, rows):
        end = min(start + rows, n)
        c = end - start
        # Release the previous chunk's logits before this chunk's are allocated (oneDNN path): 2 alive, not 4.
        both = s = t = g = None
        if logits_buf is not None:
            both = logits_buf[: 2 * c * v].view(2 * c, v)
            s, t = both[:c], both[c:]
        both, s, t = _chunk_logits(h_s[start:end].to(gemm_dtype), h_t[start:end].to(wt.dtype), ws, wt, both, s, t,
                                   shared_weight=shared_weight, inv_temp=inv_temp, linear=linear,
                                   low_precision_gemm=low_precision_gemm, rows_path=rows_path)
        g, z_s = _chunk_rows(rows_path, s, t, both, kl[start:end] if want_loss else None, need_grads,
                             kernel=kernel, kl_rows=kl_rows, exp_buf=exp_buf, inv_temp=inv_temp,
                             low_precision_gemm=low_precision_gemm, gemm_dtype=gemm_dtype)
        if need_grads:
            # The reduction scale, 1 / T and (eager fp32 path) 1 / z_s are applied to the [c, H] operands of
            # the two GEMMs rather than to g: H/V of the work.
            coef = (row_scale[start:end] if per_row_scale else torch.full((c,), row_scale, dtype=f32,
                                                                           device=device)) * inv_temp
            coef = (coef if z_s is None else coef / z_s).unsqueeze(1)
            _push_through_head(g, coef, h_s[start:end], ws, grad_h[start:end] if need_grad_h else None, grad_w,
                               first=start == 0)

    if grad_w is not None and n == 0:
        grad_w.zero_()
    if grad_w is not None and grad_w.dtype != w_s.dtype:
        grad_w = grad_w.to(w_s.dtype)
    return kl, grad_h, grad_w


class _FusedLinearKL(torch.autograd.Function):
    """Computes loss and student grads together in forward; backward only rescales them.

    For ``reduction="none"`` with a trainable head the weight grad depends on the per-row upstream grads,
    which are unknown in forward, so that case saves the inputs and recomputes chunk by chunk in backward.
    """

    @staticmethod
    def forward(ctx, h_s, w_s, h_t, w_t, temperature, chunk_rows, reduction, want_grads, shared_weight,
                low_precision_gemm):
        n = h_s.shape[0]
        need_h = want_grads and ctx.needs_input_grad[0]
        need_w = want_grads and ctx.needs_input_grad[1]
        opts = dict(shared_weight=shared_weight, inv_temp=1.0 / temperature, chunk_rows=chunk_rows,
                    low_precision_gemm=low_precision_gemm)
        ctx.opts = opts
        ctx.reduction = reduction
        ctx.recompute = reduction == "none" and need_w
        if ctx.recompute:
            kl, _, _ = _kl_chunks(h_s, w_s, h_t, w_t, row_scale=1.0, need_grad_h=False, need_grad_w=False,
                                  want_loss=True, **opts)
            ctx.save_for_backward(h_s, w_s, h_t, w_t)
        else:
            scale = 1.0 / max(n, 1) if reduction == "mean" else 1.0
            kl, grad_h, grad_w = _kl_chunks(h_s, w_s, h_t, w_t, row_scale=scale, need_grad_h=need_h,
                                            need_grad_w=need_w, want_loss=True, **opts)
            # Kept as attributes, not saved tensors, so backward can hand them to autograd as the only
            # reference: AccumulateGrad then adopts the [V, H] weight grad instead of copying it.
            ctx.grads = (grad_h, grad_w)
        if reduction == "mean":
            return kl.sum() / max(n, 1)
        if reduction == "sum":
            return kl.sum()
        return kl

    @staticmethod
    def backward(ctx, grad_out):
        nones = (None,) * 8
        if ctx.recompute:
            h_s, w_s, h_t, w_t = ctx.saved_tensors
            _, grad_h, grad_w = _kl_chunks(h_s, w_s, h_t, w_t, row_scale=grad_out.to(torch.float32),
                                           need_grad_h=ctx.needs_input_grad[0], need_grad_w=True,
                                           want_loss=False, **ctx.opts)
            return (grad_h, grad_w, *nones)
        if ctx.grads is None:
            raise RuntimeError("fused_linear_kl: backward through the same call twice (retain_graph=True) "
                               "is not supported; the gradients were handed over on the first backward")
        grad_h, grad_w = ctx.grads
        ctx.grads = None
        if ctx.reduction == "none":
            if grad_h is not None:
                grad_h.mul_(grad_out.unsqueeze(1).to(grad_h.dtype))
        elif grad_out.device.type != "cpu" or float(grad_out) != 1.0:
            # In place: nothing else references these tensors. (The check is skipped on accelerators to
            # avoid a host sync.)
            for g in (grad_h, grad_w):
                if g is not None:
                    g.mul_(grad_out.to(g.dtype))
        return (grad_h, grad_w, *nones)


def _liger_kl(h_s, w_s, h_t, w_t, temperature, chunk_size, reduction):
    from liger_kernel.chunked_loss import LigerFusedLinearJSDLoss

    if reduction == "none":
        raise ValueError("backend='liger' supports reduction 'mean' and 'sum' only")
    n = h_s.shape[0]
    # beta=0 makes Liger's generalised JSD the forward KL(teacher || student); it divides the summed KL by
    # the number of non-ignored labels, i.e. by N with all-zero labels, which is our "mean".
    loss_fn = LigerFusedLinearJSDLoss(weight_hard_loss=0.0, weight_soft_loss=1.0, beta=0.0,
                                      temperature=temperature, compiled=h_s.is_cuda,
                                      chunk_size=chunk_size or 1024)
    labels = torch.zeros(n, dtype=torch.long, device=h_s.device)
    loss = loss_fn(h_s, w_s, h_t.detach(), w_t.detach(), labels).float()
    return loss * n if reduction == "sum" else loss


def _check_inputs(student_hidden, student_weight, teacher_hidden, teacher_weight, *, temperature, chunk_size,
                  reduction, backend) -> None:
    """Shapes, dtypes and options of ``fused_linear_kl``, checked before any GEMM."""
    if reduction not in _REDUCTIONS:
        raise ValueError(f"reduction must be one of {_REDUCTIONS}, got {reduction!r}")
    if backend not in _BACKENDS:
        raise ValueError(f"backend must be one of {_BACKENDS}, got {backend!r}")
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    if chunk_size is not None and chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    for name, x in (("student_hidden", student_hidden), ("student_weight", student_weight),
                    ("teacher_hidden", teacher_hidden), ("teacher_weight", teacher_weight)):
        if x.dim() != 2 or not x.is_floating_point():
            raise ValueError(f"{name} must be a 2-D float tensor, got {tuple(x.shape)} {x.dtype}")
    n, v = student_hidden.shape[0], student_weight.shape[0]
    if teacher_hidden.shape[0] != n:
        raise ValueError(f"student_hidden has {n} rows but teacher_hidden has {teacher_hidden.shape[0]}")
    if teacher_weight.shape[0] != v:
        raise ValueError(f"student vocabulary {v} != teacher vocabulary {teacher_weight.shape[0]}")
    if student_hidden.shape[1] != student_weight.shape[1]:
        raise ValueError(f"student_hidden {tuple(student_hidden.shape)} does not match student_weight "
                         f"{tuple(student_weight.shape)}")
    if teacher_hidden.shape[1] != teacher_weight.shape[1]:
        raise ValueError(f"teacher_hidden {tuple(teacher_hidden.shape)} does not match teacher_weight "
                         f"{tuple(teacher_weight.shape)}")


def fused_linear_kl(
    student_hidden: torch.Tensor,
    student_weight: torch.Tensor,
    teacher_hidden: torch.Tensor,
    teacher_weight: torch.Tensor,
    *,
    temperature: float = 1.0,
    chunk_size: int | None = None,
    reduction: str = "mean",
    backend: str = "auto",
) -> torch.Tensor:
    """KL(softmax(teacher_hidden @ teacher_weight.T / T) || softmax(student_hidden @ student_weight.T / T)).

    Forward KL with the teacher as target, ``sum_v p_t(v) * (log p_t(v) - log p_s(v))`` per row, computed
    without materialising the [N, V] logits (see the module docstring).

    Args:
        student_hidden: [N, H_s] final hidden states of the student (fp32, bf16 or fp16).
        student_weight: [V, H_s] student LM head (no bias). Gets a gradient iff it requires grad.
        teacher_hidden: [N, H_t] teacher hidden states, row i aligned with student row i. Never gets a
            gradient (treated as detached even if it requires grad).
        teacher_weight: [V, H_t] teacher LM head. Never gets a gradient. Passing the very same tensor
            object as ``student_weight`` (frozen shared head, LoRA) computes both logit chunks in one GEMM.
        temperature: both logits are divided by T before the softmaxes. The result is NOT multiplied by
            T**2 (the Hinton et al. gradient-scale convention); callers that want it multiply themselves.
        chunk_size: rows per chunk; None picks about ``CPU_KERNEL_CHUNK_BYTES`` per [chunk, V] fp32 buffer
            where the CPU row kernel runs, else ``DEFAULT_CHUNK_BYTES``. Any value >= 1 works, whether or
            not it divides N.
        reduction: "mean" over the N rows, "sum" over the rows (for callers that normalise by a global
            token count), or "none" for the [N] per-row values (differentiable too).
        backend: "torch" (this implementation, any device), "liger" (Liger-Kernel's
            LigerFusedLinearJSDLoss with beta=0; "mean"/"sum" only; its chunking and bf16 softmax
            precision differ) or "auto", which is currently always "torch".

    Returns:
        fp32 scalar ("mean", "sum") or fp32 [N] ("none"). N = 0 gives 0 for "mean" and "sum".

    Dtypes: softmax, KL and the weight-grad accumulation are fp32. On CPU all GEMMs run in fp32
    (low-precision heads are upcast once per call); on accelerators bf16/fp16 heads keep their dtype for
    the GEMMs. Grads come back in the dtypes of student_hidden / student_weight.

    Memory: two [chunk, V] fp32 buffers where the CPU row kernel runs; on accelerators three [chunk, V]
    buffers in the GEMM dtype (two of logits, the gradient); three fp32 ones on the eager path. Plus, when the
    head is trainable, one [V, H] fp32 grad buffer.
    Backward reuses the grads computed in forward, so a second backward through the same call (retain_graph)
    raises, except for reduction="none" with a trainable head, which recomputes.
    """
    _check_inputs(student_hidden, student_weight, teacher_hidden, teacher_weight, temperature=temperature,
                  chunk_size=chunk_size, reduction=reduction, backend=backend)
    if backend == "liger":
        return _liger_kl(student_hidden, student_weight, teacher_hidden, teacher_weight, temperature,
                         chunk_size, reduction)

    shared = student_weight is teacher_weight
    low_precision_gemm = student_hidden.device.type != "cpu" and student_weight.dtype in _LOW_PRECISION
    return _FusedLinearKL.apply(student_hidden, student_weight, teacher_hidden.detach(),
                                teacher_weight.detach(), float(temperature),
                                None if chunk_size is None else int(chunk_size), reduction,
                                torch.is_grad_enabled(), shared, low_precision_gemm)
