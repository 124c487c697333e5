"""The training recipe: read the config once, ``setup -> train -> finish``.

Output folder of a run::

    output_dir/
      config.yaml        the resolved configuration
      train_log.jsonl    one line per logged step
      model/             the unlearned model (Hugging Face folder, safetensors)
      metrics.json       final loss terms, steps, timings (and evaluation results when eval.at_end)
      DONE               written last: the run is complete
"""

from __future__ import annotations

import json
import os
import random
import sys
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml

from vgid_dist.config import RunConfig
from vgid_dist.data.collate import Collator
from vgid_dist.data.sampler import StepSampler
from vgid_dist.data.schema import DataError
from vgid_dist.engine.runner import EngineRunner
from vgid_dist.engine.strategy import DeepSpeedStrategy
from vgid_dist.methods import build_method
from vgid_dist.models import load_adapter


class RunExistsError(RuntimeError):
    """The output folder holds a finished run; it is never overwritten silently."""


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def write_json_atomic(path: Path, data: Any) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=True, default=str))
    os.replace(tmp, path)


def format_duration(seconds: float) -> str:
    seconds = int(max(0, seconds))
    return f"{seconds // 3600}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"


class Trainer:
    """``callbacks``: objects with any of ``on_start(trainer)``, ``on_step(step, metrics)``,
    ``on_eval(results)``, ``on_end(summary)`` (rank 0 and others alike; a callback decides where it acts)."""

    def __init__(self, cfg: RunConfig, *, force: bool = False, callbacks: list | None = None):
        self.cfg = cfg
        self.force = force
        self.callbacks = list(callbacks or [])
        self.out = cfg.resolved_output_dir()
        self.summary: dict[str, Any] = {}

    def log(self, message: str) -> None:
        if self.strategy.is_main:
            print(message, flush=True)

    # -- setup ----------------------------------------------------------------------------------------------------
    def setup(self) -> None:
        cfg = self.cfg
        if (self.out / "DONE").exists() and not self.force:
            raise RunExistsError(f"{self.out} holds a finished run (DONE present); choose another output_dir or "
                                 "pass --force to overwrite it")
        seed_everything(cfg.optim.seed)
        # Model folder and data first: a bad path fails before a process group or a model is set up.
        self.adapter = load_adapter(cfg.model.path, cfg.model.family)
        self.collator = Collator(self.adapter, cfg.data.max_length)
        self.method = build_method(cfg.method, self.collator, cfg.optim.seed)
        self.primary, self.retain = self.method.training_samples(cfg.data)
        if not self.primary:
            raise DataError(f"{cfg.data.root}: the training split of method {cfg.method.name!r} is empty "
                            f"(forget ratio {cfg.data.forget_ratio})")
        if self.method.uses_retain and not self.retain:
            raise DataError(f"{cfg.data.root}: method {cfg.method.name!r} needs retain samples but the retain "
                            "split is empty")
        self.strategy = DeepSpeedStrategy.for_run(cfg)
        self.sampler = StepSampler(len(self.primary), len(self.retain), cfg.optim.batch_size,
                                   self.strategy.world_size, self.strategy.rank, cfg.optim.grad_accum,
                                   cfg.optim.seed)
        self.total_steps = self.sampler.total_steps(cfg.optim.epochs, cfg.optim.max_steps)

        if self.strategy.is_main:
            self.out.mkdir(parents=True, exist_ok=True)
            (self.out / "DONE").unlink(missing_ok=True)
            (self.out / "config.yaml").write_text(yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False))
        self.log(f"[vgid] run {cfg.method.name} | model {cfg.model.path} ({self.adapter.family}, {cfg.model.dtype}) | "
                 f"{len(self.primary)} primary + {len(self.retain)} retain samples | world {self.strategy.world_size} "
                 f"| ZeRO-{self.strategy.zero_stage} | {self.total_steps} steps of {cfg.optim.batch_size} -> {self.out}")

        attention = self.strategy.attention_impl()
        student_model = self.adapter.load_model(self.strategy.dtype, attention)
        if cfg.model.gradient_checkpointing:
            student_model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        self.engine = self.strategy.build_student(student_model, self.total_steps)
        self.student = EngineRunner(self.engine, self.adapter, self.strategy.device, self.strategy.dtype, frozen=False)
        self.frozen = None
        if self.method.needs_frozen:
            frozen_engine = self.strategy.build_frozen(self.adapter.load_model(self.strategy.dtype, attention))
            self.frozen = EngineRunner(frozen_engine, self.adapter, self.strategy.device, self.strategy.dtype,
                                       frozen=True)
        self.engine.train()
        self._notify("on_start", self)

    def _notify(self, event: str, *args) -> None:
        for cb in self.callbacks:
            handler = getattr(cb, event, None)
            if handler is not None:
                handler(*args)

    # -- train ----------------------------------------------------------------------------------------------------
    def micro_batches(self, step: int):
        epoch = self.sampler.epoch_of(step)
        for micro in range(self.cfg.optim.grad_accum):
            p_idx, r_idx = self.sampler.micro_indices(step, micro)
            yield self.method.build_batch([self.primary[i] for i in p_idx], [self.retain[i] for i in r_idx], epoch)

    def train_step(self, step: int) -> dict[str, float]:
        batches = [b.to(self.strategy.device, self.strategy.dtype) for b in self.micro_batches(step)]
        keys = sorted(batches[0].counts)
        # Global counts first (one all-reduce): each micro-batch's loss is divided by the step's total number
        # of scored tokens, so the gradient does not depend on the rank/micro-batch split.
        totals = self.strategy.all_reduce_sum([float(sum(b.counts[k] for b in batches)) for k in keys])
        counts = dict(zip(keys, totals))
        sums: dict[str, float] = defaultdict(float)
        for batch in batches:
            out = self.method.compute_loss(batch, self.student, self.frozen, counts)
            self.strategy.backward(self.engine, out.loss)
            self.strategy.step(self.engine)
            sums["loss"] += float(out.loss.detach())
            for name, value in out.terms.items():
                sums[name] += float(value)
            sums["truncated_answers"] += float(batch.meta.get("truncated", 0))
        names = sorted(sums)
        reduced = dict(zip(names, self.strategy.all_reduce_sum([sums[n] for n in names])))
        reduced.update({f"tokens/{k}": v for k, v in counts.items()})
        return reduced

    def train(self) -> None:
        cfg = self.cfg
        log_path = self.out / "train_log.jsonl"
        start = time.perf_counter()
        samples_per_step = cfg.optim.batch_size * (2 if self.retain else 1)
        last = None
        for step in range(self.total_steps):
            lr = self.strategy.current_lr(self.engine)  # the rate this step's update uses
            t0 = time.perf_counter()
            metrics = self.train_step(step)
            elapsed = time.perf_counter() - t0
            metrics["lr"] = lr
            grad_norm = self.strategy.grad_norm(self.engine)
            if grad_norm is not None:
                metrics["grad_norm"] = grad_norm
            metrics["samples_per_s"] = samples_per_step / max(elapsed, 1e-9)
            metrics["step_time_s"] = elapsed
            metrics["epoch"] = self.sampler.epoch_of(step)
            done = step + 1
            last = metrics
            if self.strategy.is_main and (done % cfg.log_every == 0 or done == self.total_steps):
                eta = (time.perf_counter() - start) / done * (self.total_steps - done)
                terms = " | ".join(f"{k} {v:.4f}" for k, v in metrics.items()
                                   if k not in ("lr", "samples_per_s", "step_time_s", "epoch", "grad_norm",
                                                "truncated_answers") and not k.startswith("tokens/"))
                print(f"step {done}/{self.total_steps} | {terms} | lr {metrics['lr']:.2e} | "
                      f"{metrics['samples_per_s']:.1f} samples/s | eta {format_duration(eta)}", flush=True)
                with log_path.open("a") as fh:
                    fh.write(json.dumps({"step": done, **metrics}) + "\n")
            self._notify("on_step", done, metrics)
        self.summary = {"steps": self.total_steps, "train_seconds": time.perf_counter() - start,
                        "final": last or {}}

    # -- finish ---------------------------------------------------------------------------------------------------
    def finish(self) -> dict[str, Any]:
        model_dir = self.out / "model"
        self.strategy.save_pretrained(self.engine, self.adapter, model_dir)
        self.log(f"[vgid] saved {model_dir}")
        if self.cfg.eval.at_end:
            from vgid_dist.eval.run import evaluate_engine

            self.summary["eval"] = evaluate_engine(self.cfg, self.strategy, self.engine, self.adapter, self.out)
            self._notify("on_eval", self.summary["eval"])
        if self.strategy.is_main:
            write_json_atomic(self.out / "metrics.json", self.summary)
            (self.out / "DONE").write_text(json.dumps({"finished": time.time()}))
        self._notify("on_end", self.summary)
        self.strategy.barrier()
        return self.summary

    def run(self) -> dict[str, Any]:
        self.setup()
        self.train()
        return self.finish()


def run_training(cfg: RunConfig, *, force: bool = False, callbacks: list | None = None) -> dict[str, Any]:
    trainer = Trainer(cfg, force=force, callbacks=callbacks)
    try:
        return trainer.run()
    finally:
        if getattr(trainer, "strategy", None) is not None:
            trainer.strategy.close()
        sys.stdout.flush()
