"""``vgid forget``: an audited deletion of the people in a JSONL folder.

    vgid forget --model M --data my_people/ [--method vgid] [--config RECIPE] [key=value ...] --out DIR \\
        [--require "forget.fact_recall<=0.1,retain.gen_rougeL>=0.9"] [--executor local|slurm]

1. Everything is read and checked first: the folder (``data.people``), the recipe with the overrides, the
   ``--require`` conditions; a ``DIR`` that holds an earlier audit is refused.
2. The model is evaluated on the folder (``DIR/eval/before.json``), trained on its forget and retain pairs
   (``DIR/run``, an ordinary run: config, log, checkpoints, tracking), evaluated again (``after.json``), asked
   the forgotten people's questions under the reverse-prompt attack (``reverse.json``) and attacked by
   relearning (``DIR/relearn``: fine-tuned on some forgotten people's pairs, the others scored).
3. ``DIR/audit.json``, ``audit.md`` and ``audit.html`` are written (``eval.audit``), and the audit is logged to
   the training's MLflow run (``log_audit``: the one place this command touches tracking).

An interrupted audit resumes when the same command runs again (``DIR/inputs.json`` records what it was asked:
other inputs in the same ``DIR`` are refused); finished steps are reused. With ``--executor slurm`` the same
steps run as one Slurm job through submitit (one task per GPU), which this command waits for.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path

from vgid_dist.errors import ConfigError, RunExistsError, TrackingError, VgidError

EVAL_SPLITS_ATTACKED = ("forget", "forget_probes")
DEFAULT_RECIPE = "llava-1.5-7b"


@dataclass
class ForgetRequest:
    """What ``vgid forget`` was asked (picklable plain data: it travels to a Slurm job as it is)."""

    model: str
    data: str
    out: str
    method: str | None = None
    recipe: str | None = None
    overrides: list[str] = field(default_factory=list)
    require: str | None = None
    relearn_steps: int = 10
    relearn_subset: float = 0.5
    relearn_lr: float | None = None

    def recipe_name(self) -> str:
        """``--config``, else the method's packaged recipe (``npo``, ...), else VGID's (``llava-1.5-7b``)."""
        if self.recipe:
            return self.recipe
        from vgid_dist.config import packaged_recipes

        return self.method if self.method in packaged_recipes() else DEFAULT_RECIPE


def audit_config(req: ForgetRequest):
    """The training run's configuration: the recipe, the model and the folder (read as JSONL, the model's
    family from its folder), ``--method``, the user's overrides, and the run folder ``DIR/run``."""
    from vgid_dist.assets import resolve_assets
    from vgid_dist.config import load_run_config, updated_config

    recipe = req.recipe_name()
    base = [f"model.path={req.model}", "model.family=null", "data.format=jsonl", f"data.root={req.data}"]
    if req.method and load_run_config(recipe).method.name != req.method:
        base.append(f"method={{name: {req.method}}}")
    cfg = load_run_config(recipe, [*base, *req.overrides])
    cfg = updated_config(cfg, {"output_dir": str(Path(req.out).expanduser() / "run"), "eval.at_end": False,
                               "eval.every_steps": 0}, f"vgid forget ({recipe})")
    from vgid_dist.methods import method_class

    if not method_class(cfg.method.name).trains:
        raise ConfigError(f"--method {cfg.method.name}: it does not train, so there is no deletion to audit")
    return resolve_assets(cfg)


def _check_inputs(out: Path, inputs: dict) -> None:
    """A folder holds one audit's inputs: a resumed audit must have been asked the same thing."""
    path = out / "inputs.json"
    if path.is_file():
        earlier = json.loads(path.read_text())
        changed = sorted(k for k in inputs.keys() | earlier.keys() if inputs.get(k) != earlier.get(k))
        if changed:
            raise RunExistsError(f"{out}: holds an unfinished audit of other inputs ({', '.join(changed)} differ); "
                                 "choose another --out, or run that audit's command again to finish it")


