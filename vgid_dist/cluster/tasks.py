"""What runs inside a sweep job, in every task (one task per GPU): the distributed environment from Slurm's
variables, then the same training entry as ``launch/train.py``.

Both callables are picklable plain data and implement submitit's ``checkpoint``: on preemption or on the
signal before the time limit, submitit calls it on rank 0 and requeues the job with what it returns, itself.
The output_dir and the MLflow run id kept there are unchanged, so the requeued job continues the same run.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

from vgid_dist.config import EvalOptions
from vgid_dist.errors import RunInterrupted


def export_distributed_env() -> tuple[int, int]:
    """RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR/PORT from the job; DeepSpeed then picks the GPU from
    LOCAL_RANK (CUDA_VISIBLE_DEVICES is left alone: every task sees the node's GPUs)."""
    import submitit.helpers

    # overwrite: a sweep submitted from inside a job (an interactive allocation, a torchrun shell) passes that
    # job's RANK/MASTER_* on through sbatch's exported environment; this task's own values must win.
    env = submitit.helpers.TorchDistributedEnvironment().export(set_cuda_visible_devices=False, overwrite=True)
    return env.rank, env.world_size


@dataclass
class CellTask:
    """Train one cell, then evaluate it under each attack (``eval-<attack>.json``, logged to its run)."""

    name: str
    recipe: str
    overrides: list[str]
    output_dir: str
    env: dict[str, str] = field(default_factory=dict)
    attacks: list[str] = field(default_factory=list)
    relearn: dict = field(default_factory=dict)
    """The matrix's ``relearn`` settings (steps, subset, lora, lr, seed), used when ``attacks`` holds it."""
    force: bool = False

    def __call__(self) -> dict:
        # Before anything heavy is imported: OMP_NUM_THREADS and the like only count if set first.
        os.environ.update(self.env)
        rank, world = export_distributed_env()
        from vgid_dist.jobs import train_recipe

        out = Path(self.output_dir)
        if (out / "DONE").exists() and not self.force:
            # A requeue after training had finished (preempted during the final uploads): nothing to redo.
            print(f"[sweep] {self.name}: {out} is complete", flush=True)
        else:
            try:
                train_recipe(self.recipe, list(self.overrides), force=self.force)
            except RunInterrupted as exc:
                # Stopped by a signal (Slurm preempting or cancelling the job) after a checkpoint: leave no
                # result behind (submitit writes one only for a return or an Exception), so a requeued job
                # resumes the cell and the sweep waits for it, while a cancelled one reads as ended.
                print(f"[sweep] {self.name}: {exc}", flush=True)
                raise SystemExit(exc.exit_code) from None
        for attack in self.attacks:
            if attack == "relearn":
                self._relearn(rank)
            else:
                self._evaluate_attack(attack, rank)
        return {"cell": self.name, "rank": rank, "world_size": world, "output_dir": str(out)}

    def _evaluate_attack(self, attack: str, rank: int) -> None:
        from vgid_dist.assets import resolve_assets
        from vgid_dist.config import load_run_config
        from vgid_dist.eval.run import evaluate_model

        cfg = resolve_assets(load_run_config(self.recipe, list(self.overrides)))
        out = cfg.resolved_output_dir()
        target = out / f"eval-{attack}.json"
        if not target.is_file():
            # The cell's own evaluation settings (eval.protocol, eval.mc_mode, ...), so its attacked rows are
            # comparable with its plain row.
            opts = EvalOptions.for_run(cfg, attack=attack)
            evaluate_model(str(out / "model"), cfg.data.root, cfg.data.forget_ratio, target, opts=opts,
                           splits=cfg.eval.splits, dtype=cfg.model.dtype, attention=cfg.model.attention,
                           limit=cfg.eval.limit)
        if rank == 0:
            from vgid_dist import tracking

            run_id = tracking.read_run_id(out)
            if tracking.enabled() and run_id:
                tracker = tracking.Tracker()
                tracker.log_eval(run_id, json.loads(target.read_text()), attack=attack)
                tracker.log_files(run_id, [target, target.with_name(f"eval-{attack}.predictions.jsonl")], "eval")

    def _relearn(self, rank: int) -> None:
        """The relearning attack on the cell's model (``<output_dir>/relearn/``); every rank takes part in its
        fine-tuning and evaluations. Rank 0 logs the held-out profiles' forget scores before and after as
        ``relearn_before/forget/<metric>`` and ``relearn_after/forget/<metric>`` on the cell's run."""
        from vgid_dist.assets import resolve_assets
        from vgid_dist.cluster.matrix import RelearnSpec
        from vgid_dist.config import load_run_config
        from vgid_dist.eval.relearn import run_relearn
        from vgid_dist.tracking import callback_for

        cfg = resolve_assets(load_run_config(self.recipe, list(self.overrides)))
        out = cfg.resolved_output_dir()
        target = out / "relearn" / "relearn.json"
        spec = RelearnSpec(**self.relearn)  # the matrix's settings; its defaults where none were given
        if target.is_file():
            result = json.loads(target.read_text())
        else:
            opts = EvalOptions.for_run(cfg, seed=spec.seed)
            tracker = callback_for(self.recipe)  # the attack's fine-tuning: a run of its own in the experiment
            result = run_relearn(str(out / "model"), cfg.data.root, cfg.data.forget_ratio, spec.steps, spec.subset,
                                 out / "relearn", config=self.recipe, lora=spec.lora, lr=spec.lr, seed=spec.seed,
                                 opts=opts, force=True, callbacks=[tracker] if tracker is not None else [])
        if rank == 0 and result:
            from vgid_dist import tracking

            run_id = tracking.read_run_id(out)
            if tracking.enabled() and run_id:
                tracker = tracking.Tracker()
                tracker.log_eval(run_id, result["before"], attack="relearn_before")
                tracker.log_eval(run_id, result["after"], attack="relearn_after")
                tracker.log_files(run_id, [target], "relearn")

    def checkpoint(self, *args, **kwargs):
        import submitit.helpers

        return submitit.helpers.DelayedSubmission(self)


@dataclass
class ReferenceTask:
    """Evaluate the untouched model of one (model, forget ratio): Table 3's Base row (and ICU, and each under
    the attacks), written to ``<folder>/<name>[-<attack>].json`` and logged on the sweep's parent run."""

    name: str
    model: str
    forget_ratio: int
    recipe: str
    overrides: list[str]
    folder: str
    evaluations: list[tuple[str, str | None]]
    icu_style: str
    parent_run_id: str | None
    env: dict[str, str] = field(default_factory=dict)

    def __call__(self) -> dict:
        os.environ.update(self.env)
        rank, world = export_distributed_env()
        from vgid_dist.assets import resolve_assets
        from vgid_dist.config import load_run_config
        from vgid_dist.eval.run import evaluate_model

        cfg = resolve_assets(load_run_config(self.recipe, list(self.overrides)))
        base_opts = EvalOptions.for_run(cfg)  # the same settings as the cells' own evaluations
        folder = Path(self.folder)
        done = []
        for name, attack in self.evaluations:
            target = folder / (f"{name}-{attack}.json" if attack else f"{name}.json")
            if not target.is_file():
                steer = self._steering_file(cfg, rank) if name == "mllmeraser" else None
                opts = base_opts.but(icu=self.icu_style if name == "icu" else None, attack=attack,
                               steer=steer)
                evaluate_model(cfg.model.path, cfg.data.root, self.forget_ratio, target, opts=opts,
                               splits=cfg.eval.splits, dtype=cfg.model.dtype, attention=cfg.model.attention,
                               limit=cfg.eval.limit)
            done.append(str(target))
            if rank == 0:
                log_reference(self.parent_run_id, self.model, self.forget_ratio, name, attack, target)
        return {"job": self.name, "rank": rank, "world_size": world, "results": done}

    def _steering_file(self, cfg, rank: int, wait_s: float = 3600.0) -> str:
        """MLLMEraser's steering file for this model and forget ratio (method defaults), built once by rank 0
        in one process; the other ranks wait for it (no process group exists yet to wait on)."""
        import time

        from vgid_dist.eval.steering import build_steering_file, steering_params

        path = Path(self.folder) / "mllmeraser.safetensors"
        if rank == 0 and not path.is_file():
            # Steering.save writes a temporary file and renames it: the other ranks never see a partial one.
            build_steering_file(cfg.model.path, cfg.data.root, self.forget_ratio, path, steering_params(),
                                seed=cfg.optim.seed, batch_size=cfg.eval.batch_size, dtype=cfg.model.dtype)
        deadline = time.monotonic() + wait_s
        while not path.is_file():
            if time.monotonic() > deadline:
                raise TimeoutError(f"rank {rank}: {path} not written by rank 0 within {wait_s:.0f} s")
            time.sleep(2.0)
        return str(path)

    def checkpoint(self, *args, **kwargs):
        import submitit.helpers

        return submitit.helpers.DelayedSubmission(self)


def log_reference(parent_run_id: str | None, model: str, forget_ratio: int, name: str, attack: str | None,
                  results_file: Path) -> None:
    """A reference evaluation's metrics (``ref/<model>/fr<ratio>/<name>/[<attack>/]<split>/<metric>``) and
    files on the sweep's parent run."""
    from vgid_dist import tracking

    if not parent_run_id or not tracking.enabled():
        return
    tracker = tracking.Tracker()
    prefix = tracking.reference_prefix(model, forget_ratio, name)
    tracker.log_eval(parent_run_id, json.loads(Path(results_file).read_text()), attack=attack, prefix=prefix)
    stem = Path(results_file).name.removesuffix(".json")
    tracker.log_files(parent_run_id, [results_file, Path(results_file).with_name(f"{stem}.predictions.jsonl")],
                      f"reference/{model}/fr{forget_ratio}")
