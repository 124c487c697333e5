"""The training recipe: read the config once, ``setup -> train -> finish``.

Output folder of a run::

    output_dir/
      .vgid-run          written when the run creates (or adopts an empty) folder: a run's folder
      .vgid-lock         held by the running job (engine.output)
      config.yaml        the resolved configuration
      train_log.jsonl    one line per logged step
      checkpoints/       DeepSpeed checkpoints (engine.checkpoint); removed after DONE unless keep_checkpoints
      model/             the unlearned model (Hugging Face folder, safetensors)
      metrics.json       final loss terms, steps, timings (and evaluation results when eval.at_end)
      DONE               written last: the run is complete

Training ends with a checkpoint of its last step before the model is exported, so a run stopped during the
export (a kill, a full disk) resumes straight to the export.
"""

from __future__ import annotations

import json
import random
import shutil
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml

from vgid_dist.config import RunConfig, load_ds_config
from vgid_dist.data.collate import Collator
from vgid_dist.data.sampler import StepSampler
from vgid_dist.data.validate import check_training_data
from vgid_dist.engine.checkpoint import CHECKPOINTS, CheckpointManager
from vgid_dist.engine.guards import NonFiniteGuard, StopSignals, is_collective_failure
from vgid_dist.engine.output import RunFolder, StepLog, check_same_config, launch_rank
from vgid_dist.engine.runner import AdapterDisabledRunner, EngineRunner
from vgid_dist.engine.strategy import DeepSpeedStrategy
from vgid_dist.engine.throughput import ThroughputMeter, model_params
from vgid_dist.errors import (
    CollectiveError,
    ConfigError,
    DataError,
    NonFiniteLossError,
    OutputWriteError,
    RunExistsError,
    RunInterrupted,
)
from vgid_dist.io import write_json_atomic, write_text_atomic
from vgid_dist.methods import build_method
from vgid_dist.models import load_adapter
from vgid_dist.models.base import check_model_weights
from vgid_dist.models.lora import apply_lora
from vgid_dist.progress import Progress, format_duration

# Per-step values that are not loss terms (left out of the printed step line and the progress bar's postfix).
NOT_LOSS_TERMS = ("lr", "samples_per_s", "step_time_s", "epoch", "grad_norm", "truncated_answers",
                  "nonfinite_skipped", "tokens_per_s", "mfu", "peak_mem_gib")


def loss_terms(metrics: dict[str, float]) -> str:
    """``loss 0.0496 | forget_kl 0.0369 | retain_kl 0.0127``: the loss, then its terms, of one step."""
    terms = sorted((k for k in metrics if k not in NOT_LOSS_TERMS and not k.startswith("tokens/")),
                   key=lambda k: (k != "loss", k))
    return " | ".join(f"{k} {metrics[k]:.4f}" for k in terms)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