class _Steps:
    """The audit's evaluations, each reused when its results file is already there (a resumed audit)."""

    def __init__(self, out: Path, people, cfg, opts):
        self.out, self.people, self.cfg, self.opts = out, people, cfg, opts
        self.timings: dict[str, float] = {}

    def evaluate(self, name: str, model: str, *, splits=None, opts=None) -> dict | None:
        from vgid_dist.eval.people import evaluate_people

        target = self.out / "eval" / f"{name}.json"
        t0 = time.perf_counter()
        if target.is_file():
            results = json.loads(target.read_text())
        else:
            print(f"[forget] evaluating {name} ({model})", flush=True)
            results = evaluate_people(model, self.people.root, target, opts=opts or self.opts, splits=splits,
                                      people=self.people, dtype=self.cfg.model.dtype,
                                      attention=self.cfg.model.attention)
        self.timings[f"{name}_eval_s"] = round(time.perf_counter() - t0, 1)
        return results

    def timed(self, name: str, fn):
        t0 = time.perf_counter()
        value = fn()
        self.timings[f"{name}_s"] = round(time.perf_counter() - t0, 1)
        return value


def run_audit(req: ForgetRequest) -> dict:
    """The whole audit on every rank of the job; returns the audit dict on rank 0, {} elsewhere."""
    from vgid_dist.config import EvalOptions
    from vgid_dist.data.people import read_people
    from vgid_dist.eval.audit import check_no_audit
    from vgid_dist.eval.require import parse_require
    from vgid_dist.io import write_json_atomic

    t_start = time.perf_counter()
    out = Path(req.out).expanduser()
    check_no_audit(out)
    people = read_people(req.data)
    conditions = parse_require(req.require, people.splits)
    cfg = audit_config(req)
    tracker = _tracker(cfg, req.recipe_name())  # the store answers (or tracking is off) before any model loads
    if req.relearn_steps and len(people.ids["forget"]) < 2:
        raise ConfigError(f"{people.files['forget']}: the relearning attack needs at least 2 people to forget "
                          "(some to fit, some to score); give --relearn-steps 0 to leave it out")
    is_main = int(os.environ.get("RANK", "0")) == 0
    inputs = {"model": str(Path(cfg.model.path).resolve()), "data": str(people.root.resolve()),
              "recipe": req.recipe_name(), "method": cfg.method.name, "overrides": list(req.overrides),
              "relearn": [req.relearn_steps, req.relearn_subset, req.relearn_lr]}
    _check_inputs(out, inputs)
    if is_main:
        write_json_atomic(out / "inputs.json", inputs)
    steps = _Steps(out, people, cfg, EvalOptions.for_run(cfg))
    before = steps.evaluate("before", cfg.model.path)
    steps.timed("train", lambda: _train(cfg, tracker))
    unlearned = str(cfg.resolved_output_dir() / "model")
    after = steps.evaluate("after", unlearned)
    attacked = tuple(s for s in EVAL_SPLITS_ATTACKED if s in people.splits)
    reverse = steps.evaluate("reverse", unlearned, splits=attacked, opts=steps.opts.but(attack="reverse"))
    relearn = steps.timed("relearn", lambda: _relearn(req, people, cfg, unlearned, steps.opts))
    if not is_main:
        return {}
    steps.timings["total_s"] = round(time.perf_counter() - t_start, 1)
    audit = assemble_audit(req, cfg, people, before, after, reverse, relearn, conditions, steps.timings)
    write_and_log(out, audit)
    return audit


def _tracker(cfg, recipe: str):
    """The training's tracking callback (None when ``VGID_TRACKING=off`` or the run is already trained)."""
    from vgid_dist.tracking import callback_for

    if (cfg.resolved_output_dir() / "DONE").is_file():
        return None
    return callback_for(recipe)


def _train(cfg, tracker) -> None:
    from vgid_dist.engine.entry import train
    from vgid_dist.jobs import run_callbacks

    if (cfg.resolved_output_dir() / "DONE").is_file():
        print(f"[forget] {cfg.resolved_output_dir()} is trained; reusing it", flush=True)
        return
    print(f"[forget] training {cfg.method.name} -> {cfg.resolved_output_dir()}", flush=True)
    train(cfg, callbacks=run_callbacks(cfg, tracker))


