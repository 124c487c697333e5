"""Tracking never makes training wait: the background sender (bounded queue, batched steps, giving up on a
store that stopped answering), the callback's outcome when tracking was lost, the store checked in seconds
before anything loads, reading that creates no store, and the one-run API other commands use."""

from __future__ import annotations

import socket
import threading
import time
from types import SimpleNamespace

import pytest

from vgid_dist import tracking
from vgid_dist.config import load_run_config
from vgid_dist.errors import TrackingError
from vgid_dist.tracking.sender import Sender


def _sender(send, probe=lambda: None, **kw) -> tuple[Sender, list[str]]:
    said: list[str] = []
    return Sender(send, probe, on_lost=lambda reason, what: said.append(f"{what}: {reason}"), **kw), said


def test_queued_steps_go_in_one_call_and_a_full_queue_drops_instead_of_blocking():
    release, calls = threading.Event(), []

    def send(steps):
        release.wait(10)
        calls.append(sorted(steps))

    sender, _ = _sender(send, capacity=4)
    t0 = time.perf_counter()
    for step in range(1, 11):
        sender.metrics(step, {"train/loss": 1.0 / step})
        time.sleep(0.01)  # the sender takes step 1 and waits in its call; 4 more fit in the queue
    assert time.perf_counter() - t0 < 2.0  # the training thread never waited on the store
    assert sender.dropped_steps == 5
    release.set()
    assert sender.close(10)
    assert calls == [[1], [2, 3, 4, 5]] and sender.last_sent_step == 5 and sender.lost is None


def test_a_store_that_stops_answering_is_given_up_once_and_nothing_more_is_queued():
    down = threading.Event()
    sent = []

    def send(steps):
        if down.is_set():
            raise ConnectionError("Connection refused")
        sent.extend(steps)

    sender, said = _sender(send, probe=lambda: "http://x does not answer" if down.is_set() else None)
    for step in (1, 2, 3):
        sender.metrics(step, {"train/loss": 1.0})
    time.sleep(0.5)
    down.set()
    for step in range(4, 200):
        sender.metrics(step, {"train/loss": 1.0})
        sender.call("a file", lambda: None)
    assert sender.close(10)
    assert sent == [1, 2, 3] and said == ["the metrics of step 4: http://x does not answer"]
    assert sender._queue.qsize() == 0


def test_a_store_that_answers_but_refuses_every_call_is_given_up_after_three():
    def refuse():
        raise RuntimeError("INVALID_PARAMETER_VALUE")

    sender, said = _sender(lambda steps: None)
    for i in range(5):
        sender.call(f"call {i}", refuse)
    assert sender.close(10)
    assert len(sender.failed) == 3 and "refused 3 calls in a row" in said[0]


class _Strategy:
    rank, is_main, world_size, on_gpu = 0, True, 1, False

    def broadcast_object(self, obj):
        return obj


def test_training_finishes_and_says_how_to_recover_when_tracking_is_lost(tmp_path, monkeypatch):
    monkeypatch.setenv("MLFLOW_ENABLE_SYSTEM_METRICS_LOGGING", "false")
    out = tmp_path / "run"
    out.mkdir()
    cfg = load_run_config("tiny", [f"output_dir={out}"])
    cb = tracking.TrackingCallback(model="tiny", uri=f"sqlite:///{tmp_path / 'store' / 'mlflow.db'}",
                                   experiment="outage")
    cb.on_start(SimpleNamespace(strategy=_Strategy(), cfg=cfg, out=out))
    for step in (1, 2, 3):
        cb.on_step(step, {"loss": 1.0})
    deadline = time.monotonic() + 30
    while cb._sender.last_sent_step < 3 and time.monotonic() < deadline:
        time.sleep(0.05)

    def broken(*_a, **_k):
        raise ConnectionError("Connection refused")

    # The server dies: calls fail and it no longer answers.
    monkeypatch.setattr(cb._tracker, "log_steps", broken)
    monkeypatch.setattr(tracking.callback, "store_problem", lambda uri: f"{uri} does not answer")
    t0 = time.perf_counter()
    for step in range(4, 13):
        cb.on_step(step, {"loss": 1.0})
    assert time.perf_counter() - t0 < 1.0
    cb.on_end({"steps": 12, "train_seconds": 1.0})
    assert cb.error.startswith("MLflow tracking was lost; the training itself finished")
    assert "while sending the metrics of step 4" in cb.error and f"vgid track {out}" in cb.error
    assert cb._tracker.last_step(cb.run_id) == 3 and cb._tracker.status(cb.run_id) == "RUNNING"


def test_an_unreachable_store_is_refused_in_seconds_with_the_way_out(monkeypatch):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # nothing listens there once the socket closes
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"http://127.0.0.1:{port}")
    t0 = time.perf_counter()
    with pytest.raises(TrackingError, match="VGID_TRACKING=off") as err:
        tracking.callback_for("tiny")
    assert time.perf_counter() - t0 < 10 and f"127.0.0.1:{port}" in str(err.value)
    monkeypatch.setenv("VGID_TRACKING", "off")
    assert tracking.callback_for("tiny") is None


def test_reading_creates_no_store(tmp_path, monkeypatch):
    from vgid_dist.cli import main

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.chdir(tmp_path)
    assert main(["report", "--experiment", "nope"]) == 2
    assert list(tmp_path.iterdir()) == []


def test_one_run_with_params_metrics_and_files(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    (tmp_path / "audit.txt").write_text("forgotten: alice\n")
    with tracking.open_run("forget-alice", experiment="audits", kind="forget", params={"people": 1},
                           uri=uri) as run:
        run.log(metrics={"forget/gen_rougeL": 0.2}, tags={"who": "alice"})
        run.log_files([tmp_path / "audit.txt"], "audit")
        run.log_dict({"people": ["alice"]}, "audit/summary.json")
    got = tracking.Tracker(uri).get_run(run.run_id)
    assert got.info.status == "FINISHED" and got.data.params == {"people": "1"}
    assert got.data.metrics == {"forget/gen_rougeL": 0.2} and got.data.tags[tracking.KIND_TAG] == "forget"
    files = {a.path for a in tracking.Tracker(uri).client.list_artifacts(run.run_id, "audit")}
    assert files == {"audit/audit.txt", "audit/summary.json"}