class Trainer:
    """One run: ``setup -> train -> finish``.

    ``callbacks`` are objects with any of these methods, called on every rank alike (a callback decides where it
    acts; one that runs collectives must act on every rank):

    - ``on_start(trainer)``: models built, resume state loaded, before the first step;
    - ``on_step(step, metrics)``: after each optimiser step (1-based ``step``; ``metrics`` are the logged
      values, and hold only ``nonfinite_skipped`` for a step skipped for a non-finite loss);
    - ``on_model_saved(trainer)``: the final model is written, before ``metrics.json`` and ``DONE`` (what a
      callback puts into ``trainer.summary`` lands in ``metrics.json``);
    - ``on_eval(results)``: evaluation results, sent by whoever evaluated (``trainer.notify``);
    - ``on_end(summary)``: ``DONE`` is written;
    - ``on_failure(status)``: the run stopped with an exception (``engine.entry``).
    """

    def __init__(self, cfg: RunConfig, *, force: bool = False, callbacks: list | None = None):
        self.cfg = cfg
        self.force = force
        self.callbacks = list(callbacks or [])
        self.out = cfg.resolved_output_dir()
        self.summary: dict[str, Any] = {}
        self.nonfinite = NonFiniteGuard(cfg.max_consecutive_nonfinite)
        self.phase = "setup"
        self.progress: Progress | None = None

    def log(self, message: str) -> None:
        if self.strategy.is_main:
            if self.progress is not None:
                self.progress.write(message)  # above the progress bar, which stays whole
            else:
                print(message, flush=True)

    # -- setup ----------------------------------------------------------------------------------------------------
    def setup(self) -> None:
        """What can fail on the input fails here, cheapest first: the output folder, the model folder, the
        DeepSpeed JSON (reading only: nothing is written for a run that cannot start), then the folder is claimed
        and locked, then the data (before any process group), the process group, the models, the resume state."""
        cfg = self.cfg
        self.folder = RunFolder(self.out)
        self.folder.check_writable()
        check_model_weights(cfg.model.path)
        load_ds_config(cfg.ds_config)
        self._claim_output()
        seed_everything(cfg.optim.seed)
        self._read_data()
        self.strategy = DeepSpeedStrategy.for_run(cfg)
        self.log(f"[vgid] data: {self.data_report.summary()}")
        self.sampler = StepSampler(len(self.primary), len(self.retain), cfg.optim.batch_size,
                                   self.strategy.world_size, self.strategy.rank, cfg.optim.grad_accum,
                                   cfg.optim.seed, tuple(self.data_report.primary_lengths),
                                   tuple(self.data_report.retain_lengths), cfg.optim.retain_per_forget)
        self.total_steps = self.sampler.total_steps(cfg.optim.epochs, cfg.optim.max_steps)
        if self.strategy.is_main:
            (self.out / "DONE").unlink(missing_ok=True)
            write_text_atomic(self.out / "config.yaml", yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False))
        self.log(f"[vgid] run {cfg.method.name} | model {cfg.model.path} ({self.adapter.family}, {cfg.model.dtype}) | "
                 f"{len(self.primary)} primary + {len(self.retain)} retain samples | world {self.strategy.world_size} "
                 f"| ZeRO-{self.strategy.zero_stage} | {self.total_steps} steps of {cfg.optim.batch_size} -> {self.out}")
        self._build_models()
        self._resume()
        self.calibration = self.calibrate_method()
        self.notify("on_start", self)

    def _claim_output(self) -> None:
        """Rank 0 creates (or adopts) the folder and holds its lock from here to ``close``, then removes what a
        killed run left; a finished run is refused (its checkpoints removed first if it was killed before it
        could, and did not keep them), as is another configuration's."""
        main = launch_rank() == 0
        if main:
            self.folder.claim()
            removed = self.folder.remove_leftovers()
            if removed:
                print(f"[vgid] removed what an earlier run left in {self.out}: {', '.join(removed)}", flush=True)
        if (self.out / "DONE").exists() and not self.force:
            if main and (self.out / CHECKPOINTS).is_dir() and not self.folder.finished_keeps_checkpoints():
                shutil.rmtree(self.out / CHECKPOINTS, ignore_errors=True)
            raise RunExistsError(f"{self.out} holds a finished run (DONE present); choose another output_dir or "
                                 "pass --force to overwrite it")
        check_same_config(self.out, self.cfg, self.force)

    def close(self) -> None:
        """Release the output folder's lock and the DeepSpeed loading context (the run ended, one way or another)."""
        if getattr(self, "strategy", None) is not None:
            self.strategy.close()
        if getattr(self, "folder", None) is not None:
            self.folder.release()

    def _read_data(self) -> None:
        """Model folder (adapter, tokenizer) and training samples, checked: unreadable images, people in both
        splits, answers lost to truncation are found before any compute."""
        cfg = self.cfg
        self.adapter = load_adapter(cfg.model.path, cfg.model.family)
        self.collator = Collator(self.adapter, cfg.data.max_length, score_eos=cfg.data.score_eos)
        self.method = build_method(cfg.method, self.collator, cfg.optim.seed)
        if not self.method.trains:
            raise ConfigError(f"method.name: {cfg.method.name!r} does not train (it is evaluated on the base model: "
                              f"`vgid eval --icu STYLE`, or `vgid demo --methods {cfg.method.name}`)")
        self.primary, self.retain = self.method.training_samples(cfg.data)
        if not self.primary:
            raise DataError(f"{cfg.data.root}: the training split of method {cfg.method.name!r} is empty "
                            f"(forget ratio {cfg.data.forget_ratio})")
        if self.method.uses_retain and not self.retain:
            raise DataError(f"{cfg.data.root}: method {cfg.method.name!r} needs retain samples but the retain "
                            "split is empty")
        self.data_report = check_training_data(self.primary, self.retain, self.collator,
                                               check_overlap=self.method.uses_retain)

    def _build_models(self) -> None:
        """The student engine (LoRA adapters and the method's trainable set applied first) and the frozen
        model the method needs: a second ZeRO-3 engine, or under LoRA the student with its adapters off."""
        cfg = self.cfg
        attention = self.strategy.attention_impl()
        student_model = self.adapter.load_model(self.strategy.dtype, attention)
        if cfg.model.gradient_checkpointing:
            student_model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        layers = self.adapter.language_layers(student_model)
        if cfg.model.lora is not None:
            student_model = apply_lora(student_model, layers, cfg.model.lora)
        self.method.configure_trainable(student_model, layers)
        # Counted before the engine is built (ZeRO-3 then partitions the parameters).
        self.trainable_params = model_params(student_model, trainable_only=True)
        self.log(f"[vgid] trainable parameters: {self.trainable_params:,}")
        self.engine = self.strategy.build_student(student_model, self.total_steps)
        self.student = EngineRunner(self.engine, self.adapter, self.strategy.device, self.strategy.dtype, frozen=False,
                                    gather=self.strategy.gathered)
        self.frozen = None
        if self.method.needs_frozen and cfg.model.lora is not None:
            self.frozen = AdapterDisabledRunner(self.student)
        elif self.method.needs_frozen:
            frozen_engine = self.strategy.build_frozen(self.adapter.load_model(self.strategy.dtype, attention))
            self.frozen = EngineRunner(frozen_engine, self.adapter, self.strategy.device, self.strategy.dtype,
                                       frozen=True, gather=self.strategy.gathered)
        self.engine.train()
        self.throughput = ThroughputMeter(self.student.module, self.frozen.module if self.frozen else None,
                                          world_size=self.strategy.world_size, on_gpu=self.strategy.on_gpu,
                                          device=self.strategy.device)

    def _resume(self) -> None:
        """Continue from the latest checkpoint: its step, skipped-step count, last metrics and training time. A
        checkpoint of the last step means training is over: the run goes straight to the export."""
        self.checkpoints = CheckpointManager(self.out, self.strategy)
        self.step_log = StepLog(self.out / "train_log.jsonl", self.log)
        self.start_step = 0
        self.resumed: dict[str, Any] = {}
        if self.force:
            self.checkpoints.clear()
        elif self.checkpoints.latest() is not None:
            if self.strategy.is_main:
                self.checkpoints.remove_stale()
            self.resumed = self.checkpoints.load(self.engine)
            self.start_step = int(self.resumed["step"])
            self.nonfinite.total = int(self.resumed.get("nonfinite_skipped", 0))
            self.log(f"[vgid] resumed from step {self.start_step}/{self.total_steps} "
                     f"(checkpoint {self.checkpoints.latest()[1]})"
                     + ("; training is complete, exporting the model" if self.start_step >= self.total_steps
                        else ""))
        if self.strategy.is_main:
            self.step_log.trim(self.start_step)

    def calibrate_method(self) -> dict[str, float]:
        """What the method measures on the frozen model before training (see ``Method.calibrates``), from the
        first step's micro-batches of every rank: one frozen forward per micro-batch on each rank, then one
        all-reduce of the sums."""
        if not self.method.calibrates:
            return {}
        self.phase = "calibration"
        batches = [b.to(self.strategy.device, self.strategy.dtype) for b in self.micro_batches(0)]
        local = self.method.calibration_sums(batches, self.frozen)
        keys = sorted(local)
        self.phase = "calibration all-reduce"
        totals = dict(zip(keys, self.strategy.all_reduce_sum([local[k] for k in keys])))
        measured = self.method.calibrate(totals)
        self.log("[vgid] calibrated on the first step: " + ", ".join(f"{k} {v:.4g}" for k, v in measured.items()))
        return measured

    def notify(self, event: str, *args) -> None:
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

    def train_step(self, step: int) -> dict[str, float] | None:
        """One optimiser step; None when it was skipped for a non-finite loss (on every rank alike)."""
        batches = [b.to(self.strategy.device, self.strategy.dtype) for b in self.micro_batches(step)]
        keys = sorted(batches[0].counts)
        # Global counts first (one all-reduce): each micro-batch's loss is divided by the step's total number
        # of scored tokens, so the gradient does not depend on the rank/micro-batch split.
        self.phase = "token-count all-reduce"
        totals = self.strategy.all_reduce_sum([float(sum(b.counts[k] for b in batches)) for k in keys])
        counts = dict(zip(keys, totals))
        sums: dict[str, float] = defaultdict(float)
        micro_steps_before = self.strategy.micro_steps(self.engine)
        for batch in batches:
            self.phase = "forward"
            out = self.method.compute_loss(batch, self.student, self.frozen, counts)
            # Decided collectively: a rank that skipped backward alone would leave the others waiting in the
            # gradient reduce-scatter.
            self.phase = "non-finite-loss all-reduce"
            if self.strategy.any_rank(not bool(torch.isfinite(out.loss.detach()))):
                self.strategy.discard_accumulated(self.engine, micro_steps_before)
                return None
            self.phase = "backward"
            self.strategy.backward(self.engine, out.loss)
            self.phase = "optimizer step"
            self.strategy.step(self.engine)
            sums["loss"] += float(out.loss.detach())
            for name, value in out.terms.items():
                sums[name] += float(value)
            sums["truncated_answers"] += float(batch.meta.get("truncated", 0))
        names = sorted(sums)
        self.phase = "metrics all-reduce"
        reduced = dict(zip(names, self.strategy.all_reduce_sum([sums[n] for n in names])))
        reduced.update({f"tokens/{k}": v for k, v in counts.items()})
        return reduced

    def checkpoint(self, step: int, final: dict | None = None, seconds: float = 0.0) -> Path:
        """Every rank. ``final``: the last step's metrics and ``seconds`` of training so far, kept for a run that
        resumes after its last step (``metrics.json`` then still has them)."""
        self.phase = "checkpoint save"
        state = {"nonfinite_skipped": self.nonfinite.total, "final": final or {},
                 "train_seconds": self.resumed.get("train_seconds", 0.0) + seconds}
        try:
            path = self.checkpoints.save(self.engine, step, state)
        except OSError as exc:
            found = self.checkpoints.latest()
            kept = f"the checkpoint of step {found[0]} is kept" if found else "no earlier checkpoint exists"
            raise OutputWriteError(f"{self.checkpoints.dir}: could not write the checkpoint of step {step} "
                                   f"({exc.strerror or exc}); {kept}. Free space and run the same command "
                                   "again") from exc
        self.log(f"[vgid] checkpoint at step {step} -> {path}")
        return path

    def guarded_step(self, step: int) -> dict[str, float] | None:
        try:
            return self.train_step(step)
        except Exception as exc:  # name the rank and the operation instead of a bare backend error
            if is_collective_failure(exc):
                raise CollectiveError(
                    f"rank {self.strategy.rank}/{self.strategy.world_size}: a collective failed during "
                    f"{self.phase} of step {step + 1} (process-group timeout {self.cfg.dist_timeout_s} s, "
                    f"dist_timeout_s): {type(exc).__name__}: {exc}") from exc
            raise

    def train(self) -> None:
        cfg = self.cfg
        start = time.perf_counter()
        samples_per_step = cfg.optim.batch_size * (2 if self.retain else 1)
        signals = StopSignals()
        # Without log_every: the phase's progress (a bar on a terminal, a line per tenth of the run elsewhere).
        self.progress = Progress(self.total_steps, f"train {cfg.method.name}", unit="step", initial=self.start_step,
                                 enabled=self.strategy.is_main and cfg.log_every is None)
        try:
            self._train_loop(start, samples_per_step, signals)
        finally:
            signals.close()
            self.progress.close()
            self.progress = None

    def _train_loop(self, start: float, samples_per_step: int, signals) -> None:
        cfg = self.cfg
        last = None
        for step in range(self.start_step, self.total_steps):
            lr = self.strategy.current_lr(self.engine)  # the rate this step's update uses
            t0 = time.perf_counter()
            metrics = self.guarded_step(step)
            elapsed = time.perf_counter() - t0
            done = step + 1
            self.nonfinite.record(metrics is not None)
            throughput = self.throughput.step_metrics(elapsed)
            if metrics is None:
                self.log(f"step {done}/{self.total_steps} | skipped: non-finite loss on some rank "
                         f"({self.nonfinite.consecutive} in a row, {self.nonfinite.total} in all)")
                self.progress.update(1)
                self.notify("on_step", done, {"nonfinite_skipped": float(self.nonfinite.total)})
                if self.nonfinite.exhausted:
                    path = self.checkpoint(done, last, time.perf_counter() - start)
                    raise NonFiniteLossError(
                        f"{self.nonfinite.consecutive} consecutive steps had a non-finite loss (limit "
                        f"max_consecutive_nonfinite={cfg.max_consecutive_nonfinite}); stopped at step {done} with "
                        f"checkpoint {path}. Lower optim.lr or check the data, then rerun to resume.")
                continue
            metrics["nonfinite_skipped"] = float(self.nonfinite.total)
            metrics["lr"] = lr
            grad_norm = self.strategy.grad_norm(self.engine)
            if grad_norm is not None:
                metrics["grad_norm"] = grad_norm
            metrics["samples_per_s"] = samples_per_step / max(elapsed, 1e-9)
            metrics["step_time_s"] = elapsed
            metrics.update(throughput)
            metrics["epoch"] = self.sampler.epoch_of(step)
            last = metrics
            if self.strategy.is_main:
                self.step_log.append(done, metrics)  # every step, whatever is printed
                self.print_step(done, metrics, start)
            self.notify("on_step", done, metrics)
            # One small all-reduce per step: a signal seen by any rank stops every rank at the same step.
            if self.strategy.any_rank(signals.requested):
                path = self.checkpoint(done, last, time.perf_counter() - start)
                signals.chain()  # e.g. submitit's handler: requeue the job now that the checkpoint exists
                raise RunInterrupted(done, signals.received or "a signal on another rank", path)
            if cfg.save_every and done % cfg.save_every == 0 and done < self.total_steps:
                self.checkpoint(done, last, time.perf_counter() - start)
        seconds = time.perf_counter() - start
        if self.start_step < self.total_steps:
            # The end of training is a checkpoint too: a run stopped during the export resumes straight to it.
            self.checkpoint(self.total_steps, last, seconds)
        else:
            last = self.resumed.get("final")
        self.summary = {"steps": self.total_steps,
                        "train_seconds": self.resumed.get("train_seconds", 0.0) + seconds,
                        "nonfinite_skipped": self.nonfinite.total, "resumed_from": self.start_step,
                        "trainable_params": self.trainable_params, "calibration": self.calibration,
                        "final": last or {}}

    def print_step(self, done: int, metrics: dict[str, float], start: float) -> None:
        """With ``log_every``: one line every ``log_every`` steps and at the last; else the progress shows the
        step and the loss terms."""
        every = self.cfg.log_every
        if every is None:
            self.progress.update(1, postfix=loss_terms(metrics).replace(" | ", ", "))
        elif done % every == 0 or done == self.total_steps:
            eta = (time.perf_counter() - start) / (done - self.start_step) * (self.total_steps - done)
            print(f"step {done}/{self.total_steps} | {loss_terms(metrics)} | lr {metrics['lr']:.2e} | "
                  f"{metrics['samples_per_s']:.1f} samples/s | eta {format_duration(eta)}", flush=True)

    # -- finish ---------------------------------------------------------------------------------------------------
    def finish(self) -> dict[str, Any]:
        model_dir = self.out / "model"
        try:
            if self.cfg.model.lora is not None:
                self.strategy.save_lora(self.engine, self.adapter, model_dir, self.out / "adapter")
            else:
                self.strategy.save_pretrained(self.engine, self.adapter, model_dir)
        except OSError as exc:
            raise OutputWriteError(f"{model_dir}: could not write the model ({exc.strerror or exc}); training is "
                                   f"complete and checkpointed at step {self.total_steps}: free space and run the "
                                   "same command again, it goes straight to the export") from exc
        self.log(f"[vgid] saved {model_dir}")
        self.notify("on_model_saved", self)
        if self.strategy.is_main:
            write_json_atomic(self.out / "metrics.json", self.summary)
            write_text_atomic(self.out / "DONE", json.dumps({"finished": time.time()}))
        if not self.cfg.keep_checkpoints:
            # The final model is saved: the resume state (optimiser shards: 12 bytes per parameter) goes. A kill
            # before this line leaves them to the next run on this folder, which removes them.
            self.checkpoints.clear()
        self.throughput.close()
        self.notify("on_end", self.summary)
        self.strategy.barrier()
        return self.summary

    def run(self) -> dict[str, Any]:
        self.setup()
        self.train()
        return self.finish()