def _relearn(req: ForgetRequest, people, cfg, unlearned: str, opts) -> dict | None:
    from vgid_dist.eval.relearn import run_people_relearn

    if not req.relearn_steps:
        return None
    folder = Path(req.out).expanduser() / "relearn"
    if (folder / "relearn.json").is_file():
        return json.loads((folder / "relearn.json").read_text())
    print(f"[forget] relearning attack: {req.relearn_steps} steps on {req.relearn_subset:.0%} of the forgotten "
          "people", flush=True)
    # Untracked: the audit is one MLflow run; the attack's scores go into it (log_audit).
    return run_people_relearn(unlearned, people, req.relearn_steps, req.relearn_subset, folder,
                              config=req.recipe_name(), overrides=_model_free(req.overrides), lr=req.relearn_lr,
                              seed=cfg.optim.seed, opts=opts, force=True)


def _model_free(overrides: list[str]) -> list[str]:
    """The user's overrides minus those the attack sets itself (its model, data and output folder)."""
    owned = ("model.path", "data.root", "data.format", "output_dir", "method")
    return [o for o in overrides if o.split("=", 1)[0].strip() not in owned
            and not o.split("=", 1)[0].strip().startswith("method.")]


def assemble_audit(req, cfg, people, before, after, reverse, relearn, conditions, timings) -> dict:
    """The audit as plain data (what ``audit.json`` holds)."""
    import yaml

    from vgid_dist.config import resolved_config
    from vgid_dist.eval.audit import by_person, digest_folder, digest_people
    from vgid_dist.eval.evaluator import split_results
    from vgid_dist.eval.require import check_require

    stages = {"before": split_results(before), "after": split_results(after), "reverse": split_results(reverse),
              "relearn": (relearn or {}).get("after", {})}
    attacks = {"reverse": {"before": {s: stages["after"].get(s, {}) for s in stages["reverse"]},
                           "after": stages["reverse"]}}
    if relearn:
        attacks["relearn"] = {"before": relearn["before"], "after": relearn["after"], "plan": relearn["plan"],
                              "steps": relearn["steps"], "subset": relearn["subset"]}
    for attack in attacks.values():
        attack["recovery"] = {s: {m: attack["after"][s][m] - v for m, v in attack["before"][s].items()
                                  if m in attack["after"].get(s, {})} for s in attack["before"]}
    require = check_require(conditions, stages)
    resolved = resolved_config(cfg)
    return {
        "kind": "vgid deletion audit", "version": 1, "request": asdict(req),
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "passed": all(r["met"] for r in require) if require else None, "require": require,
        "method": cfg.method.name, "recipe": req.recipe_name(), "overrides": list(req.overrides),
        "model": digest_folder(Path(cfg.model.path)),
        "unlearned_model": digest_folder(cfg.resolved_output_dir() / "model"),
        "data": digest_people(people),
        "people": {g: len(ids) for g, ids in people.ids.items()},
        "questions": {s: sum(q.split == s for q in people.questions) for s in people.splits},
        "before": stages["before"], "after": stages["after"], "by_person": by_person(before, after),
        "attacks": attacks, "timings": timings, "config": resolved,
        "config_yaml": yaml.safe_dump(resolved, sort_keys=False),
        "files": {"run": str(cfg.resolved_output_dir()), "eval": str(Path(req.out).expanduser() / "eval")},
    }


def write_and_log(out: Path, audit: dict) -> None:
    """The audit files, then the audit on the training's MLflow run; a tracking failure after the files are
    written is reported as one (exit status 3), the audit kept."""
    from vgid_dist.eval.audit import write_audit

    run_folder = Path(audit["files"]["run"])
    audit["mlflow"] = mlflow_record(run_folder)
    paths = write_audit(out, audit)
    try:
        log_audit(audit, run_folder, paths)
    except Exception as exc:
        raise TrackingError(f"the audit is written ({out / 'audit.json'}) but logging it to MLflow failed: "
                            f"{type(exc).__name__}: {exc}", exit_code=3) from None


