"""Checkpoint files load as tensors and plain data only (a planted pickle is refused and never runs), every RNG
state survives that load, and a single-machine rendezvous store listens on the loopback address alone."""

from __future__ import annotations

import datetime
import os
import random

import numpy as np
import psutil
import pytest
import torch

from vgid_dist.engine.checkpoint import rng_state, safe_load, set_rng_state
from vgid_dist.engine.strategy import loopback_store
from vgid_dist.errors import CheckpointError


class _Payload:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def test_a_planted_pickle_is_refused_and_never_runs(tmp_path):
    marker = tmp_path / "ran"
    path = tmp_path / "global_step4" / "rng_rank0.pt"
    path.parent.mkdir()
    torch.save({"module": _Payload(marker)}, path)
    with pytest.raises(CheckpointError, match=r"rng_rank0.pt: refused to load"):
        safe_load(path)
    assert not marker.exists()


def test_rng_states_round_trip_through_a_safe_load(tmp_path):
    random.seed(1), np.random.seed(2), torch.manual_seed(3)
    np.random.standard_normal()  # a cached Gaussian in numpy's state
    torch.save(rng_state(), tmp_path / "rng.pt")
    expected = (random.random(), np.random.standard_normal(), torch.rand(3))
    random.seed(9), np.random.seed(9), torch.manual_seed(9)
    set_rng_state(safe_load(tmp_path / "rng.pt"))
    got = (random.random(), np.random.standard_normal(), torch.rand(3))
    assert got[0] == expected[0] and got[1] == expected[1] and torch.equal(got[2], expected[2])


def test_a_local_rendezvous_store_listens_on_loopback_only(monkeypatch):
    for key, value in {"MASTER_ADDR": "127.0.0.1", "RANK": "0", "WORLD_SIZE": "1"}.items():
        monkeypatch.setenv(key, value)
    monkeypatch.delenv("MASTER_PORT", raising=False)
    monkeypatch.delenv("TORCHELASTIC_USE_AGENT_STORE", raising=False)
    store = loopback_store(datetime.timedelta(seconds=30))
    port = int(os.environ["MASTER_PORT"])
    listening = [c.laddr.ip for c in psutil.Process().net_connections(kind="tcp")
                 if c.status == psutil.CONN_LISTEN and c.laddr.port == port]
    assert listening == ["127.0.0.1"]
    store.set("k", "v")
    assert store.get("k") == b"v"
    del store
