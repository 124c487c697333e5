"""The ``vgid`` command: demo, train, eval, steer, attack, sweep, report, ui."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from vgid_dist.threads import prefer_sleeping_threads

# Before torch is imported anywhere in this process (libgomp reads it when it loads).
prefer_sleeping_threads()


def _fail(message: str, code: int = 2) -> int:
    print(f"error: {message}", file=sys.stderr, flush=True)
    return code


def train_entry(config: str, overrides: list[str], *, force: bool = False, local_rank: int | None = None) -> int:
    """Shared by ``vgid train``, ``launch/train.py`` and cluster tasks."""
    from vgid_dist.assets import resolve_assets
    from vgid_dist.config import ConfigError, load_run_config
    from vgid_dist.data.schema import DataError
    from vgid_dist.engine.guards import CollectiveError, NonFiniteLossError, RunInterrupted
    from vgid_dist.engine.trainer import RunExistsError, run_training
    from vgid_dist.models import ModelFolderError
    from vgid_dist.tracking import TrackingError, callback_for

    if local_rank is not None:
        os.environ.setdefault("LOCAL_RANK", str(local_rank))
    # MLflow (rank 0 only; VGID_TRACKING=off disables it): a failed or interrupted job marks its run.
    tracker = callback_for(config)
    try:
        cfg = resolve_assets(load_run_config(config, overrides))
        run_training(cfg, force=force, callbacks=[tracker] if tracker is not None else None)
    except (ConfigError, DataError, ModelFolderError, RunExistsError, TrackingError) as exc:
        if tracker is not None:
            tracker.fail()
        return _fail(str(exc))
    except RunInterrupted as exc:
        # Checkpointed: the same command resumes. 128 + SIGTERM, as if the signal had ended the process.
        if tracker is not None:
            tracker.fail("KILLED")
        print(f"[vgid] {exc}", file=sys.stderr, flush=True)
        return 143
    except (NonFiniteLossError, CollectiveError) as exc:
        if tracker is not None:
            tracker.fail()
        return _fail(str(exc), 1)
    except BaseException as exc:
        # An interrupt, or submitit exiting a preempted task it has requeued: KILLED, and the requeued job
        # sets the same run RUNNING again. Anything else is a failure.
        if tracker is not None:
            tracker.fail("KILLED" if isinstance(exc, (KeyboardInterrupt, SystemExit)) else "FAILED")
        raise
    if tracker is not None and tracker.error:
        return _fail(tracker.error, 3)
    return 0


def cmd_train(args) -> int:
    return train_entry(args.config, args.overrides, force=args.force)


def cmd_eval(args) -> int:
    from vgid_dist.data.schema import DataError
    from vgid_dist.eval.evaluator import EvalOptions
    from vgid_dist.eval.run import evaluate_model
    from vgid_dist.models import ModelFolderError

    try:
        opts = EvalOptions(batch_size=args.batch_size, max_new_tokens=args.max_new_tokens, icu=args.icu,
                           attack=args.attack, seed=args.seed, few_shot=args.few_shot, mc_mode=args.mc_mode,
                           steer=args.steer)
    except ValueError as exc:
        return _fail(str(exc))
    try:
        results = evaluate_model(args.model, args.data, args.forget_ratio, args.out, opts=opts, dtype=args.dtype,
                                 splits=args.splits, limit=args.limit)
    except (DataError, ModelFolderError, FileNotFoundError) as exc:
        return _fail(str(exc))
    if results is not None:
        from vgid_dist.eval.report import format_split_table

        print(format_split_table({"model": results}))
        print(f"results: {args.out}")
    return 0


def cmd_steer_build(args) -> int:
    import yaml

    from vgid_dist.data.schema import DataError
    from vgid_dist.eval.steering import build_steering_file
    from vgid_dist.methods.mllmeraser import MllmEraserParams
    from vgid_dist.models import ModelFolderError

    try:
        if args.config:
            from vgid_dist.config import load_run_config

            params = load_run_config(args.config).method.params()
            if not isinstance(params, MllmEraserParams):
                return _fail(f"--config {args.config}: its method is not mllmeraser")
            given = params.model_dump()
        else:
            given = {}
        for text in args.params:
            key, sep, value = text.partition("=")
            if not sep:
                return _fail(f"{text!r}: expected key=value (a parameter of method mllmeraser, e.g. scale=2)")
            given[key.strip().removeprefix("method.")] = yaml.safe_load(value)  # as in training overrides
        params = MllmEraserParams(**given)
    except ValueError as exc:
        return _fail(f"mllmeraser parameters: {exc}")
    try:
        steering = build_steering_file(args.model, args.data, args.forget_ratio, args.out, params, seed=args.seed,
                                       batch_size=args.batch_size, dtype=args.dtype)
    except (DataError, ModelFolderError, ValueError) as exc:
        return _fail(str(exc))
    info = steering.info
    print(f"steering: layers {steering.layers}, gate layer {steering.gate_layer}, threshold {steering.threshold:.4f}, "
          f"scale {steering.scale}; gate open on {info['forget_gate_open']:.0%} of {info['forget_pairs']} forget and "
          f"{info['retain_gate_open']:.0%} of {info['retain_pairs']} retain pairs -> {args.out}")
    return 0


def cmd_attack_relearn(args) -> int:
    from vgid_dist.data.schema import DataError
    from vgid_dist.eval.evaluator import EvalOptions
    from vgid_dist.eval.relearn import RelearnError, format_recovery, run_relearn
    from vgid_dist.models import ModelFolderError

    rows = {}
    try:
        opts = EvalOptions(batch_size=args.batch_size, max_new_tokens=args.max_new_tokens, seed=args.seed,
                           steer=args.steer)
        for model in args.model:
            name = Path(model).parent.name if Path(model).name == "model" else Path(model).name
            out = Path(args.out) / name if len(args.model) > 1 else Path(args.out)
            rows[name] = run_relearn(model, args.data, args.forget_ratio, args.steps, args.subset, out,
                                     config=args.config, lora=args.lora, lr=args.lr, seed=args.seed, opts=opts,
                                     overrides=args.overrides, force=args.force)
    except (RelearnError, DataError, ModelFolderError, ValueError, FileNotFoundError) as exc:
        return _fail(str(exc))
    print(f"relearning attack: {args.steps} steps on {args.subset:.0%} of the forget profiles; forget-split scores "
          "of the held-out profiles, before -> after (recovery)")
    print(format_recovery(rows))
    return 0


def cmd_demo(args) -> int:
    from vgid_dist.demo import run_demo

    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    run_demo(Path(args.out), methods, family=args.family, force=args.force)
    return 0


def cmd_sweep(args) -> int:
    from vgid_dist.cluster.sweep import run_sweep
    from vgid_dist.config import ConfigError
    from vgid_dist.tracking import TrackingError

    try:
        return run_sweep(args.matrix, executor=args.executor, wait=args.wait, experiment=args.experiment,
                         out=args.out, dry_run=args.dry_run, wait_timeout_s=args.wait_timeout,
                         overrides=args.overrides)
    except (ConfigError, TrackingError, ValueError) as exc:
        return _fail(str(exc))


def cmd_report(args) -> int:
    from vgid_dist.cluster.report import build_report
    from vgid_dist.tracking import Tracker, TrackingError

    out = Path(args.out or Path("runs") / "reports" / args.experiment)
    try:
        written = build_report(Tracker(), args.experiment, out)
    except TrackingError as exc:
        return _fail(str(exc))
    for path in written:
        if path.suffix == ".md":
            print(path.read_text())
    print("\n".join(f"wrote {p}" for p in written))
    return 0


def cmd_plan(args) -> int:
    import json

    from vgid_dist.plan import PlanError, RunShape, format_plan, plan_memory, resolve_architecture

    try:
        arch = resolve_architecture(args.model)
        slots = args.gpus_per_node * args.nodes * args.grad_accum
        micro, rem = divmod(args.batch_size or slots, slots)
        if rem or micro == 0:
            raise PlanError(f"--batch-size {args.batch_size} is not a multiple of the {args.gpus_per_node * args.nodes} "
                            f"GPUs x --grad-accum {args.grad_accum}")
        shape = RunShape(micro_batch=micro, text_tokens=args.text_tokens, dtype=args.dtype,
                         lora_r=args.lora_r if args.lora else None,
                         activation_checkpointing=args.activation_checkpointing)
        plan = plan_memory(arch, gpus_per_node=args.gpus_per_node, nodes=args.nodes, zero=args.zero,
                           offload=args.offload, shape=shape)
    except PlanError as exc:
        return _fail(str(exc))
    if args.json:
        print(json.dumps({"model": arch.name or args.model, **plan.as_dict(args.gpu_memory_gb)}))
    else:
        print(format_plan(arch, plan, args.gpu_memory_gb, zero=args.zero, offload=args.offload, shape=shape))
    return 0


def cmd_ui(args) -> int:
    import socket
    import subprocess

    from vgid_dist.tracking import tracking_uri, ui_command

    uri = tracking_uri()
    if uri.startswith(("http://", "https://")):
        print(f"MLflow browser: {uri} (the server named by MLFLOW_TRACKING_URI)", flush=True)
        return 0
    port = args.port
    with socket.socket() as s:
        taken = port == 0 or s.connect_ex((args.host, port)) == 0  # e.g. by a tracking server
    if taken:
        with socket.socket() as free:
            free.bind((args.host, 0))
            port = free.getsockname()[1]
    print(f"MLflow browser: http://{args.host}:{port} (store {uri}; Ctrl-C stops it)", flush=True)
    try:
        return subprocess.call(ui_command(uri, args.host, port))
    except KeyboardInterrupt:
        return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="vgid", description="Distributed unlearning for multimodal LLMs")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("demo", help="the whole job on the embedded default: synthetic benchmark, tiny model, CPU")
    p.add_argument("--out", default="vgid-demo", help="output folder (reused when run again)")
    p.add_argument("--methods", default="vgid", help="comma-separated methods to train and compare (default vgid)")
    p.add_argument("--family", default="llava", choices=["llava", "qwen2_5_vl"])
    p.add_argument("--force", action="store_true", help="retrain and re-evaluate methods already finished")
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser("train", help="one unlearning run (single process; use deepspeed/torchrun for several)")
    p.add_argument("--config", required=True, help="recipe YAML path or packaged recipe name")
    p.add_argument("--force", action="store_true", help="overwrite a finished output_dir")
    p.add_argument("overrides", nargs="*", help="dotted key=value overrides")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("eval", help="evaluate a model folder on MLLMU-Bench")
    p.add_argument("--model", required=True, help="local Hugging Face model folder")
    p.add_argument("--data", required=True, help="benchmark folder in MLLMU-Bench layout")
    p.add_argument("--forget-ratio", type=int, default=5, choices=[5, 10, 15])
    p.add_argument("--out", required=True, help="results JSON (predictions go beside it)")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--max-new-tokens", type=int, default=50)
    p.add_argument("--icu", choices=["declarative", "polite", "strict"], default=None,
                   help="unlearning instruction before every question (the ICU baseline)")
    p.add_argument("--attack", choices=["reverse"], default=None, help="reverse-engineering prompt after every question")
    p.add_argument("--splits", nargs="+", default=["forget", "test", "retain", "celebrity"],
                   choices=["forget", "test", "retain", "celebrity"])
    p.add_argument("--few-shot", type=int, default=0, metavar="K",
                   help="K solved Full_Set examples (seeded) before each classification and cloze question")
    p.add_argument("--mc-mode", choices=["generate", "logits"], default="generate",
                   help="logits: also score multiple choice by the option letters' log-probabilities "
                        "(class_acc_logits, beside the official generation-based class_acc)")
    p.add_argument("--seed", type=int, default=0, help="seeds the Test_Set image choice and few-shot examples")
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    p.add_argument("--limit", type=int, default=None, help="at most this many profiles per split (quick looks)")
    p.add_argument("--steer", default=None, metavar="FILE",
                   help="MLLMEraser steering file (`vgid steer build`): its hooks steer the model while it answers")
    p.set_defaults(func=cmd_eval)

    steer = sub.add_parser("steer", help="MLLMEraser: training-free activation steering").add_subparsers(
        dest="steer_command", required=True)
    p = steer.add_parser("build", help="erasure directions and gate from the forget/retain pairs -> safetensors")
    p.add_argument("--model", required=True, help="local Hugging Face model folder")
    p.add_argument("--data", required=True, help="benchmark folder in MLLMU-Bench layout")
    p.add_argument("--forget-ratio", type=int, default=5, choices=[5, 10, 15])
    p.add_argument("--out", required=True, help="steering file to write (.safetensors)")
    p.add_argument("--config", default=None, help="recipe whose mllmeraser parameters to start from (e.g. mllmeraser)")
    p.add_argument("--seed", type=int, default=0, help="seeds the perturbation of the erasure inputs' images")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    p.add_argument("params", nargs="*", help="mllmeraser parameters as key=value (layers=[15,16] scale=2 gate=soft)")
    p.set_defaults(func=cmd_steer_build)

    attack = sub.add_parser("attack", help="attacks on an unlearned model").add_subparsers(
        dest="attack_command", required=True)
    p = attack.add_parser("relearn", help="fine-tune on some forget profiles, score the others: recovery per metric")
    p.add_argument("--model", required=True, nargs="+", help="unlearned model folder(s)")
    p.add_argument("--data", required=True, help="benchmark folder in MLLMU-Bench layout")
    p.add_argument("--forget-ratio", type=int, default=5, choices=[5, 10, 15])
    p.add_argument("--steps", type=int, required=True, help="optimiser steps of the attack's fine-tuning")
    p.add_argument("--subset", type=float, required=True,
                   help="fraction of the forget profiles whose training pairs are fitted (the rest are scored)")
    p.add_argument("--out", default="runs/relearn", help="output folder (one subfolder per model when several)")
    p.add_argument("--config", default="tiny", help="recipe giving the fine-tuning's optimiser, dtype and DeepSpeed")
    p.add_argument("--lora", action="store_true", help="fit LoRA adapters instead of every weight")
    p.add_argument("--lr", type=float, default=None, help="learning rate (default: the recipe's)")
    p.add_argument("--seed", type=int, default=0, help="seeds the profile split and the fine-tuning")
    p.add_argument("--batch-size", type=int, default=16, help="evaluation batch size")
    p.add_argument("--max-new-tokens", type=int, default=50)
    p.add_argument("--steer", default=None, metavar="FILE",
                   help="evaluate before and after with this MLLMEraser steering file (the attack fits the weights)")
    p.add_argument("--force", action="store_true", help="overwrite a finished attack run")
    p.add_argument("overrides", nargs="*", help="dotted key=value overrides of the fine-tuning run")
    p.set_defaults(func=cmd_attack_relearn)

    p = sub.add_parser("sweep", help="the model x forget-ratio x method matrix through submitit, tracked in MLflow")
    p.add_argument("matrix", help="matrix YAML path or packaged matrix name (tiny-matrix, paper-table3)")
    p.add_argument("--executor", default="auto", choices=["auto", "slurm", "local"],
                   help="slurm, local (one job at a time on this machine), auto: slurm when it answers")
    p.add_argument("--wait", action="store_true", help="wait for every job, then mark the parent run and report")
    p.add_argument("--experiment", default=None, help="MLflow experiment (default: the matrix's)")
    p.add_argument("--out", default=None, help="sweep root for the cells' output_dirs (default runs/sweeps/<experiment>)")
    p.add_argument("--dry-run", action="store_true", help="print the cells and their sbatch parameters, submit nothing")
    p.add_argument("--wait-timeout", type=float, default=None, help="with --wait: give up after this many seconds")
    p.add_argument("overrides", nargs="*", help="dotted key=value overrides for every cell (e.g. eval.batch_size=32)")
    p.set_defaults(func=cmd_sweep)

    p = sub.add_parser("report", help="Table 3 / Table 6 and trade-off figures from an MLflow experiment")
    p.add_argument("--experiment", required=True, help="MLflow experiment name")
    p.add_argument("--out", default=None, help="output folder (default runs/reports/<experiment>)")
    p.set_defaults(func=cmd_report)

    p = sub.add_parser("plan", help="per-GPU memory of a run (parameters, gradients, optimiser, teacher, "
                                    "activations) and whether it fits")
    p.add_argument("--model", required=True, help="llava-1.5-7b, llava-1.5-13b, qwen2.5-vl-3b, or a model folder")
    p.add_argument("--gpus-per-node", type=int, default=8)
    p.add_argument("--nodes", type=int, default=1)
    p.add_argument("--zero", type=int, default=3, choices=[2, 3])
    p.add_argument("--offload", action="store_true", help="optimiser and parameters on the CPU (zero3_offload)")
    p.add_argument("--lora", action="store_true", help="LoRA adapters instead of full fine-tuning")
    p.add_argument("--lora-r", type=int, default=16)
    p.add_argument("--gpu-memory-gb", type=float, default=80.0)
    p.add_argument("--batch-size", type=int, default=None,
                   help="global forget samples per step (default: one per GPU); as many retain samples ride along")
    p.add_argument("--grad-accum", type=int, default=1)
    p.add_argument("--text-tokens", type=int, default=80, help="question + answer tokens per sample, image excluded")
    p.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float16", "float32"])
    p.add_argument("--activation-checkpointing", action="store_true")
    p.add_argument("--json", action="store_true", help="one JSON object instead of the table")
    p.set_defaults(func=cmd_plan)

    p = sub.add_parser("ui", help="the MLflow browser on the tracking store (local SQLite unless MLFLOW_TRACKING_URI)")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=5000, help="default 5000; a free port when it is taken, or with 0")
    p.set_defaults(func=cmd_ui)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    # key=value overrides may also follow options (`vgid sweep M --wait a=1`), which argparse alone refuses
    # once a positional argument came before the options.
    if extra and getattr(args, "overrides", None) is not None and all(
            "=" in a and not a.startswith("-") for a in extra):
        args.overrides = [*args.overrides, *extra]
    elif extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