def mlflow_record(run_folder: Path) -> dict | None:
    from vgid_dist import tracking

    run_id = tracking.read_run_id(run_folder) if tracking.enabled() else None
    return {"run_id": run_id, "uri": tracking.tracking_uri()} if run_id else None


def log_audit(audit: dict, run_folder: Path, paths: list[Path]) -> None:
    """The audit on the training's run (the run ``DIR/run/mlflow_run_id`` names): metrics ``before/<split>/
    <metric>``, ``after/...``, ``reverse/...``, ``relearn_before/...``, ``relearn_after/...`` and
    ``audit/passed``, a ``vgid.audit`` tag, and the three audit files as artifacts under ``audit/``."""
    from vgid_dist import tracking

    record = audit.get("mlflow")
    if not record:
        return
    metrics: dict[str, float] = {}
    stages = {"before": audit["before"], "after": audit["after"]}
    for name, attack in audit["attacks"].items():
        stages[name if name == "reverse" else f"{name}_after"] = attack["after"]
        if name != "reverse":
            stages[f"{name}_before"] = attack["before"]
    for stage, splits in stages.items():
        for split, values in splits.items():
            metrics.update({f"{stage}/{split}/{m}": float(v) for m, v in values.items()
                            if isinstance(v, (int, float))})
    passed = audit["passed"]
    if passed is not None:
        metrics["audit/passed"] = float(passed)
    tracker = tracking.Tracker(record["uri"])
    tracker.log(record["run_id"], metrics=metrics,
                tags={"vgid.audit": "none" if passed is None else "passed" if passed else "failed",
                      "audit_dir": str(Path(paths[0]).parent.resolve())})
    tracker.log_files(record["run_id"], paths, "audit")


# ---- Slurm --------------------------------------------------------------------------------------------------------

@dataclass
class ForgetTask:
    """The audit as a submitit job: every task exports its rank from Slurm and runs ``run_audit``. A requeued
    job resumes it (finished steps are reused)."""

    request: ForgetRequest
    env: dict[str, str] = field(default_factory=dict)

    def __call__(self) -> dict:
        os.environ.update(self.env)
        from vgid_dist.cluster.tasks import export_distributed_env

        export_distributed_env()
        audit = run_audit(self.request)
        return {"passed": audit.get("passed")} if audit else {}

    def checkpoint(self, *args, **kwargs):
        import submitit.helpers

        return submitit.helpers.DelayedSubmission(self)


def submit_audit(req: ForgetRequest, resources: dict, *, wait_timeout_s: float | None = None) -> dict:
    """Run the audit as one Slurm job and wait for it; returns ``DIR/audit.json``."""
    from vgid_dist.cluster.executor import make_executor, wait_jobs
    from vgid_dist.cluster.matrix import Resources, merge_resources

    out = Path(req.out).expanduser()
    from vgid_dist.eval.audit import check_no_audit

    check_no_audit(out)
    audit_config(req)  # refused here, before anything is queued
    merged = merge_resources(Resources(**resources))
    name = f"vgid-forget-{out.name}"
    env = {k: v for k, v in os.environ.items() if k.startswith(("VGID_", "MLFLOW_"))}
    job = make_executor("slurm", out / "submitit", merged, name).submit(ForgetTask(req, env))
    print(f"[forget] submitted slurm job {job.job_id} ({name}); waiting", flush=True)
    outcome = wait_jobs({name: job}, "slurm", timeout_s=wait_timeout_s)[name]
    if outcome == "done":
        job.result()  # re-raises the job's own error, with its traceback
    path = out / "audit.json"
    if not path.is_file():
        raise VgidError(f"slurm job {job.job_id} ended ({outcome}) without writing {path}; its log is under "
                        f"{out / 'submitit'}", exit_code=1)
    return json.loads(path.read_text())
