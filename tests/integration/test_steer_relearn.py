"""The two commands of issue 9 end to end on the tiny LLaVA: ``vgid steer build`` then ``vgid eval --steer``,
and ``vgid attack relearn`` (fine-tune on some forget profiles, score the others, recovery printed)."""

from __future__ import annotations

import json

import pytest

from tests.conftest import PYTHON, run_launcher

pytestmark = pytest.mark.integration
VGID = [PYTHON, "-m", "vgid_dist.cli"]


def test_steer_build_then_eval_with_the_file(tiny_llava, bench_dir, tmp_path):
    steer = tmp_path / "steer.safetensors"
    built = run_launcher([*VGID, "steer", "build", "--model", str(tiny_llava), "--data", str(bench_dir), "--out",
                          str(steer), "--config", "tiny-mllmeraser", "max_samples=16"], timeout=300)
    assert built.returncode == 0 and "gate open on" in built.stdout, built.stdout[-3000:]
    out = tmp_path / "eval.json"
    evaluated = run_launcher([*VGID, "eval", "--model", str(tiny_llava), "--data", str(bench_dir), "--out", str(out),
                              "--steer", str(steer), "--splits", "forget", "--limit", "1", "--max-new-tokens", "4"],
                             timeout=300)
    assert evaluated.returncode == 0, evaluated.stdout[-3000:]
    assert json.loads(out.read_text())["meta"]["steer"] == str(steer)
    missing = run_launcher([*VGID, "eval", "--model", str(tiny_llava), "--data", str(bench_dir), "--out", str(out),
                            "--steer", str(tmp_path / "none.safetensors"), "--splits", "forget", "--limit", "1"],
                           timeout=300)
    assert missing.returncode == 2 and "steering file not found" in missing.stdout, missing.stdout[-2000:]


def test_relearn_attack_prints_recovery(tiny_llava, bench_dir, tmp_path):
    out = tmp_path / "relearn"
    # zero-shot: the one held-out profile is an official cloze example of this 3-profile split, so only the
    # zero-shot protocol scores every task of it
    result = run_launcher([*VGID, "attack", "relearn", "--model", str(tiny_llava), "--data", str(bench_dir),
                           "--forget-ratio", "15", "--steps", "2", "--subset", "0.5", "--out", str(out),
                           "--max-new-tokens", "4", "--protocol", "zero-shot"], timeout=600,
                          env={"VGID_TRACKING": "off"})
    assert result.returncode == 0, result.stdout[-4000:]
    assert "| model | gen_rougeL | gen_bleu | class_acc | cloze_acc |" in result.stdout
    report = json.loads((out / "relearn.json").read_text())
    assert set(report["plan"]["attacked"]).isdisjoint(report["plan"]["held_out"])
    assert set(report["recovery"]) == {"gen_rougeL", "gen_bleu", "class_acc", "class_acc_lenient", "cloze_acc"}
    predictions = [json.loads(line) for line in (out / "after.predictions.jsonl").read_text().splitlines()]
    assert {p["profile_id"] for p in predictions} == set(report["plan"]["held_out"])
    assert (out / "attack" / "DONE").is_file()
