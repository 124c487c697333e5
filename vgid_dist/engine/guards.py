"""What stops a run cleanly instead of losing work or idling an allocation: stop signals, non-finite losses,
collectives that time out."""

from __future__ import annotations

import signal
import threading


class StopSignals:
    """Records SIGTERM / SIGUSR1 / SIGUSR2 (Slurm sends one before the time limit and on preemption; submitit's
    is USR2) instead of dying mid-step.

    The training loop asks ``requested`` after every step and, collectively, checkpoints and exits; then
    ``chain`` hands the signal to the handler that was there before (submitit's requeue), now that the
    checkpoint is on disk. Installed only from the main thread; previous handlers are restored on ``close``.
    """

    SIGNALS = (signal.SIGTERM, signal.SIGUSR1, signal.SIGUSR2)

    def __init__(self):
        self.received: str | None = None
        self._signum: int | None = None
        self._previous: dict = {}
        if threading.current_thread() is threading.main_thread():
            for sig in self.SIGNALS:
                self._previous[sig] = signal.signal(sig, self._handle)

    def _handle(self, signum, frame) -> None:
        if self.received is not None:  # asked twice (e.g. a rank stuck in a collective): stop now
            raise SystemExit(128 + signum)
        self.received = signal.Signals(signum).name
        self._signum = signum

    @property
    def requested(self) -> bool:
        return self.received is not None

    def chain(self) -> None:
        """Run the previous handler of the signal received (if it was a Python handler), after our checkpoint."""
        previous = self._previous.get(self._signum)
        self.close()
        if callable(previous):
            previous(self._signum, None)

    def close(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous = {}


class NonFiniteGuard:
    """Counts skipped steps; raises after ``limit`` consecutive ones."""

    def __init__(self, limit: int):
        self.limit = limit
        self.consecutive = 0
        self.total = 0

    def record(self, finite: bool) -> None:
        if finite:
            self.consecutive = 0
            return
        self.consecutive += 1
        self.total += 1

    @property
    def exhausted(self) -> bool:
        return self.consecutive >= self.limit


def is_collective_failure(exc: BaseException) -> bool:
    text = f"{type(exc).__name__} {exc}".lower()
    return any(key in text for key in ("timed out", "timeout", "connection closed", "connection reset",
                                       "distbackenderror", "gloo", "nccl"))
