"""CPU threads: how many this process should use, and whether OpenMP threads spin or sleep while they wait.

torch runs its CPU ops on an OpenMP pool of one thread per core of the machine. Two things go wrong on shared
machines. (1) Several processes each take every core: the ranks of a job on one node, or a Slurm task given 4 of
64 CPUs. (2) Between parallel regions libgomp's threads spin on the core, waiting for work: when other processes
want those cores, a region's threads wait for a descheduled peer and every small op takes a scheduler slice.
Sleeping threads avoid that, but on idle cores each parallel region then pays a wake-up. Measured on a 2-core
machine, `vgid eval` of the demo's questions, evaluation alone: with one other process keeping a core busy,
15.1 s spinning against 4.5 s sleeping (4.3 s on one thread); on the idle machine 3.5 s spinning against 5.9 s
sleeping (4.4 s on one thread).

``prefer_sleeping_threads`` (process entry, before torch is imported: libgomp reads it when it loads) samples
how busy other processes keep this process's CPUs and sets ``OMP_WAIT_POLICY=PASSIVE`` only when they use half
a CPU or more; ``size_torch_threads`` (once the process knows its rank layout) sets torch's pool to
``threads_per_rank()``. A user's own ``OMP_WAIT_POLICY`` / ``OMP_NUM_THREADS`` always win.
"""

from __future__ import annotations

import math
import os
import time
from pathlib import Path

__all__ = ["cpus_busy_elsewhere", "prefer_sleeping_threads", "size_torch_threads", "threads_per_rank", "usable_cpus"]


def _int_env(name: str) -> int | None:
    value = os.environ.get(name, "").strip()
    return int(value) if value.isdigit() and int(value) > 0 else None


def _cgroup_cpu_limit() -> int | None:
    """CPUs allowed by a cgroup CPU quota (containers started with --cpus, Kubernetes limits), else None."""
    try:
        quota, period = Path("/sys/fs/cgroup/cpu.max").read_text().split()[:2]  # cgroup v2: "max 100000"
        if quota != "max":
            return max(1, math.ceil(int(quota) / int(period)))
        return None
    except (OSError, ValueError):
        pass
    try:  # cgroup v1
        quota = int(Path("/sys/fs/cgroup/cpu/cpu.cfs_quota_us").read_text())
        period = int(Path("/sys/fs/cgroup/cpu/cpu.cfs_period_us").read_text())
        return max(1, math.ceil(quota / period)) if quota > 0 and period > 0 else None
    except (OSError, ValueError):
        return None


def usable_cpus() -> int:
    """CPUs this process may run on: its affinity mask (taskset, Slurm's task binding), capped by a cgroup
    quota and by Slurm's ``SLURM_CPUS_PER_TASK``."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cpus = os.cpu_count() or 1
    for limit in (_cgroup_cpu_limit(), _int_env("SLURM_CPUS_PER_TASK")):
        if limit:
            cpus = min(cpus, limit)
    return max(1, cpus)


def threads_per_rank() -> int:
    """torch threads for this process: ``usable_cpus()`` split between the ranks that share them.

    Ranks started as separate Slurm tasks (srun, submitit: one task per rank, SLURM_PROCID = RANK) each have
    their own ``SLURM_CPUS_PER_TASK``; ranks started by a launcher inside one task or on one machine (deepspeed,
    torchrun) share its CPUs, ``LOCAL_WORLD_SIZE`` (else ``WORLD_SIZE``) of them."""
    cpus = usable_cpus()
    procid, rank = os.environ.get("SLURM_PROCID"), os.environ.get("RANK")
    if procid is not None and (rank is None or rank == procid) and \
            (_int_env("SLURM_NTASKS") or 1) == (_int_env("WORLD_SIZE") or 1):
        return cpus  # this rank is a Slurm task of its own: its allocation is its alone
    local = _int_env("LOCAL_WORLD_SIZE") or _int_env("WORLD_SIZE") or 1
    return max(1, cpus // local)


def _cpu_ticks(cpus: set[int]) -> tuple[int, int]:
    """(busy, total) clock ticks of ``cpus`` since boot, from /proc/stat; busy counts stolen time (a hypervisor
    running something else on the core) and not idle or I/O wait."""
    busy = total = 0
    for line in Path("/proc/stat").read_text().splitlines():
        name, *fields = line.split()
        if not (name.startswith("cpu") and name[3:].isdigit() and int(name[3:]) in cpus):
            continue
        user, nice, system, idle, iowait, irq, softirq, steal = (int(v) for v in fields[:8])
        total += user + nice + system + idle + iowait + irq + softirq + steal
        busy += user + nice + system + irq + softirq + steal
    return busy, total


def cpus_busy_elsewhere(window_s: float = 0.05) -> float | None:
    """How many of this process's CPUs other processes kept busy over ``window_s`` (this process sleeps through
    it, so the busy time is theirs); None where /proc/stat cannot be read."""
    try:
        cpus = set(os.sched_getaffinity(0))
        busy_before, total_before = _cpu_ticks(cpus)
        time.sleep(window_s)
        busy_after, total_after = _cpu_ticks(cpus)
    except (AttributeError, OSError, ValueError):
        return None
    if total_after <= total_before:
        return None
    return (busy_after - busy_before) / (total_after - total_before) * len(cpus)


def prefer_sleeping_threads() -> None:
    """OpenMP threads sleep when they wait if other processes keep this process's CPUs busy, and keep
    libgomp's default (a short spin) otherwise (see the module docstring). Effective only before torch is
    imported; ``OMP_WAIT_POLICY`` set by the user wins."""
    if "OMP_WAIT_POLICY" in os.environ:
        return
    busy = cpus_busy_elsewhere()
    if busy is None or busy >= 0.5:  # unknown: sleeping threads are the safe choice
        os.environ["OMP_WAIT_POLICY"] = "PASSIVE"


def size_torch_threads() -> int:
    """Set torch's intra-op pool to ``threads_per_rank()`` unless ``OMP_NUM_THREADS`` says otherwise; returns the
    pool size in use."""
    import torch

    if "OMP_NUM_THREADS" not in os.environ:
        torch.set_num_threads(threads_per_rank())
    return torch.get_num_threads()
