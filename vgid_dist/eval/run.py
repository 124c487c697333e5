"""Evaluation jobs: a model folder (``vgid eval``) or the engine at the end of training, written to a results
JSON and a predictions JSONL beside it."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

from vgid_dist.data.collate import Collator
from vgid_dist.data.mllmu import MLLMUBench
from vgid_dist.eval.evaluator import EvalOptions, generate_predictions, prediction_record, score
from vgid_dist.eval.items import EvalItem, items_for

SPLITS = ("forget", "test", "retain", "celebrity")


def build_items(bench: MLLMUBench, forget_ratio: int, splits=SPLITS, seed: int = 0,
                limit: int | None = None) -> list[EvalItem]:
    """Every scored question of the requested splits. A split folder that is missing fails here, at start."""
    items: list[EvalItem] = []
    for split in splits:
        profiles = bench.profiles(split, forget_ratio)
        for profile in profiles[:limit] if limit else profiles:
            items.extend(items_for(profile, split, seed))
    return items


def run_evaluation(items: list[EvalItem], collator: Collator, generate, opts: EvalOptions, strategy,
                   out_file: Path | None = None, progress: bool = True) -> dict | None:
    """Generate on every rank, gather and score on rank 0; returns the results there (None elsewhere)."""
    t0 = time.perf_counter()
    local = generate_predictions(items, collator, generate, opts, rank=strategy.rank, world=strategy.world_size,
                                 progress=progress)
    gathered = strategy.gather_objects(local)
    if not strategy.is_main:
        return None
    predictions = sorted((p for part in gathered for p in part), key=lambda p: p.item.uid)
    results = score(predictions)
    results["meta"] = {"questions": len(items), "seconds": time.perf_counter() - t0, "world_size": strategy.world_size,
                       "batch_size": opts.batch_size, "max_new_tokens": opts.max_new_tokens, "icu": opts.icu,
                       "attack": opts.attack, "seed": opts.seed}
    if out_file is not None:
        write_results(out_file, results, predictions)
    return results


def predictions_path(out_file: Path) -> Path:
    return out_file.with_name(out_file.name.removesuffix(".json") + ".predictions.jsonl")


def write_results(out_file: Path, results: dict, predictions) -> None:
    out_file = Path(out_file)
    out_file.parent.mkdir(parents=True, exist_ok=True)
    pred_path = predictions_path(out_file)
    tmp = pred_path.with_name(f".{pred_path.name}.tmp")
    with tmp.open("w") as fh:
        for p in predictions:
            fh.write(json.dumps(prediction_record(p)) + "\n")
    os.replace(tmp, pred_path)
    tmp = out_file.with_name(f".{out_file.name}.tmp")
    tmp.write_text(json.dumps(results, indent=2, sort_keys=True))
    os.replace(tmp, out_file)


def evaluate_engine(cfg, strategy, engine, adapter, out_dir: Path) -> dict | None:
    """End-of-training evaluation with the student engine (ZeRO-3 shards stay where they are)."""
    from vgid_dist.engine.runner import make_generate_fn

    bench = MLLMUBench(cfg.data.root, cfg.data.train_root)
    items = build_items(bench, cfg.data.forget_ratio, cfg.eval.splits, cfg.optim.seed, cfg.eval.limit)
    module = engine.module
    was_training = module.training
    module.eval()
    generate = make_generate_fn(module, adapter, strategy.device, strategy.dtype, synced=strategy.synced_generation)
    opts = EvalOptions(batch_size=cfg.eval.batch_size, max_new_tokens=cfg.eval.max_new_tokens, seed=cfg.optim.seed)
    results = run_evaluation(items, Collator(adapter, 10**6), generate, opts, strategy, Path(out_dir) / "eval.json")
    module.train(was_training)
    return results


def evaluate_model(model_path: str, data_root: str, forget_ratio: int, out_file: str | Path, *,
                   opts: EvalOptions, splits=SPLITS, dtype: str = "float32", attention: str = "auto",
                   limit: int | None = None, progress: bool = True) -> dict | None:
    """Evaluate a model folder. One process: the plain model. Several ranks: a ZeRO-3 inference engine, work
    sharded across ranks and gathered on rank 0."""
    from vgid_dist.engine.runner import make_generate_fn
    from vgid_dist.engine.strategy import DeepSpeedStrategy
    from vgid_dist.models import load_adapter

    adapter = load_adapter(model_path)
    bench = MLLMUBench(data_root)
    items = build_items(bench, forget_ratio, splits, opts.seed, limit)  # fails early on a missing split
    _, world = DeepSpeedStrategy.init_process_group()
    strategy = DeepSpeedStrategy.for_inference(dtype=dtype, attention=attention, zero_stage=3 if world > 1 else 0)
    try:
        model = adapter.load_model(strategy.dtype, strategy.attention_impl())
        module = strategy.build_frozen(model).module if world > 1 else model.to(strategy.device).eval()
        generate = make_generate_fn(module, adapter, strategy.device, strategy.dtype,
                                    synced=strategy.synced_generation)
        return run_evaluation(items, Collator(adapter, 10**6), generate, opts, strategy, Path(out_file), progress)
    finally:
        strategy.close()
