"""Thread sizing: the CPUs a process may use (affinity, cgroup quota, Slurm allocation) split between the ranks
that share them; single-process evaluation without DeepSpeed."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from tests.conftest import REPO
from vgid_dist import threads

LAUNCH_VARS = ("RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE", "SLURM_PROCID", "SLURM_NTASKS", "SLURM_CPUS_PER_TASK")


@pytest.fixture
def machine(monkeypatch):
    """A 16-CPU affinity mask, no cgroup quota, no launcher variables; returns monkeypatch for more."""
    for name in LAUNCH_VARS:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(16)))
    monkeypatch.setattr(threads, "_cgroup_cpu_limit", lambda: None)
    return monkeypatch


def test_one_process_takes_its_affinity(machine):
    assert threads.usable_cpus() == threads.threads_per_rank() == 16
    machine.setattr(threads, "_cgroup_cpu_limit", lambda: 3)  # docker --cpus=2.5
    assert threads.threads_per_rank() == 3


def test_launcher_ranks_share_the_machine(machine):
    machine.setenv("RANK", "1")
    machine.setenv("WORLD_SIZE", "8")
    machine.setenv("LOCAL_WORLD_SIZE", "4")  # two nodes of four ranks
    assert threads.threads_per_rank() == 4
    machine.setenv("LOCAL_WORLD_SIZE", "32")
    assert threads.threads_per_rank() == 1  # never zero


def test_slurm_task_per_rank_keeps_its_allocation(machine):
    # srun / submitit: one task per rank, SLURM_CPUS_PER_TASK each; the mask may still show the whole node.
    for name, value in (("SLURM_PROCID", "3"), ("RANK", "3"), ("SLURM_NTASKS", "8"), ("WORLD_SIZE", "8"),
                        ("LOCAL_WORLD_SIZE", "8"), ("SLURM_CPUS_PER_TASK", "6")):
        machine.setenv(name, value)
    assert threads.threads_per_rank() == 6
    # A launcher inside one Slurm task (torchrun under sbatch): its ranks share the task's 6 CPUs.
    machine.setenv("SLURM_NTASKS", "1")
    machine.setenv("SLURM_PROCID", "0")
    machine.setenv("LOCAL_WORLD_SIZE", "2")
    assert threads.threads_per_rank() == 3


def test_user_thread_count_wins(machine):
    import torch

    before = torch.get_num_threads()
    machine.setenv("OMP_NUM_THREADS", "1")
    try:
        torch.set_num_threads(1)
        assert threads.size_torch_threads() == 1
    finally:
        torch.set_num_threads(before)


def test_cli_decides_the_openmp_wait_policy_before_torch_loads():
    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    code = ("import sys, os; import vgid_dist.cli; "
            "print(os.environ.get('OMP_WAIT_POLICY'), 'torch' in sys.modules, 'deepspeed' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], env={**env, "PYTHONPATH": str(REPO)}, capture_output=True,
                         text=True, check=True).stdout.split()
    assert out[0] in ("PASSIVE", "None") and out[1:] == ["False", "False"]
    # the user's policy is kept, whatever the machine's load
    out = subprocess.run([sys.executable, "-c", code], env={**env, "PYTHONPATH": str(REPO), "OMP_WAIT_POLICY": "ACTIVE"},
                         capture_output=True, text=True, check=True).stdout.split()
    assert out[0] == "ACTIVE"


@pytest.mark.parametrize("busy, policy", [(0.0, None), (0.3, None), (0.5, "PASSIVE"), (1.7, "PASSIVE"),
                                          (None, "PASSIVE")])
def test_threads_sleep_only_when_other_processes_use_the_cpus(monkeypatch, busy, policy):
    monkeypatch.delenv("OMP_WAIT_POLICY", raising=False)
    monkeypatch.setattr(threads, "cpus_busy_elsewhere", lambda: busy)
    threads.prefer_sleeping_threads()
    assert os.environ.get("OMP_WAIT_POLICY") == policy


def test_a_process_spinning_on_one_of_our_cpus_is_seen():
    cpu = min(os.sched_getaffinity(0))
    spinner = subprocess.Popen([sys.executable, "-c",
                                f"import os, time; os.sched_setaffinity(0, {{{cpu}}}); end = time.time() + 5\n"
                                "while time.time() < end: pass"])
    try:
        busy = max(threads.cpus_busy_elsewhere(0.2) for _ in range(3))
    finally:
        spinner.kill()
        spinner.wait()
    assert busy >= 0.5


def test_single_process_evaluation_needs_no_deepspeed(monkeypatch):
    for name in LAUNCH_VARS:
        monkeypatch.delenv(name, raising=False)
    code = ("import sys; from vgid_dist.engine.strategy import inference_strategy; "
            "s = inference_strategy(dtype='float32'); "
            "print(type(s).__name__, s.world_size, s.gather_objects('x'), 'deepspeed' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], env={**os.environ, "PYTHONPATH": str(REPO)},
                         capture_output=True, text=True, check=True).stdout.split()
    assert out == ["SingleProcessInference", "1", "['x']", "False"]
