"""The fault matrix on the tiny model: preemption-exact resume on 1 and 2 ZeRO-3 ranks, bad input named before
compute, non-finite losses skipped collectively, a stalled rank reported with its rank and operation, uneven
data without a hang. ``benchmarks/faults.py --check`` fails unless every fault ends as expected."""

from __future__ import annotations

import importlib.util
import json

import pytest

from tests.conftest import PYTHON, REPO, run_launcher

pytestmark = pytest.mark.integration


def _fault_names() -> list[str]:
    """Every row the matrix defines (``FAULTS`` in benchmarks/faults.py)."""
    spec = importlib.util.spec_from_file_location("faults", REPO / "benchmarks" / "faults.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return list(module.FAULTS)


def test_fault_matrix():
    result = run_launcher([PYTHON, "benchmarks/faults.py", "--check"], timeout=1800)
    rows = [json.loads(line) for line in result.stdout.splitlines() if line.startswith("{")]
    print(result.stdout[-6000:])
    failed = [r for r in rows if not r["ok"]]
    assert len(rows) == len(_fault_names()), result.stdout[-4000:]
    assert not failed, json.dumps(failed, indent=1)
    assert result.returncode == 0
