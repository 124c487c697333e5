"""benchmarks/train_step.py on the tiny shape: both step kinds run (ZeRO-3 on one CPU rank) and print their
JSON lines. Figures are not asserted (benchmarks are never timed assertions)."""

from __future__ import annotations

import json
import sys

import pytest

from tests.conftest import REPO, run_launcher

pytestmark = pytest.mark.integration


@pytest.mark.timeout(180)
def test_tiny_shape_prints_both_lines(tmp_path):
    proc = run_launcher([sys.executable, str(REPO / "benchmarks" / "train_step.py"), "--shape", "tiny", "--steps", "2",
                         "--warmup", "1"], timeout=170,
                        env={"OMP_NUM_THREADS": "1", "VGID_CACHE_DIR": str(tmp_path / "cache")})
    assert proc.returncode == 0, proc.stdout[-4000:]
    lines = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith('{"step"')]
    assert [line["step"] for line in lines] == ["vgid", "reference"]
    for line in lines:
        assert line["shape"] == "tiny" and line["world_size"] == 1 and line["device"] == "cpu"
        assert line["tokens_per_s_per_gpu"] > 0 and line["samples_per_s"] > 0 and line["peak_memory_gb"] > 0
        assert line["mfu"] is None  # no device peak on CPU
        assert line["params"] == lines[0]["params"] > 0
        assert line["rows_per_step"] == 4  # 2 forget + 2 retain samples
