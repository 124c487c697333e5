"""Faults installed inside a training process (``python benchmarks/faults.py _run KIND STEPS ...``), each at the
point where the real one strikes."""

from __future__ import annotations

import errno
import os
import signal
import sys
import time


def _faulty_method(kind: str, at_steps: set[int]) -> None:
    """A VGID whose loss is NaN at given steps (``nan``), whose rank 1 stalls (``stall``), or that holds every
    rank for a minute at a step after saying so on stdout (``hold``: a run that is busy)."""
    import torch
    import torch.distributed as dist

    from vgid_dist.methods import REGISTRY
    from vgid_dist.methods.vgid import Vgid

    class Faulty(Vgid):
        name = "vgid"
        calls = 0

        def compute_loss(self, batch, student, frozen, counts):
            out = super().compute_loss(batch, student, frozen, counts)
            Faulty.calls += 1  # one micro-batch per step in these runs
            if Faulty.calls in at_steps:
                if kind == "nan":
                    out.loss = out.loss * torch.tensor(float("nan"))
                elif kind == "stall" and dist.get_rank() == 1:
                    time.sleep(60)
                elif kind == "hold":
                    print(f"[fault] holding at step {Faulty.calls}", flush=True)
                    time.sleep(60)
            return out

    REGISTRY["vgid"] = Faulty


def _die(*_args, **_kwargs):
    sys.stdout.flush()
    os.kill(os.getpid(), signal.SIGKILL)


def _disk_full(*_args, **_kwargs):
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


def _export_fault(kind: str) -> None:
    """The model's temporary folder is complete and about to be renamed into place (``io.make_readable`` runs
    just before): the process is SIGKILLed there (``kill_export``) or the disk is full (``enospc_export``)."""
    import vgid_dist.io as io

    io.make_readable = _die if kind == "kill_export" else _disk_full


def _kill_after_done() -> None:
    """SIGKILL once DONE is written, before the optimiser checkpoints are removed."""
    from vgid_dist.engine.checkpoint import CheckpointManager

    CheckpointManager.clear = _die


def _torn_log(at_steps: list[int]) -> None:
    """The train log's appends at the given steps are cut short: half the line is written, then the disk is
    full (the first step) or the process is SIGKILLed (the second: a line no one could undo)."""
    real_write = os.write
    appends = {"n": 0}

    def write(fd, data):
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            target = ""
        if not target.endswith("train_log.jsonl"):
            return real_write(fd, data)
        appends["n"] += 1
        if appends["n"] not in at_steps:
            return real_write(fd, data)
        real_write(fd, bytes(data)[:len(data) // 2])
        if appends["n"] == at_steps[0]:
            _disk_full()
        _die()

    os.write = write


def install(kind: str, steps: str) -> None:
    at = [int(s) for s in steps.split(",") if s]
    if kind in ("nan", "stall", "hold"):
        _faulty_method(kind, set(at))
    elif kind in ("kill_export", "enospc_export"):
        _export_fault(kind)
    elif kind == "kill_after_done":
        _kill_after_done()
    elif kind == "torn_log":
        _torn_log(at)
    else:
        raise SystemExit(f"unknown fault kind {kind!r}")
