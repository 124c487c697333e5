"""Own data end to end: the same people through the MLLMU-Bench layout and through a JSONL folder give the same
generation scores; ``vgid forget`` writes its audit (self-contained HTML, one MLflow run), refuses to overwrite
it, and its exit status says whether the bar was met."""

from __future__ import annotations

import json
import re
import sqlite3

import pytest

from tests.conftest import PYTHON, run_launcher
from vgid_dist.config import EvalOptions
from vgid_dist.data.people_writer import write_people_folder

pytestmark = pytest.mark.integration

RATIO = 15  # three forgotten people in the 20-profile benchmark: the relearning attack needs two or more


@pytest.fixture(scope="module")
def people_dir(bench_dir, tmp_path_factory):
    return write_people_folder(bench_dir, tmp_path_factory.mktemp("people") / "my_people", RATIO)


def test_mllmu_layout_and_jsonl_folder_give_the_same_generation_scores(tiny_llava, bench_dir, people_dir, tmp_path):
    from vgid_dist.eval.people import evaluate_people
    from vgid_dist.eval.run import evaluate_model

    opts = EvalOptions(batch_size=1, max_new_tokens=12)  # one question per call: no padding in either
    bench = evaluate_model(str(tiny_llava), str(bench_dir), RATIO, tmp_path / "bench.json", opts=opts,
                           splits=("forget", "retain"), progress=False)
    people = evaluate_people(str(tiny_llava), people_dir, tmp_path / "people.json", opts=opts, progress=False)
    for split in ("forget", "retain"):
        for metric in ("gen_rougeL", "gen_bleu"):
            assert people[f"{split}_probes"][metric] == pytest.approx(bench[split][metric], abs=1e-12)
            assert people["counts"][f"{split}_probes"][metric] == bench["counts"][split][metric]
        for qtype in ("Image_Textual", "Pure_Text"):
            assert people["by_type"][f"{split}_probes"][qtype]["gen_rougeL"] == pytest.approx(
                bench["by_type"][split][qtype]["gen_rougeL"], abs=1e-12)
    assert set(people["by_person"]["forget"]) == set(people["by_person"]["forget_probes"])
    assert len(people["by_person"]["forget"]) == 3


def forget(model, data, out, *extra, env=None):
    return run_launcher([PYTHON, "-m", "vgid_dist.cli", "forget", "--model", str(model), "--data", str(data),
                         "--config", "tiny", "--out", str(out), "--relearn-steps", "2", *extra,
                         "optim.max_steps=2", "eval.max_new_tokens=8", "eval.batch_size=32"],
                        timeout=600, env=env)


def test_forget_writes_the_audit_logs_one_run_and_keeps_it(tiny_llava, people_dir, tmp_path):
    store = tmp_path / "mlflow.db"
    env = {"MLFLOW_TRACKING_URI": f"sqlite:///{store}", "MLFLOW_EXPERIMENT_NAME": "audit-test", "VGID_TRACKING": "on"}
    out = tmp_path / "audit"
    res = forget(tiny_llava, people_dir, out, "--require", "forget.fact_recall<=1,retain_probes.gen_bleu>=0",
                 env=env)
    assert res.returncode == 0, res.stdout[-4000:]
    audit = json.loads((out / "audit.json").read_text())
    assert audit["passed"] is True and [r["met"] for r in audit["require"]] == [True, True]
    assert audit["people"] == {"forget": 3, "retain": 17}
    assert set(audit["before"]) == set(audit["after"]) == {"forget", "retain", "forget_probes", "retain_probes"}
    assert set(audit["by_person"]["forget"]) == set(audit["by_person"]["forget_probes"])
    assert len(audit["by_person"]["forget"]) == 3 and len(audit["by_person"]["retain"]) == 17
    assert set(audit["attacks"]) == {"reverse", "relearn"}
    assert set(audit["attacks"]["relearn"]["recovery"]) == {"forget", "forget_probes"}
    assert re.fullmatch(r"[0-9a-f]{64}", audit["model"]["sha256"]) and audit["model"]["sha256"] != \
        audit["unlearned_model"]["sha256"]
    assert "forget.jsonl" in audit["data"]["files"] and "probes.jsonl" in audit["data"]["files"]
    assert audit["config"]["data"]["format"] == "jsonl" and audit["config"]["optim"]["max_steps"] == 2
    page = (out / "audit.html").read_text()
    assert "data:image/png;base64," in page and not re.search(r"(src|href)=['\"]https?:", page)
    assert "fact_recall" in (out / "audit.md").read_text()
    # one MLflow run: the training's, with the audit's metrics and files
    with sqlite3.connect(store) as db:
        runs = db.execute("select run_uuid, status from runs").fetchall()
        keys = {k for (k,) in db.execute("select key from metrics where run_uuid = ?", (runs[0][0],))}
    assert len(runs) == 1 and runs[0] == (audit["mlflow"]["run_id"], "FINISHED")
    assert {"before/forget/fact_recall", "after/retain/gen_rougeL", "reverse/forget/fact_recall",
            "relearn_after/forget_probes/fact_recall", "audit/passed", "train/loss"} <= keys

    # never overwritten: the same command is refused before anything runs
    stamp = (out / "audit.json").stat().st_mtime_ns
    again = forget(tiny_llava, people_dir, out, env=env)
    assert again.returncode == 2 and "never overwritten" in again.stdout
    assert (out / "audit.json").stat().st_mtime_ns == stamp


def test_forget_exit_status_says_the_bar_was_not_met(tiny_llava, people_dir, tmp_path):
    res = forget(tiny_llava, people_dir, tmp_path / "audit", "--require", "forget.fact_recall<=-1",
                 "--relearn-steps", "0", env={"VGID_TRACKING": "off"})
    assert res.returncode == 4, res.stdout[-4000:]
    assert "does not meet the bar: forget.fact_recall<=-1" in res.stdout
    audit = json.loads((tmp_path / "audit" / "audit.json").read_text())
    assert audit["passed"] is False and audit["mlflow"] is None and set(audit["attacks"]) == {"reverse"}


def test_bad_bar_is_refused_before_anything_runs(tiny_llava, people_dir, tmp_path):
    res = forget(tiny_llava, people_dir, tmp_path / "audit", "--require", "test.fact_recall<=0.1",
                 env={"VGID_TRACKING": "off"})
    assert res.returncode == 2 and "split 'test'" in res.stdout
    assert not (tmp_path / "audit").exists()
