"""Evaluation jobs: a model folder (``vgid eval``) or the engine during and at the end of training, written to
a results JSON and a predictions JSONL beside it."""

from __future__ import annotations

import contextlib
import json
import time
import warnings
from pathlib import Path

import torch

from vgid_dist.config import EvalOptions
from vgid_dist.data.collate import Collator, ModelInputs
from vgid_dist.data.mllmu import MLLMUBench
from vgid_dist.eval.evaluator import Prediction, generate_predictions, prediction_record, score
from vgid_dist.eval.examples import EXAMPLE_SPLITS, SplitExamples, draw_examples
from vgid_dist.eval.items import EvalItem, items_for
from vgid_dist.io import write_json_atomic, write_text_atomic
from vgid_dist.vocab import SPLITS


def build_items(bench: MLLMUBench, forget_ratio: int, splits=SPLITS, seed: int = 0, limit: int | None = None,
                protocol: str = "official") -> list[EvalItem]:
    """Every scored question of the requested splits, with the official protocol's examples (drawn from the
    whole split; ``limit`` only cuts the profiles scored). Every split folder (and ``Full_Set`` when a split
    gets examples) is read here, so a missing one fails at start, naming it."""
    items: list[EvalItem] = []
    for split in splits:
        profiles = bench.profiles(split, forget_ratio)
        examples = SplitExamples()
        if protocol == "official" and split in EXAMPLE_SPLITS:
            ids = bench.split_ids("forget" if split == "test" else split, forget_ratio)
            examples = draw_examples(split, ids, bench.full_set(), seed)
        split_items = [it for profile in (profiles[:limit] if limit else profiles)
                       for it in items_for(profile, split, seed, protocol, examples)]
        _warn_unscored_tasks(split, profiles, examples, split_items)
        items.extend(split_items)
    return items


def _warn_unscored_tasks(split: str, profiles, examples: SplitExamples, split_items: list[EvalItem]) -> None:
    """Say when the official protocol's examples take every question of a task (a split of one or two
    profiles): its metric is then absent from the results, which a reader would otherwise take for a bug."""
    scored = {it.task for it in split_items}
    for task, drawn in examples.drawn.items():
        if task not in scored and any(getattr(p, task) for p in profiles):
            warnings.warn(f"evaluation: the {split} split has {len(profiles)} profile(s) and the official protocol "
                          f"shows {len(drawn)} of them as {task} examples, so no {task} question of it is scored; "
                          f"use a split with more profiles or --protocol zero-shot", stacklevel=3)


def examples_shown(items: list[EvalItem]) -> dict[str, dict[str, list[str]]]:
    """``{split: {task: example profile ids}}``: the profiles whose questions were shown as examples."""
    shown: dict[str, dict[str, set[str]]] = {}
    for it in items:
        for shot in it.shots:
            shown.setdefault(it.split, {}).setdefault(it.task, set()).add(shot.key[0])
    return {split: {task: sorted(ids) for task, ids in tasks.items()} for split, tasks in shown.items()}


def make_logprobs_fn(module: torch.nn.Module, adapter, device: torch.device, dtype: torch.dtype):
    """(right-padded prompts with answer tokens) -> [T, V] float32 log-probabilities at the target positions.

    One forward call per batch on every rank (ZeRO-3 gathers each layer's shards inside it, the output head's
    when it is called here); the head runs on the T scored positions only, never on [B, L, V]."""
    head = module.get_output_embeddings()

    @torch.no_grad()
    def logprobs(inputs: ModelInputs) -> torch.Tensor:
        inputs = inputs.to(device, dtype)
        out = module(**adapter.model_kwargs(inputs), use_cache=False, output_hidden_states=True, logits_to_keep=1)
        hidden = out.hidden_states[-1][inputs.target_mask]  # [T, H], after the final norm
        return head(hidden).float().log_softmax(dim=-1).cpu()

    return logprobs


def run_evaluation(items: list[EvalItem], collator: Collator, generate, opts: EvalOptions, strategy,
                   out_file: Path | None = None, progress: bool = True, *, logprobs=None, splits=SPLITS,
                   meta: dict | None = None, score_fn=None) -> dict | None:
    """Generate on every rank, gather and score on rank 0; returns the results there (None elsewhere).
    ``score_fn(predictions, splits, protocol)``: the scoring (default the benchmark's, ``score``)."""
    t0 = time.perf_counter()
    local = generate_predictions(items, collator, generate, opts, rank=strategy.rank, world=strategy.world_size,
                                 progress=progress, logprobs=logprobs)
    # Only (uid, reply, error, choice) travel: every rank holds the same items, images included.
    gathered = strategy.gather_objects([(p.item.uid, p.reply, p.error, p.choice_logits) for p in local])
    if not strategy.is_main:
        return None
    by_uid = {it.uid: it for it in items}
    predictions = sorted((Prediction(by_uid[uid], reply, error, choice) for part in gathered
                          for uid, reply, error, choice in part), key=lambda p: p.item.uid)
    results = (score_fn or score)(predictions, splits, opts.protocol)
    results["meta"] = {"questions": len(items), "seconds": time.perf_counter() - t0, "world_size": strategy.world_size,
                       "batch_size": opts.batch_size, "max_new_tokens": opts.max_new_tokens, "icu": opts.icu,
                       "attack": opts.attack, "seed": opts.seed, "protocol": opts.protocol, "mc_mode": opts.mc_mode,
                       "examples": examples_shown(items),
                       **(meta or {})}
    if out_file is not None:
        write_results(out_file, results, predictions)
    return results


