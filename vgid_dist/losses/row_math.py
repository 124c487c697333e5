"""The elementwise work of one fused-KL chunk in torch: per-row softmax of the student and teacher logits, the
forward KL of each row and the student's logit gradient ``softmax(s) - softmax(t)``.

Two torch versions of what ``kl_rows.cpp`` does on CPU:

- ``eager_rows``: in-place eager ops over fp32 buffers the caller owns (about ten passes over the chunk, one
  extra [chunk, V] fp32 buffer). The path of CPUs without the row kernel, and of accelerators where
  compilation failed or is switched off.
- ``softmax_kl_rows`` through ``torch.compile`` (``compiled_rows``): the path of accelerators. Inductor fuses the
  row maxima, exponentials, the three row sums and the gradient into a few generated kernels that read the
  logits in their own dtype (bf16 logits straight from the GEMM: no fp32 copy of the chunk) and write only the
  [chunk] results and the gradient, in the GEMM dtype. ``VGID_KL_COMPILE=0`` keeps accelerators on
  ``eager_rows``; ``VGID_KL_COMPILE=1`` also uses the compiled function on CPU instead of the row kernel (how
  the tests check the compiled function where no accelerator is present).

If compilation fails, ``CompiledRowsFailed`` is raised once after one warning; the caller redoes the call
with ``eager_rows`` and every later call goes there directly.
"""

from __future__ import annotations

import os
import warnings

import torch

__all__ = ["ENV_COMPILE", "CompiledRowsFailed", "compiled_rows", "eager_rows", "softmax_kl_rows",
           "use_compiled_rows"]

ENV_COMPILE = "VGID_KL_COMPILE"  # "0": never compile; "1": compile on CPU too; unset/"auto": accelerators only
_OFF = ("0", "off", "false", "no")
_ON = ("1", "on", "true", "yes")
_state: dict = {"fn": None, "failed": False}


class CompiledRowsFailed(RuntimeError):
    """torch.compile could not build the row function here; the eager path is to be used instead."""


def use_compiled_rows(device: torch.device) -> bool:
    """Whether a chunk on ``device`` goes through the compiled row function (see the module docstring)."""
    if _state["failed"]:
        return False
    switch = os.environ.get(ENV_COMPILE, "auto").strip().lower()
    if switch in _OFF:
        return False
    return switch in _ON or device.type != "cpu"


def softmax_kl_rows(s: torch.Tensor, t: torch.Tensor, inv_temp: float, want_grad: bool,
                    grad_dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Per-row forward KL and logit gradient of [rows, V] student/teacher logits (any float dtype).

    Returns ``kl`` [rows] fp32, ``KL(softmax(t * inv_temp) || softmax(s * inv_temp))`` per row, and, if
    ``want_grad``, ``softmax(s * inv_temp) - softmax(t * inv_temp)`` [rows, V] in ``grad_dtype`` (else None).
    Everything between is fp32. Written as plain tensor ops so that inductor can fuse it; eager, it allocates
    several [rows, V] fp32 temporaries.
    """
    s = s.float() * inv_temp
    t = t.float() * inv_temp
    # Shifted by the row max so exp() cannot overflow. log p_t - log p_s = (t' - s') - log z_t + log z_s:
    # the KL needs only that difference and the two normalisers, never log-softmax matrices. Where exp(t')
    # underflows to 0 the term is exactly 0 (t' - s' is finite): no 0 * log 0 NaN.
    s = s - s.amax(dim=1, keepdim=True)
    t = t - t.amax(dim=1, keepdim=True)
    exp_s, exp_t = s.exp(), t.exp()
    z_s, z_t = exp_s.sum(dim=1), exp_t.sum(dim=1)
    kl = (exp_t * (t - s)).sum(dim=1) / z_t + torch.log(z_s / z_t)
    if not want_grad:
        return kl, None
    grad = exp_s / z_s.unsqueeze(1) - exp_t / z_t.unsqueeze(1)
    return kl, grad.to(grad_dtype)


def compiled_rows(s: torch.Tensor, t: torch.Tensor, inv_temp: float, want_grad: bool,
                  grad_dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor | None]:
    """``softmax_kl_rows`` through torch.compile (compiled on first use, once per process and signature).

    The row count is marked dynamic, so the shorter last chunk of a call, and the varying answer-token counts
    of training steps, reuse one compiled kernel. Raises ``CompiledRowsFailed`` (after one warning) if
    compilation fails; out-of-memory errors propagate unchanged.
    """
    if _state["fn"] is None:
        _state["fn"] = torch.compile(softmax_kl_rows, fullgraph=True)
    for x in (s, t):
        torch._dynamo.maybe_mark_dynamic(x, 0)
    try:
        return _state["fn"](s, t, inv_temp, want_grad, grad_dtype)
    except torch.OutOfMemoryError:
        raise
    except Exception as exc:  # noqa: BLE001 - a compiler failure only costs memory and speed
        _state["failed"] = True
        reason = " ".join(f"{type(exc).__name__}: {exc}".split())[:300]
        warnings.warn(f"fused KL: torch.compile of the row function failed on {s.device.type} ({reason}); "
                      f"the eager path is used from now on (same results, more memory). Set {ENV_COMPILE}=0 "
                      "to choose it without compiling.", RuntimeWarning, stacklevel=2)
        raise CompiledRowsFailed(reason) from exc


def eager_rows(s, t, e, both, kl_out, need_grads):
    """Pure-torch version of the row kernel, for [c, V] fp32 logits s, t (in place) and an exp buffer e.

    Writes the per-row KL into ``kl_out`` (if given) and returns ``(g, z_s)``, where
    ``g = softmax(s) - p_t`` scaled by ``z_s`` (the row normaliser of the student), i.e. the caller divides
    by ``z_s``, which is cheaper on the [c, H] side. ``both`` is the [2c, V] view of s and t when they are
    adjacent in one buffer (one max-subtraction over both), else None.
    """
    # Shift by the row max so exp() cannot overflow; s', t' below are the shifted logits.
    if both is None:
        s.sub_(s.amax(dim=1, keepdim=True))
        t.sub_(t.amax(dim=1, keepdim=True))
    else:
        both.sub_(both.amax(dim=1, keepdim=True))
    torch.exp(s, out=e)
    z_s = e.sum(dim=1)
    # s <- t' - s' (see softmax_kl_rows for why the difference and the normalisers suffice).
    torch.sub(t, s, out=s)
    t.exp_()
    z_t = t.sum(dim=1)
    if kl_out is not None:
        # sum_v exp(t'_v) (t'_v - s'_v), formed in place (t' - s' is not needed afterwards). Not bmm: its
        # sequential fp32 accumulation over V = 150k loses ~1e-4 relative, torch.sum's cascade does not.
        dot = s.mul_(t).sum(dim=1)
        kl_out.copy_(dot / z_t + torch.log(z_s / z_t))
    if not need_grads:
        return None, z_s
    # dKL/ds' = softmax(s') - p_t = (e - t * z_s / z_t) / z_s. Only the bracket is formed in place (one
    # pass over [c, V]).
    e.addcmul_(t, (z_s / z_t).neg_().unsqueeze(1))
    return e, z_s
