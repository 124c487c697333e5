"""Benchmark of the fused linear + KL(teacher || student) loss: naive vs ours vs Liger-Kernel.

Measures forward + ``loss.backward()`` (student hidden and student head trainable, teacher frozen) and
prints one JSON line per configuration to stdout:

    {"impl", "device", "dtype", "N", "H", "V", "seconds", "peak_extra_mb", "loss", ...}

Implementations:
    naive  materialised [N, V] logits, F.log_softmax, F.kl_div(batchmean), autograd.
    ours   vgid_dist.losses.fused_kl.fused_linear_kl (reduction="mean"); on CPU with its C++ row kernel
           unless VGID_CPU_KERNEL=0 (the JSON says which: "cpu_kernel" is the ISA it was built for, or null).
    liger  liger_kernel.chunked_loss.LigerFusedLinearJSDLoss(weight_hard_loss=0, weight_soft_loss=1,
           beta=0) with its defaults (chunk_size=1024, compiled=True). beta=0 is Liger's forward
           KL(teacher || student); it divides the summed KL by the number of non-ignored labels (all-zero
           labels here, so N) and divides both logits by the temperature without a T**2 factor, i.e. the
           same quantity as ours with reduction="mean". Its soft loss takes the log-softmax in the input
           dtype (bf16 inputs -> bf16 softmax). Optional dependency: the ``bench`` extra.

Each measurement runs in its own subprocess (the script re-invokes itself with ``--one``), so allocator
state and peak memory of one run cannot leak into another. Peak memory on CPU is VmHWM minus the RSS
after the inputs are created (VmHWM is reset through /proc/self/clear_refs where the kernel allows it;
inputs are created in place so no temporary inflates it); on CUDA it is max_memory_allocated minus the
allocation after the inputs. Both include the [V, H] weight gradient, which every implementation produces.

Timing: ``--warmup`` runs (default 1; it also absorbs Liger's torch.compile) and then the best of
``--repeat`` runs (default 1: at the larger sizes one CPU run takes a minute, and the spread between runs
is dominated by other processes on the machine, not by the implementation). Seeds are fixed.

``--check`` instead compares loss and gradients of ours (and Liger) against naive at the given sizes.

Examples:
    python benchmarks/fused_kl.py                              # the whole grid
    python benchmarks/fused_kl.py --n 2048 --v 151936 --repeat 2
    python benchmarks/fused_kl.py --n 2048 --v 151936 --check
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import subprocess
import sys
import time
from pathlib import Path

IMPLS = ("naive", "ours", "liger")
# Naive keeps about this many [N, V] fp32 matrices alive at its peak (measured: 8.3 GB at N=2048,
# V=151936, where one matrix is 1.24 GB), used to skip configurations that would exhaust memory.
NAIVE_MATRICES = 7
LIGER_CHUNK = 1024


def _status_kb(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise KeyError(field)


def _mem_available_bytes() -> int:
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    return 0


def _reset_peak_rss() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


class PeakMemory:
    """Peak memory above a baseline taken when ``start`` is called (MB)."""

    def __init__(self, device):
        self.device = device

    def start(self):
        gc.collect()
        if self.device.type == "cuda":
            import torch

            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            self.base = torch.cuda.memory_allocated()
        else:
            _reset_peak_rss()
            self.base = _status_kb("VmRSS") * 1024

    def peak_mb(self) -> float:
        """The absolute peak: ``torch.cuda.max_memory_allocated`` on CUDA, VmHWM on CPU."""
        if self.device.type == "cuda":
            import torch

            torch.cuda.synchronize()
            return torch.cuda.max_memory_allocated() / 2**20
        return _status_kb("VmHWM") / 1024

    def peak_extra_mb(self) -> float:
        return round(self.peak_mb() - self.base / 2**20, 1)


def make_inputs(n, h, v, dtype, device, seed=0):
    """Student/teacher hidden states and heads; built in place so no temporary raises the peak RSS."""
    import torch

    g = torch.Generator(device=device).manual_seed(seed)

    def randn(*shape, scale=1.0):
        x = torch.empty(*shape, dtype=dtype, device=device)
        x.normal_(generator=g)
        return x.mul_(scale)

    hs = randn(n, h).requires_grad_(True)
    ws = randn(v, h, scale=2.0 / h**0.5).requires_grad_(True)
    ht = randn(n, h)
    wt = randn(v, h, scale=2.0 / h**0.5)
    return hs, ws, ht, wt


def make_loss_fn(impl, n, temperature, chunk_size):
    import torch
    import torch.nn.functional as F

    if impl == "naive":
        def naive(hs, ws, ht, wt):
            s = (hs @ ws.t()).float() / temperature
            with torch.no_grad():
                t = (ht @ wt.t()).float() / temperature
            return F.kl_div(F.log_softmax(s, dim=-1), F.log_softmax(t, dim=-1), reduction="batchmean",
                            log_target=True)
        return naive
    if impl == "ours":
        from vgid_dist.losses.fused_kl import fused_linear_kl

        def ours(hs, ws, ht, wt):
            return fused_linear_kl(hs, ws, ht, wt, temperature=temperature, chunk_size=chunk_size)
        return ours
    if impl == "liger":
        from liger_kernel.chunked_loss import LigerFusedLinearJSDLoss

        loss_fn = LigerFusedLinearJSDLoss(weight_hard_loss=0.0, weight_soft_loss=1.0, beta=0.0,
                                          temperature=temperature, chunk_size=chunk_size or LIGER_CHUNK)
        labels = None

        def liger(hs, ws, ht, wt):
            nonlocal labels
            if labels is None:
                labels = torch.zeros(hs.shape[0], dtype=torch.long, device=hs.device)
            return loss_fn(hs, ws, ht, wt, labels)
        return liger
    raise ValueError(impl)


def run_one(cfg: dict) -> dict:
    import torch

    impl, n, h, v = cfg["impl"], int(cfg["n"]), int(cfg["h"]), int(cfg["v"])
    if cfg.get("threads") not in (None, "None", ""):
        torch.set_num_threads(int(cfg["threads"]))
    device = torch.device(cfg["device"])
    dtype = getattr(torch, cfg["dtype"])
    chunk = int(cfg["chunk"]) if cfg.get("chunk") not in (None, "None", "") else None
    temperature = float(cfg.get("temperature", 1.0))
    out = {"impl": impl, "device": str(device), "dtype": cfg["dtype"], "N": n, "H": h, "V": v,
           "temperature": temperature, "threads": torch.get_num_threads()}
    try:
        loss_fn = make_loss_fn(impl, n, temperature, chunk)
    except ImportError as e:
        return {**out, "error": f"{type(e).__name__}: {e}"}
    if impl == "ours":
        from vgid_dist.losses.cpu_kernel import row_kernel
        from vgid_dist.losses.fused_kl import default_chunk_bytes, default_chunk_rows
        from vgid_dist.losses.row_math import use_compiled_rows

        # Built (or loaded from its cache) here, before timing starts; null = the eager torch path.
        kernel = row_kernel() if device.type == "cpu" and not use_compiled_rows(device) else None
        out["cpu_kernel"] = kernel.isa if kernel is not None else None
        out["chunk_size"] = chunk or default_chunk_rows(n, v, default_chunk_bytes(device))
        out["row_path"] = "kernel" if kernel is not None else ("compiled" if use_compiled_rows(device) else "eager")
    elif impl == "liger":
        out["chunk_size"] = chunk or LIGER_CHUNK

    torch.manual_seed(0)
    hs, ws, ht, wt = make_inputs(n, h, v, dtype, device)
    mem = PeakMemory(device)
    mem.start()
    out["rss_baseline_mb"] = round(mem.base / 2**20, 1)

    def step():
        hs.grad = ws.grad = None
        if device.type == "cuda":
            torch.cuda.synchronize()
        t0, c0 = time.perf_counter(), time.process_time()
        loss = loss_fn(hs, ws, ht, wt)
        loss.backward()
        if device.type == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter() - t0, time.process_time() - c0, float(loss)

    times, cpu_times = [], []
    for _ in range(int(cfg.get("warmup", 1))):
        warm, _, loss = step()
        out.setdefault("warmup_seconds", round(warm, 3))
    for _ in range(int(cfg.get("repeat", 1))):
        sec, cpu, loss = step()
        times.append(sec)
        cpu_times.append(cpu)
    if impl == "ours" and out["row_path"] == "compiled" and not use_compiled_rows(device):
        out["row_path"] = "eager (compilation failed)"
    best = min(range(len(times)), key=times.__getitem__)
    # cpu_seconds: process CPU time (all threads) of the best run; a second view when the machine is shared.
    out.update(seconds=round(times[best], 3), seconds_all=[round(t, 3) for t in times],
               cpu_seconds=round(cpu_times[best], 3), loadavg_1min=round(os.getloadavg()[0], 2),
               peak_extra_mb=mem.peak_extra_mb(), loss=loss,
               max_memory_allocated_mb=round(mem.peak_mb(), 1) if device.type == "cuda" else None,
               grad_h_norm=float(hs.grad.float().norm()), grad_w_norm=float(ws.grad.float().norm()))
    return out


def run_check(cfg: dict) -> dict:
    """Loss and grads of ours (and Liger, if importable) against naive, as relative errors."""
    import torch

    n, h, v = int(cfg["n"]), int(cfg["h"]), int(cfg["v"])
    if cfg.get("threads") not in (None, "None", ""):
        torch.set_num_threads(int(cfg["threads"]))
    device, dtype = torch.device(cfg["device"]), getattr(torch, cfg["dtype"])
    temperature = float(cfg.get("temperature", 1.0))
    chunk = int(cfg["chunk"]) if cfg.get("chunk") not in (None, "None", "") else None
    hs, ws, ht, wt = make_inputs(n, h, v, dtype, device)

    def grads(impl):
        hs.grad = ws.grad = None
        loss = make_loss_fn(impl, n, temperature, chunk)(hs, ws, ht, wt)
        loss.backward()
        return float(loss), hs.grad.double(), ws.grad.double()

    ref_loss, ref_gh, ref_gw = grads("naive")
    out = {"impl": "check", "device": str(device), "dtype": cfg["dtype"], "N": n, "H": h, "V": v,
           "temperature": temperature, "naive_loss": ref_loss}
    for impl in ("ours", "liger"):
        try:
            loss, gh, gw = grads(impl)
        except ImportError as e:
            out[f"{impl}_error"] = f"{type(e).__name__}: {e}"
            continue
        out[f"{impl}_loss"] = loss
        out[f"{impl}_loss_rel_err"] = abs(loss - ref_loss) / abs(ref_loss)
        for name, a, b in (("grad_h", gh, ref_gh), ("grad_w", gw, ref_gw)):
            out[f"{impl}_{name}_rel_err_norm"] = float((a - b).norm() / b.norm())
            out[f"{impl}_{name}_rel_err_max"] = float((a - b).abs().max() / b.abs().max())
        del gh, gw
    return out


def skip_reason(cfg: dict) -> str | None:
    if cfg["impl"] != "naive" or cfg["device"] != "cpu":
        return None
    need = NAIVE_MATRICES * int(cfg["n"]) * int(cfg["v"]) * 4
    avail = _mem_available_bytes()
    if need > 0.8 * avail:
        return (f"naive would need ~{need / 2**30:.1f} GiB ({NAIVE_MATRICES} [N, V] fp32 matrices), "
                f"only {avail / 2**30:.1f} GiB available")
    return None


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, nargs="+", default=[256, 2048, 8192])
    p.add_argument("--v", type=int, nargs="+", default=[32064, 151936])
    p.add_argument("--h", type=int, nargs="+", default=None, help="default: 512 on CPU, 4096 on CUDA")
    p.add_argument("--impl", nargs="+", choices=IMPLS, default=list(IMPLS))
    p.add_argument("--dtype", nargs="+", default=None, help="default: float32 on CPU, bfloat16 on CUDA")
    p.add_argument("--device", default=None, help="cpu or cuda (default: cuda if available)")
    p.add_argument("--repeat", type=int, default=1)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--chunk-size", type=int, default=None, help="rows per chunk for ours/liger")
    p.add_argument("--temperature", type=float, default=1.0)
    p.add_argument("--threads", type=int, default=None, help="torch threads in each run (default: torch's)")
    p.add_argument("--check", action="store_true", help="compare ours/liger loss and grads with naive")
    p.add_argument("--one", nargs="+", metavar="KEY=VALUE", help=argparse.SUPPRESS)
    args = p.parse_args(argv)

    if args.one:
        cfg = dict(kv.split("=", 1) for kv in args.one)
        result = run_check(cfg) if cfg.get("check") == "1" else run_one(cfg)
        print(json.dumps(result), flush=True)
        return

    if args.device is None:
        import torch

        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    hs = args.h or ([4096] if args.device.startswith("cuda") else [512])
    dtypes = args.dtype or (["bfloat16"] if args.device.startswith("cuda") else ["float32"])
    impls = ["check"] if args.check else args.impl
    env = dict(os.environ)
    root = str(Path(__file__).resolve().parents[1])
    env["PYTHONPATH"] = root + os.pathsep + env.get("PYTHONPATH", "") if env.get("PYTHONPATH") else root

    for dtype in dtypes:
        for h in hs:
            for v in args.v:
                for n in args.n:
                    for impl in impls:
                        cfg = dict(impl="naive" if impl == "check" else impl, n=n, h=h, v=v,
                                   dtype=dtype, device=args.device, repeat=args.repeat,
                                   warmup=args.warmup, chunk=args.chunk_size,
                                   temperature=args.temperature, threads=args.threads,
                                   check=int(args.check))
                        head = {"impl": impl, "device": args.device, "dtype": dtype, "N": n, "H": h, "V": v}
                        reason = skip_reason(cfg)
                        if reason:
                            print(json.dumps({**head, "skipped": reason}), flush=True)
                            continue
                        cmd = [sys.executable, str(Path(__file__).resolve()), "--one",
                               *(f"{k}={val}" for k, val in cfg.items())]
                        proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
                        lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
                        if proc.returncode == 0 and lines:
                            print(lines[-1], flush=True)
                        else:
                            err = (proc.stderr.strip().splitlines() or ["no output"])[-1]
                            print(json.dumps({**head, "error": f"exit {proc.returncode}: {err}"}), flush=True)


if __name__ == "__main__":
    main()
