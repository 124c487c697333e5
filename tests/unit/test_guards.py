"""Stop signals, the non-finite counter, and the same-configuration check of a resumed output_dir."""

from __future__ import annotations

import os
import signal

import pytest
import yaml

from vgid_dist.config import RunConfig
from vgid_dist.engine.guards import NonFiniteGuard, StopSignals, is_collective_failure
from vgid_dist.engine.output import StepLog, check_same_config
from vgid_dist.errors import RunExistsError


def test_stop_signal_is_recorded_and_a_second_one_exits():
    signals = StopSignals()
    try:
        os.kill(os.getpid(), signal.SIGUSR1)
        assert signals.requested and signals.received == "SIGUSR1"
        with pytest.raises(SystemExit) as info:
            os.kill(os.getpid(), signal.SIGTERM)
        assert info.value.code == 128 + signal.SIGTERM
    finally:
        signals.close()
    assert signal.getsignal(signal.SIGTERM) == signal.SIG_DFL


def test_nonfinite_guard_counts_consecutive_steps():
    guard = NonFiniteGuard(limit=3)
    for finite in (False, False, True, False, False):
        guard.record(finite)
    assert guard.total == 4 and guard.consecutive == 2 and not guard.exhausted
    guard.record(False)
    assert guard.exhausted


def test_collective_failures_are_recognised():
    assert is_collective_failure(RuntimeError("[gloo] Timed out waiting 20000ms for recv operation"))
    assert not is_collective_failure(ValueError("bad shape"))


def test_resuming_with_another_configuration_is_refused(tmp_path):
    base = {"model": {"path": "/m"}, "data": {"root": "/d"}, "method": {"name": "vgid"}, "output_dir": str(tmp_path)}
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(RunConfig.model_validate(base).model_dump(mode="json")))
    check_same_config(tmp_path, RunConfig.model_validate(base), force=False)  # same: fine
    other = RunConfig.model_validate({**base, "optim": {"lr": 1e-4}})
    with pytest.raises(RunExistsError, match="optim.lr"):
        check_same_config(tmp_path, other, force=False)
    check_same_config(tmp_path, other, force=True)


def test_trim_log_keeps_the_resumed_steps(tmp_path):
    log = tmp_path / "train_log.jsonl"
    log.write_text("".join(f'{{"step": {i}, "loss": 1.0}}\n' for i in range(1, 9)))
    StepLog(log).trim(5)
    assert [int(line.split(":")[1].split(",")[0]) for line in log.read_text().splitlines()] == [1, 2, 3, 4, 5]


def test_trim_log_drops_a_line_cut_short(tmp_path):
    log = tmp_path / "train_log.jsonl"
    log.write_text('{"step": 1, "loss": 1.0}\n{"step": 2, "loss": 0.9}\n{"step": 3, "lo')
    said = []
    StepLog(log, said.append).trim(5)
    assert log.read_text() == '{"step": 1, "loss": 1.0}\n{"step": 2, "loss": 0.9}\n'
    assert "dropped 1 line(s) cut short" in said[0]
