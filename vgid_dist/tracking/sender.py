"""Logging that never makes training wait: a background thread sends a run's metrics and files to the store,
in order, through a bounded queue. Nothing here imports mlflow; the calls it runs do.

- ``metrics(step, values)`` never blocks: when the queue is full (a store slower than training) the step is
  dropped and counted. Queued steps are sent together, up to 1000 metrics per ``log_batch``, so a slow store
  catches up instead of falling further behind.
- A call that fails is followed by a check that the store still answers (``store_problem``, seconds). When it
  does not, or after ``max_failures`` failed calls in a row, the sender gives up: it says so once
  (``on_lost(reason, what it was sending)``), empties the queue and drops everything submitted afterwards. Training goes on at full speed
  and its log (``train_log.jsonl``) stays complete.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable, Mapping

BATCH_METRICS = 1000  # MLflow's log_batch limit


class Sender:
    def __init__(self, send_steps: Callable[[dict[int, dict[str, float]]], None], probe: Callable[[], str | None], *,
                 capacity: int = 1024, max_failures: int = 3, on_lost: Callable[[str, str], None] | None = None):
        """``send_steps({step: {name: value}})`` logs the metrics of several steps in one call; ``probe()`` says
        why the store cannot be reached, or None when it answers."""
        self._send_steps = send_steps
        self._probe = probe
        self._on_lost = on_lost
        self._queue: queue.Queue = queue.Queue(maxsize=capacity)
        self._max_failures = max_failures
        self.lost: str | None = None
        """Why the sender gave up (None while it sends); ``lost_during``: what it was sending then."""
        self.lost_during: str | None = None
        self.dropped_steps = 0
        self.failed: list[str] = []
        self.last_sent_step = 0
        self._closed = False
        self._consecutive = 0
        self._thread = threading.Thread(target=self._work, name="vgid-tracking-sender", daemon=True)
        self._thread.start()

    # -- called by the training thread: never blocks -----------------------------------------------------------
    def metrics(self, step: int, values: Mapping[str, float]) -> None:
        """Queue one step's metrics."""
        if values:
            self._put(("metrics", int(step), dict(values)), step=True)

    def call(self, what: str, fn: Callable[[], None]) -> None:
        """Queue a call (artifacts, tags, the final status) to run after everything queued before it."""
        self._put(("call", what, fn), step=False)

    def _put(self, item, *, step: bool) -> None:
        if self.lost is not None or self._closed:
            return
        try:
            self._queue.put_nowait(item)
        except queue.Full:
            if step:
                self.dropped_steps += 1
            else:
                self.failed.append(f"{item[1]}: not sent (the queue was full)")

    def close(self, timeout_s: float) -> bool:
        """Stop taking work and wait up to ``timeout_s`` for what is queued to be sent (or given up); True when
        the sender finished in time."""
        self._closed = True
        deadline = time.monotonic() + timeout_s
        while self._thread.is_alive():
            try:
                self._queue.put(None, timeout=0.5)  # the end marker, once there is room for it
                break
            except queue.Full:
                if time.monotonic() > deadline:
                    return False
        self._thread.join(max(0.0, deadline - time.monotonic()))
        return not self._thread.is_alive()

    # -- the sender thread -------------------------------------------------------------------------------------
    def _work(self) -> None:
        pending = None
        while True:
            item = pending if pending is not None else self._queue.get()
            pending = None
            if item is None:
                return
            kind, what, payload = item
            if kind == "metrics":
                steps = {what: payload}
                count = len(payload)
                # Everything else already queued goes in the same call, as long as it is metrics.
                while count < BATCH_METRICS:
                    try:
                        nxt = self._queue.get_nowait()
                    except queue.Empty:
                        break
                    if nxt is None or nxt[0] != "metrics":
                        pending = nxt
                        break
                    steps.setdefault(nxt[1], {}).update(nxt[2])
                    count += len(nxt[2])
                ok = self._run(f"the metrics of step {min(steps)}", lambda s=steps: self._send_steps(s))
                if ok:
                    self.last_sent_step = max(self.last_sent_step, *steps)
            else:
                self._run(what, payload)
            if self.lost is not None:
                self._drain()
                return

    def _run(self, what: str, fn: Callable[[], None]) -> bool:
        try:
            fn()
        except Exception as exc:  # whatever the store or the network raised: judged below, never re-raised
            error = f"{type(exc).__name__}: {(str(exc).splitlines() or [''])[0]}"[:300]
            self.failed.append(f"{what}: {error}")
            self._consecutive += 1
            problem = self._probe()
            if problem is not None:
                self._give_up(problem, what)
            elif self._consecutive >= self._max_failures:
                self._give_up(f"the store refused {self._consecutive} calls in a row, the last with {error}", what)
            return False
        self._consecutive = 0
        return True

    def _give_up(self, reason: str, what: str) -> None:
        self.lost, self.lost_during = reason, what
        if self._on_lost is not None:
            self._on_lost(reason, what)

    def _drain(self) -> None:
        while True:
            try:
                self._queue.get_nowait()
            except queue.Empty:
                return