def predictions_path(out_file: Path) -> Path:
    return out_file.with_name(out_file.name.removesuffix(".json") + ".predictions.jsonl")


def write_results(out_file: Path, results: dict, predictions) -> None:
    """FILE.json and FILE.predictions.jsonl, each written to a temporary file and renamed."""
    out_file = Path(out_file)
    write_text_atomic(predictions_path(out_file),
                      "".join(json.dumps(prediction_record(p), ensure_ascii=False) + "\n" for p in predictions))
    write_json_atomic(out_file, results)


class EngineEvaluation:
    """The evaluation a training run repeats (every ``eval.every_steps`` steps, and at the end): the benchmark
    is read and the questions built once, at construction (a missing split folder fails there)."""

    def __init__(self, cfg):
        self.cfg = cfg
        self.opts = EvalOptions.for_run(cfg)
        bench = MLLMUBench(cfg.data.root, cfg.data.train_root)
        self.items = build_items(bench, cfg.data.forget_ratio, cfg.eval.splits, self.opts.seed, cfg.eval.limit,
                                 self.opts.protocol)

    def run(self, strategy, engine, adapter, out_file: Path, *, step: int | None = None) -> dict | None:
        """Every rank must call this (ZeRO-3: each forward gathers shards from all ranks)."""
        from vgid_dist.engine.runner import make_generate_fn

        module = engine.module
        was_training = module.training
        module.eval()
        generate = make_generate_fn(module, adapter, strategy.device, strategy.dtype,
                                    synced=strategy.synced_generation)
        logprobs = make_logprobs_fn(module, adapter, strategy.device, strategy.dtype)
        try:
            return run_evaluation(self.items, Collator(adapter, 10**6), generate, self.opts, strategy, out_file,
                                  logprobs=logprobs, splits=self.cfg.eval.splits,
                                  meta={"step": step, "forget_ratio": self.cfg.data.forget_ratio})
        finally:
            module.train(was_training)


def steering_hooks(module: torch.nn.Module, adapter, steer: str | None):
    """The MLLMEraser hooks of the steering file ``steer`` on ``module`` (removed on exit); nothing when None."""
    if steer is None:
        return contextlib.nullcontext()
    from vgid_dist.eval.steering import Steering, SteeringHooks

    return SteeringHooks(module, adapter, Steering.load(steer))


def evaluate_model(model_path: str, data_root: str, forget_ratio: int, out_file: str | Path, *,
                   opts: EvalOptions, splits=SPLITS, dtype: str = "float32", attention: str = "auto",
                   limit: int | None = None, progress: bool = True,
                   profiles: set[str] | None = None) -> dict | None:
    """Evaluate a model folder on an MLLMU-Bench folder (see ``evaluate_items``). ``profiles``: only these
    profiles' questions."""
    bench = MLLMUBench(data_root)
    items = build_items(bench, forget_ratio, splits, opts.seed, limit, opts.protocol)  # fails early on a missing split
    if profiles is not None:
        items = [it for it in items if it.profile_id in profiles]
    return evaluate_items(model_path, items, out_file, opts=opts, splits=splits, dtype=dtype, attention=attention,
                          progress=progress, meta={"data": str(data_root), "forget_ratio": forget_ratio})


def evaluate_items(model_path: str, items: list[EvalItem], out_file: str | Path, *, opts: EvalOptions, splits,
                   dtype: str = "float32", attention: str = "auto", progress: bool = True,
                   meta: dict | None = None, score_fn=None) -> dict | None:
    """Ask a model folder ``items``. One process: the plain model. Several ranks: a ZeRO-3 inference engine,
    work sharded across ranks and gathered on rank 0 (the results there, None elsewhere)."""
    from vgid_dist.engine.runner import make_generate_fn
    from vgid_dist.engine.strategy import inference_strategy
    from vgid_dist.models import load_adapter

    adapter = load_adapter(model_path)
    strategy = inference_strategy(dtype=dtype, attention=attention)  # one process: no DeepSpeed, no group
    world = strategy.world_size
    try:
        model = adapter.load_model(strategy.dtype, strategy.attention_impl())
        module = strategy.build_frozen(model).module if world > 1 else model.to(strategy.device).eval()
        generate = make_generate_fn(module, adapter, strategy.device, strategy.dtype,
                                    synced=strategy.synced_generation)
        logprobs = make_logprobs_fn(module, adapter, strategy.device, strategy.dtype)
        with steering_hooks(module, adapter, opts.steer):
            return run_evaluation(items, Collator(adapter, 10**6), generate, opts, strategy, Path(out_file),
                                  progress, logprobs=logprobs, splits=splits, score_fn=score_fn,
                                  meta={"model": str(model_path), **(meta or {}), "steer": opts.steer})
    finally:
        strategy.close()
