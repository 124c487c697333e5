"""The training entry every launcher shares: ``vgid train``, ``launch/train.py`` (deepspeed, torchrun, Slurm
tasks), sweep cells, the relearning attack, the demo and the tiny vanilla build.

It takes a validated ``RunConfig`` (paths already local folders) and the callbacks the caller attaches
(evaluation during training, tracking: ``Trainer`` documents the events); it knows nothing of either. When
the run stops with an exception every callback's ``on_failure(status)`` is told (``KILLED`` for a stop signal
or an interrupt, else ``FAILED``) before the exception goes on to the caller.
"""

from __future__ import annotations

import sys
from typing import Any

from vgid_dist.config import RunConfig
from vgid_dist.engine.trainer import Trainer
from vgid_dist.errors import RunInterrupted, TrackingError


def train(cfg: RunConfig, *, force: bool = False, callbacks: list | tuple = ()) -> dict[str, Any]:
    """Set up, train and finish one run; returns its summary (what ``metrics.json`` holds).

    Raises the ``vgid_dist.errors`` of a refused input or a stopped run; ``TrackingError`` (exit status 3) when
    the run finished but a callback could not record it (``callback.error``)."""
    trainer = Trainer(cfg, force=force, callbacks=list(callbacks))
    try:
        summary = trainer.run()
    except BaseException as exc:
        # An interrupt, a checkpointed stop signal, or submitit exiting a preempted task it has requeued: KILLED
        # (the requeued job sets the same run RUNNING again). Anything else is a failure.
        status = "KILLED" if isinstance(exc, (RunInterrupted, KeyboardInterrupt, SystemExit)) else "FAILED"
        for cb in callbacks:
            if hasattr(cb, "on_failure"):
                cb.on_failure(status)
        raise
    finally:
        trainer.close()
        sys.stdout.flush()
    errors = [cb.error for cb in callbacks if getattr(cb, "error", None)]
    if errors:
        raise TrackingError(errors[0], exit_code=3)
    return summary
