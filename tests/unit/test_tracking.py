"""Tracking without a server: metric names, the default SQLite store (a real MLflow store in a temporary
folder), run continuation across requeues, rank 0 only, and the report built from tracked results."""

from __future__ import annotations

import time
from pathlib import Path
from types import SimpleNamespace

import pytest

from vgid_dist import tracking
from vgid_dist.cluster.report import collect, write_report_files
from vgid_dist.config import load_run_config
from vgid_dist.tracking import RunRecord, TrackingCallback


def test_default_store_is_sqlite_under_the_working_folder(tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.chdir(tmp_path)
    assert tracking.tracking_uri() == f"sqlite:///{tmp_path.resolve() / 'mlflow.db'}"
    # A relative path given by the user is pinned to this folder (a job may run elsewhere).
    assert tracking.tracking_uri("sqlite:///sub/x.db") == f"sqlite:///{tmp_path.resolve() / 'sub' / 'x.db'}"
    assert tracking.tracking_uri("http://127.0.0.1:5000") == "http://127.0.0.1:5000"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://host:1")
    assert tracking.tracking_uri() == "http://host:1"


def test_metric_names():
    results = {"forget": {"gen_rougeL": 0.25, "class_acc": 0.5}, "retain": {"cloze_acc": 1.0},
               "by_type": {"forget": {"Pure_Text": {"gen_rougeL": 0.5}}}, "counts": {"forget": {"gen_rougeL": 3}},
               "meta": {"seconds": 3.0}}
    assert tracking.eval_metrics(results) == {"forget/gen_rougeL": 0.25, "forget/class_acc": 0.5,
                                              "retain/cloze_acc": 1.0, "forget/Pure_Text/gen_rougeL": 0.5,
                                              "forget/count/gen_rougeL": 3.0}
    assert "reverse/forget/gen_rougeL" in tracking.eval_metrics(results, attack="reverse")
    steps = tracking.step_metrics({"loss": 1.5, "forget_kl": 0.5, "tokens/forget_tokens": 12.0, "lr": 1e-3,
                                   "grad_norm": float("nan"), "epoch": 0})
    assert steps == {"train/loss": 1.5, "train/forget_kl": 0.5, "train/scored_tokens/forget_tokens": 12.0,
                     "train/lr": 1e-3, "train/epoch": 0.0}


class _Strategy:
    def __init__(self, rank: int):
        self.rank, self.is_main, self.world_size, self.on_gpu = rank, rank == 0, 2, False

    def broadcast_object(self, obj):
        return obj


def test_rank_1_never_touches_the_store(tmp_path):
    uri = f"sqlite:///{tmp_path / 'store' / 'mlflow.db'}"
    cb = TrackingCallback(model="tiny", uri=uri, experiment="x")
    trainer = SimpleNamespace(strategy=_Strategy(rank=1), cfg=None, out=tmp_path)
    cb.on_start(trainer)
    cb.on_step(1, {"loss": 1.0, "step_time_s": 0.1})
    cb.on_eval({"forget": {"gen_rougeL": 0.1}})
    cb.on_end({"steps": 1})
    cb.on_failure()
    assert cb.run_id is None and cb.error is None
    assert not (tmp_path / "store").exists()


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> tracking.Tracker:
    folder = tmp_path_factory.mktemp("mlflow")
    return tracking.Tracker(f"sqlite:///{folder / 'mlflow.db'}")


def test_a_requeued_job_continues_its_run(store, tmp_path):
    out = tmp_path / "run"
    cfg = load_run_config("tiny", [f"output_dir={out}", "max_steps=2"])
    started = time.time() - 30  # the job started before its models loaded
    first, resumed = tracking.start_or_resume(store, cfg, model="tiny", experiment="requeue", start_time=started,
                                              log=lambda *_: None)
    assert tracking.read_run_id(out) == first and not resumed
    run = store.get_run(first)
    assert run.data.params["optim.max_steps"] == "2" and run.data.params["method.name"] == "vgid"
    assert {k: run.data.tags[k] for k in ("model", "forget_ratio", "method", "seed")} == {
        "model": "tiny", "forget_ratio": "5", "method": "vgid", "seed": "42"}
    # MLflow's own tags, as mlflow.start_run sets them, and the package's commit (the test runs in the repository)
    assert run.data.tags["mlflow.user"] and run.data.tags["mlflow.source.type"] == "LOCAL"
    assert run.data.tags["mlflow.source.git.commit"] == run.data.tags["git_commit"]
    assert run.info.start_time == int(started * 1000)
    assert run.info.artifact_uri.startswith(Path(store.uri[len("sqlite:///"):]).parent.as_uri())

    # The job is preempted (its run left RUNNING, or KILLED) and requeued: the same run continues.
    store.set_status(first, "KILLED")
    again, resumed = tracking.start_or_resume(store, cfg, model="tiny", experiment="requeue", log=lambda *_: None)
    assert again == first and resumed and store.status(first) == "RUNNING"
    assert store.get_run(first).info.start_time == int(started * 1000)

    # Other values for the same output_dir, or a finished run: a new run.
    changed = load_run_config("tiny", [f"output_dir={out}", "max_steps=3"])
    third, _ = tracking.start_or_resume(store, changed, model="tiny", experiment="requeue", log=lambda *_: None)
    assert third != first and tracking.read_run_id(out) == third
    store.set_status(third, "FINISHED")
    fourth, _ = tracking.start_or_resume(store, changed, model="tiny", experiment="requeue", log=lambda *_: None)
    assert fourth not in (first, third)


def test_a_sweep_placeholder_is_replaced_by_a_run_that_starts_with_the_job(store, tmp_path):
    out = tmp_path / "cell"
    out.mkdir()
    exp = store.experiment_id("placeholder")
    parent = store.create_run(exp, "sweep", {tracking.KIND_TAG: "sweep"})
    placeholder = store.create_run(exp, "tiny-fr5-vgid", {"method": "vgid"}, parent_id=parent, status="SCHEDULED",
                                   start_time=time.time() - 3600)  # submitted an hour before the job started
    tracking.write_run_id(out, placeholder)
    cfg = load_run_config("tiny", [f"output_dir={out}"])
    run_id, resumed = tracking.start_or_resume(store, cfg, model="tiny", experiment="placeholder",
                                               start_time=time.time(), log=lambda *_: None)
    run = store.get_run(run_id)
    assert run_id != placeholder and not resumed and tracking.read_run_id(out) == run_id
    assert store.get_run(placeholder) is None  # deleted: the sweep shows one run per cell
    assert run.data.tags[tracking.PARENT_TAG] == parent and run.info.run_name == "tiny-fr5-vgid"
    assert time.time() * 1000 - run.info.start_time < 60_000


def test_a_finished_output_dir_is_recorded_without_training(store, tmp_path):
    import json

    import yaml

    out = tmp_path / "done"
    out.mkdir()
    cfg = load_run_config("tiny", [f"output_dir={out}"])
    (out / "config.yaml").write_text(yaml.safe_dump(cfg.model_dump(mode="json")))
    (out / "train_log.jsonl").write_text("\n".join(json.dumps({"step": s, "loss": 1.0 / s}) for s in (1, 2)))
    (out / "eval.json").write_text(json.dumps({"forget": {"gen_rougeL": 0.2}, "retain": {"gen_rougeL": 0.6}}))
    (out / "DONE").write_text("{}")
    (out / "metrics.json").write_text(json.dumps({"train_seconds": 120.0}))
    (out / "DONE").write_text(json.dumps({"finished": 1_700_000_000.0}))
    run_id = tracking.import_finished_output(store, out, experiment="import", model="tiny")
    run = store.get_run(run_id)
    assert run.info.status == "FINISHED" and run.data.metrics["forget/gen_rougeL"] == 0.2
    assert [m.value for m in store.client.get_metric_history(run_id, "train/loss")] == [1.0, 0.5]
    assert {a.path for a in store.client.list_artifacts(run_id)} >= {"config.yaml", "table3.md", "eval"}
    # The run lasts what the training lasted, ending when DONE was written (not when it was recorded).
    assert (run.info.start_time, run.info.end_time) == (1_699_999_880_000, 1_700_000_000_000)


def test_vgid_track_completes_a_run_whose_tracking_was_lost(store, tmp_path):
    import json

    import yaml

    out = tmp_path / "lost"
    out.mkdir()
    cfg = load_run_config("tiny", [f"output_dir={out}"])
    run_id, _ = tracking.start_or_resume(store, cfg, model="tiny", experiment="lost", log=lambda *_: None)
    store.log_steps(run_id, {s: {"train/loss": 1.0 / s} for s in (1, 2, 3)})  # sent before the store went away
    (out / "config.yaml").write_text(yaml.safe_dump(cfg.model_dump(mode="json")))
    (out / "train_log.jsonl").write_text("".join(json.dumps({"step": s, "loss": 1.0 / s}) + "\n" for s in range(1, 7)))
    (out / "DONE").write_text(json.dumps({"finished": time.time()}))
    again, uri = tracking.record_output(out, uri=store.uri)
    assert (again, uri) == (run_id, store.uri)
    assert [m.step for m in store.client.get_metric_history(run_id, "train/loss")] == [1, 2, 3, 4, 5, 6]
    assert store.status(run_id) == "FINISHED"
    assert tracking.record_output(out, uri=store.uri)[0] == run_id  # finished: left alone
    assert len(store.client.get_metric_history(run_id, "train/loss")) == 6


def _run(run_id, method, ratio, metrics, *, seed="42", start=0, status="FINISHED", kind="train"):
    return RunRecord(run_id=run_id, name=run_id, status=status, start_time=start, params={}, metrics=metrics,
                     tags={"model": "tiny", "forget_ratio": str(ratio), "method": method, "seed": seed,
                           tracking.KIND_TAG: kind})


def test_report_tables_from_tracked_runs(tmp_path):
    runs = [
        _run("a", "vgid", 5, {"forget/gen_rougeL": 0.2, "retain/gen_rougeL": 0.5, "train/loss": 1.0}),
        _run("b", "vgid", 5, {"forget/gen_rougeL": 0.4, "retain/gen_rougeL": 0.7}, seed="7"),
        _run("old", "ga", 5, {"forget/gen_rougeL": 0.9}, start=1),
        _run("new", "ga", 5, {"forget/gen_rougeL": 0.1, "retain/gen_rougeL": 0.2}, start=2),
        _run("failed", "npo", 5, {"forget/gen_rougeL": 0.0}, status="FAILED"),
        _run("atk", "vgid", 10, {"forget/gen_rougeL": 0.3, "reverse/forget/gen_rougeL": 0.35,
                                 "reverse/forget/Pure_Text/gen_rougeL": 0.1}),
        RunRecord(run_id="p", name="sweep", status="FINISHED", params={}, tags={tracking.KIND_TAG: "sweep"},
                  metrics={"ref/tiny/fr5/base/forget/gen_rougeL": 0.8, "ref/tiny/fr5/base/retain/gen_rougeL": 0.75,
                           "ref/tiny/fr5/base/forget/Pure_Text/gen_rougeL": 0.1,
                           "ref/tiny/fr10/base/forget/gen_rougeL": 0.7,
                           "ref/tiny/fr10/base/reverse/forget/gen_rougeL": 0.72}),
    ]
    data = collect(runs)
    fr5 = data[("tiny", 5)][""]
    assert set(fr5) == {"ga", "vgid", "base"}
    assert fr5["vgid"]["forget"]["gen_rougeL"] == pytest.approx(0.3)  # mean of two seeds
    assert fr5["ga"]["forget"]["gen_rougeL"] == 0.1  # the newest run of a seed
    assert "npo" not in fr5
    assert data[("tiny", 10)]["reverse"] == {"vgid": {"forget": {"gen_rougeL": 0.35}},
                                             "base": {"forget": {"gen_rougeL": 0.72}}}
    written = write_report_files(data, "exp", tmp_path)
    names = {p.name for p in written}
    assert {"table3.md", "table6.md", "results.json", "tradeoff-tiny-fr5.png"} <= names
    table3 = (tmp_path / "table3.md").read_text()
    assert "**tiny, forget 5%**" in table3 and "| base |" in table3
    assert table3.index("| base |") < table3.index("| ga |") < table3.index("| vgid |")
    table6 = (tmp_path / "table6.md").read_text()
    row = next(line for line in table6.splitlines() if line.startswith("| vgid |"))
    assert "w/o attack: Forget Gen RL" in table6 and "w/ attack: Forget Gen RL" in table6
    assert "0.300" in row and "0.350" in row  # without, then with the attack


def test_relearning_table_from_tracked_runs(tmp_path):
    runs = [
        _run("v", "vgid", 5, {"forget/gen_rougeL": 0.2, "relearn_before/forget/gen_rougeL": 0.25,
                              "relearn_after/forget/gen_rougeL": 0.6, "relearn_before/forget/class_acc": 0.5,
                              "relearn_after/forget/class_acc": 0.5}),
        _run("g", "ga", 5, {"forget/gen_rougeL": 0.7, "relearn_before/forget/gen_rougeL": 0.8,
                            "relearn_after/forget/gen_rougeL": 0.75}),
        _run("n", "npo", 5, {"forget/gen_rougeL": 0.5}),  # trained without the attack: no row
    ]
    written = write_report_files(collect(runs), "exp", tmp_path)
    assert tmp_path / "relearn.md" in written and not (tmp_path / "table6.md").exists()  # not a Table 6 attack
    lines = (tmp_path / "relearn.md").read_text().splitlines()
    assert "**tiny, forget 5%**" in lines
    header = next(line for line in lines if line.startswith("| Method |"))
    assert header.split(" | ")[1:3] == ["gen_rougeL", "gen_bleu"]
    ga = next(line for line in lines if line.startswith("| ga |"))
    vgid = next(line for line in lines if line.startswith("| vgid |"))
    assert "0.800 -> 0.750 (-0.050)" in ga
    assert "0.250 -> 0.600 (+0.350)" in vgid and "0.500 -> 0.500 (+0.000)" in vgid and "| - |" in vgid
    assert lines.index(ga) < lines.index(vgid) and not any(line.startswith("| npo |") for line in lines)
