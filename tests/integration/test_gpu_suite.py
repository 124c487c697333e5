"""The GPU suite's CPU smoke run (`bash benchmarks/gpu/suite.sh --cpu-smoke`): every stage runs at tiny shapes and
writes every field of its result, null only for figures that need a GPU. Figures are not asserted (benchmarks
are never timed assertions); what a GPU run will rely on is that the suite completes and its report is whole."""

from __future__ import annotations

import importlib.util
import json
import sys

import pytest

from tests.conftest import REPO, run_launcher

pytestmark = pytest.mark.integration


def load_suite():
    spec = importlib.util.spec_from_file_location("gpu_suite", REPO / "benchmarks" / "gpu" / "suite.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def assert_fields(result: dict, fields: list[str], gpu_only: set[str], where: str) -> None:
    for name in fields:
        assert name in result, f"{where}: field {name} missing from {sorted(result)}"
        if result[name] is None:
            assert name in gpu_only, f"{where}.{name} is null but is not a GPU-only figure"


@pytest.mark.timeout(420)
def test_cpu_smoke_writes_every_field(tmp_path):
    suite = load_suite()
    out = tmp_path / "out"
    proc = run_launcher(["bash", str(REPO / "benchmarks" / "gpu" / "suite.sh"), "--cpu-smoke", "--out", str(out),
                         "--work", str(tmp_path / "work")], timeout=400)
    assert proc.returncode == 0, proc.stdout[-6000:]
    report = json.loads((out / "suite.json").read_text())
    assert report["suite"]["mode"] == "cpu-smoke" and report["suite"]["finished"]
    stages = report["stages"]
    assert list(stages) == [s.name for s in suite.STAGES]
    for stage in suite.STAGES:
        entry = stages[stage.name]
        assert entry["status"] == "ok", (stage.name, entry["error"])
        assert entry["seconds"] <= entry["timeout_s"]
        assert_fields(entry["result"], stage.fields, suite.GPU_ONLY, stage.name)

    kl = stages["fused_kl"]["result"]
    for impl in ("naive", "ours"):
        assert_fields(kl[impl], suite.KL_FIELDS, suite.GPU_ONLY, f"fused_kl.{impl}")
    assert kl["liger"] is None  # Triton: GPU only
    assert kl["check"]["ours_loss_rel_err"] < 1e-4  # ours computes naive's loss
    for name in ("train_qwen_full", "train_llava_lora"):
        result = stages[name]["result"]
        for kind in ("vgid", "reference"):
            assert_fields(result[kind], suite.STEP_FIELDS, suite.GPU_ONLY, f"{name}.{kind}")
        assert result["lora"] == (name == "train_llava_lora")
        plan = stages["plan"]["result"][name]
        assert_fields(plan, ["predicted_gb", "required_gb", "measured_gb", "error", "fits"], set(), f"plan.{name}")
    assert stages["vgid_step"]["result"]["finite"]

    table = (out / "suite.md").read_text()
    for heading in ("Fused KL", "Training step", "vgid plan"):
        assert heading in table
    assert (out / "suite.log").stat().st_size > 0
