"""The ``vgid`` command: demo, train, config, teacher-view, eval, steer, attack, forget, sweep, report, plan, ui, track."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from vgid_dist.config import DataConfig, EvalOptions, LoraConfig
from vgid_dist.errors import VgidError
from vgid_dist.progress import library_bars_only_on_a_terminal
from vgid_dist.shutdown import end_process
from vgid_dist.threads import prefer_sleeping_threads
from vgid_dist.usage import (
    PROTOCOL_HELP,
    add_dtype_option,
    matrices_epilog,
    options_as_overrides,
    overrides_epilog,
    unrecognized_message,
    version_text,
)
from vgid_dist.vocab import FORGET_RATIOS, INSTRUCTION_STYLES, MC_MODES, PEOPLE_SPLITS, PROTOCOLS, SPLITS

# Before torch is imported anywhere in this process (libgomp reads it when it loads).
prefer_sleeping_threads()
library_bars_only_on_a_terminal()


def cmd_train(args) -> int:
    from vgid_dist.jobs import train_recipe

    train_recipe(args.config, args.overrides, force=args.force)
    return 0


def cmd_config(args) -> int:
    import yaml

    from vgid_dist.config import load_run_config, recipe_path, resolved_config

    cfg = load_run_config(args.config, args.overrides)
    print(f"# what a run of {args.config} uses ({recipe_path(args.config)}), every default filled in")
    if cfg.model.lora is not None:
        print(f"# model.lora: {cfg.model.lora.scope()}")
    print(yaml.safe_dump(resolved_config(cfg), sort_keys=False), end="")
    return 0


def cmd_teacher_view(args) -> int:
    import json

    from vgid_dist.teacher_view import build_views, render, summary, summary_text, write_view

    student, teacher, info = build_views(args.model, args.image, args.question, args.config, args.overrides)
    out = write_view(render(student, teacher, info), args.out, force=args.force)
    print(json.dumps(summary(student, teacher, info, out), indent=2) if args.json
          else summary_text(student, teacher, out))
    return 0


def cmd_eval(args) -> int:
    from vgid_dist.config import EvalOptions
    from vgid_dist.data.people import is_people_folder
    from vgid_dist.eval.run import evaluate_model

    opts = EvalOptions.of("vgid eval", batch_size=args.batch_size, max_new_tokens=args.max_new_tokens,
                          icu=args.icu, attack=args.attack, seed=args.seed, protocol=args.protocol,
                          mc_mode=args.mc_mode, steer=args.steer)
    if is_people_folder(args.data):
        from vgid_dist.eval.people import evaluate_people, format_people_table

        results = evaluate_people(args.model, args.data, args.out, opts=opts, dtype=args.dtype, splits=args.splits,
                                  limit=args.limit)
        if results is not None:
            print(format_people_table(results))
            print(f"results: {args.out} (per person and per question type inside)")
        return 0
    results = evaluate_model(args.model, args.data, args.forget_ratio, args.out, opts=opts, dtype=args.dtype,
                             splits=args.splits or list(SPLITS), limit=args.limit)
    if results is not None:
        from vgid_dist.eval.report import format_split_table, format_type_table

        print(format_split_table({"model": results}))
        print(format_type_table(results))
        print(f"results: {args.out} (protocol {opts.protocol}, seed {opts.seed})")
    return 0


def cmd_steer_build(args) -> int:
    from vgid_dist.eval.steering import build_steering_file, steering_params

    params = steering_params(args.config, args.params)
    steering = build_steering_file(args.model, args.data, args.forget_ratio, args.out, params, seed=args.seed,
                                   batch_size=args.batch_size, dtype=args.dtype)
    info = steering.info  # pairs and how often the gate opens on each side
    print(f"steering: layers {steering.layers}, gate layer {steering.gate_layer}, threshold {steering.threshold:.4f}, "
          f"scale {steering.scale}; gate open on {info['forget_gate_open']:.0%} of {info['forget_pairs']} forget and "
          f"{info['retain_gate_open']:.0%} of {info['retain_pairs']} retain pairs -> {args.out}")
    return 0


def cmd_attack_relearn(args) -> int:
    from vgid_dist.config import EvalOptions
    from vgid_dist.eval.relearn import format_recovery, run_relearn
    from vgid_dist.tracking import callback_for

    rows = {}
    opts = EvalOptions.of("vgid attack relearn", batch_size=args.batch_size, max_new_tokens=args.max_new_tokens,
                          seed=args.seed, protocol=args.protocol, steer=args.steer)
    for model in args.model:
        name = Path(model).parent.name if Path(model).name == "model" else Path(model).name
        out = Path(args.out) / name if len(args.model) > 1 else Path(args.out)
        tracker = callback_for(args.config)  # the attack's fine-tuning is an ordinary, tracked run
        rows[name] = run_relearn(model, args.data, args.forget_ratio, args.steps, args.subset, out,
                                 config=args.config, lora=args.lora, lr=args.lr, seed=args.seed, opts=opts,
                                 overrides=args.overrides, force=args.force,
                                 callbacks=[tracker] if tracker is not None else [])
    print(f"relearning attack: {args.steps} steps on {args.subset:.0%} of the forget profiles; forget-split scores "
          "of the held-out profiles, before -> after (recovery)")
    print(format_recovery(rows))
    return 0


def cmd_forget(args) -> int:
    from vgid_dist.cluster.forget import ForgetRequest, run_audit, submit_audit
    from vgid_dist.errors import BarNotMetError

    req = ForgetRequest(model=args.model, data=args.data, out=args.out, method=args.method, recipe=args.config,
                        overrides=list(args.overrides), require=args.require, relearn_steps=args.relearn_steps,
                        relearn_subset=args.relearn_subset, relearn_lr=args.relearn_lr)
    if args.executor == "slurm":
        resources = {k: v for k, v in (("gpus_per_node", args.gpus), ("cpus_per_task", args.cpus),
                                       ("time_min", args.time_min), ("partition", args.partition)) if v is not None}
        audit = submit_audit(req, resources)
    else:
        audit = run_audit(req)
    if not audit:
        return 0  # ranks other than 0 of a distributed run
    from vgid_dist.eval.audit import console_summary, unmet_conditions

    print(console_summary(audit, Path(args.out)))
    if audit["passed"] is False:
        raise BarNotMetError(f"the deletion does not meet the bar: {'; '.join(unmet_conditions(audit))}")
    return 0


def cmd_demo(args) -> int:
    from vgid_dist.demo import run_demo

    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    run_demo(Path(args.out), methods, family=args.family, force=args.force)
    return 0


def cmd_sweep(args) -> int:
    from vgid_dist.cluster.sweep import run_sweep

    return run_sweep(args.matrix, executor=args.executor, wait=args.wait, experiment=args.experiment, out=args.out,
                     dry_run=args.dry_run, wait_timeout_s=args.wait_timeout, overrides=args.overrides)


def cmd_report(args) -> int:
    from vgid_dist.cluster.report import build_report
    from vgid_dist.tracking import Tracker

    out = Path(args.out or Path("runs") / "reports" / args.experiment)
    written = build_report(Tracker(create=False), args.experiment, out)  # reading creates no store
    for table in (path for path in written if path.suffix == ".md"):
        print(table.read_text())
    print("\n".join(f"wrote {p}" for p in written))
    return 0


def cmd_plan(args) -> int:
    import json

    from vgid_dist.plan import RunShape, format_plan, micro_batch_per_gpu, plan_memory, resolve_architecture

    arch = resolve_architecture(args.model)
    micro = micro_batch_per_gpu(args.batch_size, args.gpus_per_node * args.nodes, args.grad_accum)
    shape = RunShape(micro_batch=micro, text_tokens=args.text_tokens, dtype=args.dtype,
                     lora_r=args.lora_r if args.lora else None, activation_checkpointing=args.activation_checkpointing)
    plan = plan_memory(arch, gpus_per_node=args.gpus_per_node, nodes=args.nodes, zero=args.zero,
                       offload=args.offload, shape=shape)
    if args.json:
        print(json.dumps({"model": arch.name or args.model, **plan.as_dict(args.gpu_memory_gb)}))
    else:
        print(format_plan(arch, plan, args.gpu_memory_gb, zero=args.zero, offload=args.offload, shape=shape))
    return 0


def cmd_ui(args) -> int:
    from vgid_dist.tracking.ui import browse

    return browse(args.host, args.port)


def cmd_track(args) -> int:
    from vgid_dist.tracking import record_output

    run_id, uri = record_output(Path(args.output_dir), experiment=args.experiment)
    print(f"{args.output_dir}: recorded as MLflow run {run_id} ({uri})")
    return 0


def _default(model, field: str):
    """A field's default in the configuration models: the command line and recipes share one value."""
    return model.model_fields[field].default


FORGET_RATIO_HELP = (f"the share of the profiles to forget, in %% (the forget_X and retain_(100-X) splits; default "
                     f"{_default(DataConfig, 'forget_ratio')})")


def _finish(p: argparse.ArgumentParser, func, *, force: str | None = None, overrides: str | None = None) -> None:
    """A command's closing arguments: ``--force`` (with what it overwrites), trailing ``key=value`` overrides
    (with what they change), and the function that runs it."""
    if force:
        p.add_argument("--force", action="store_true", help=force)
    if overrides:
        p.add_argument("overrides", nargs="*", help=overrides)
    p.set_defaults(func=func, command_parser=p)  # its own usage in errors, not the top level's


def _model_and_data(p: argparse.ArgumentParser, data_help: str = "benchmark folder in MLLMU-Bench layout") -> None:
    p.add_argument("--model", required=True, help="local Hugging Face model folder")
    p.add_argument("--data", required=True, help=data_help)
    p.add_argument("--forget-ratio", type=int, default=_default(DataConfig, "forget_ratio"),
                   choices=list(FORGET_RATIOS), help=FORGET_RATIO_HELP)


def _eval_settings(p: argparse.ArgumentParser, batch_help: str = "questions asked at once") -> None:
    p.add_argument("--batch-size", type=int, default=_default(EvalOptions, "batch_size"),
                   help=f"{batch_help} (default {_default(EvalOptions, 'batch_size')})")
    p.add_argument("--max-new-tokens", type=int, default=_default(EvalOptions, "max_new_tokens"),
                   help=f"longest reply, in tokens (default {_default(EvalOptions, 'max_new_tokens')})")
    p.add_argument("--protocol", choices=PROTOCOLS, default=_default(EvalOptions, "protocol"), help=PROTOCOL_HELP)


def _add_demo_train_config(sub) -> None:
    p = sub.add_parser("demo", help="the whole job on the embedded default: synthetic benchmark, tiny model, CPU")
    p.add_argument("--out", default="vgid-demo", help="output folder (reused when run again)")
    p.add_argument("--methods", default="vgid", help="comma-separated methods to train and compare (default vgid)")
    p.add_argument("--family", default="llava", choices=["llava", "qwen2_5_vl"],
                   help="the tiny model's architecture (default llava)")
    _finish(p, cmd_demo, force="retrain and re-evaluate methods already finished")

    p = sub.add_parser("train", help="one unlearning run (single process; use deepspeed/torchrun for several)",
                       epilog=overrides_epilog("train"), formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", required=True, help="recipe YAML path or packaged recipe name (listed below)")
    _finish(p, cmd_train, force="overwrite a finished output_dir", overrides="dotted key=value overrides")

    p = sub.add_parser("config", help="print the resolved configuration of a recipe (what a run would use)",
                       epilog=overrides_epilog("config").replace("--config ", ""),
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("config", help="recipe YAML path or packaged recipe name")
    _finish(p, cmd_config, overrides="dotted key=value overrides")

    p = sub.add_parser("teacher-view", help="the student's and the teacher's processed images side by side, with "
                                            "the teacher's prompt")
    p.add_argument("--model", required=True, help="local Hugging Face model folder (its processor and tokenizer)")
    p.add_argument("--image", required=True, help="an image file")
    p.add_argument("--question", default="Who is the person in the image?", help="the question both sides are asked")
    p.add_argument("--config", default=None,
                   help="recipe giving the method (vgid, icu_t, noise_t), its parameters and the seed "
                        "(default: vgid's defaults, seed 42)")
    p.add_argument("--out", required=True, help="PNG to write")
    p.add_argument("--json", action="store_true",
                   help="print per-channel mean/std of both processed pixel tensors (and the prompts) as JSON")
    _finish(p, cmd_teacher_view, force="replace an existing --out",
            overrides="dotted key=value overrides of the recipe (method.sigma=0.4)")


def _add_eval_steer_attack(sub) -> None:
    p = sub.add_parser("eval", help="evaluate a model folder on MLLMU-Bench or on a JSONL folder of people")
    _model_and_data(p, data_help="benchmark folder in MLLMU-Bench layout, or a folder of people (forget.jsonl, "
                                 "retain.jsonl, optional probes.jsonl)")
    p.add_argument("--out", required=True, help="results JSON (predictions go beside it)")
    _eval_settings(p)
    p.add_argument("--icu", choices=INSTRUCTION_STYLES, default=None,
                   help="unlearning instruction before every question (the ICU baseline)")
    p.add_argument("--attack", choices=["reverse"], default=None, help="reverse-engineering prompt after every question")
    p.add_argument("--splits", nargs="+", default=None, choices=list(SPLITS) + list(PEOPLE_SPLITS[2:]),
                   help=f"default: every split of the data ({', '.join(SPLITS)} for MLLMU-Bench; "
                        f"{', '.join(PEOPLE_SPLITS)} for a JSONL folder of people)")
    p.add_argument("--mc-mode", choices=MC_MODES, default=_default(EvalOptions, "mc_mode"),
                   help="logits: also score multiple choice by the option letters' log-probabilities "
                        "(class_acc_logits, beside the official generation-based class_acc)")
    p.add_argument("--seed", type=int, default=0, help="seeds the example profiles and the Test_Set image draws")
    add_dtype_option(p)
    p.add_argument("--limit", type=int, default=None, help="at most this many profiles per split (quick looks)")
    p.add_argument("--steer", default=None, metavar="FILE",
                   help="MLLMEraser steering file (`vgid steer build`): its hooks steer the model while it answers")
    _finish(p, cmd_eval)

    steer = sub.add_parser("steer", help="MLLMEraser: training-free activation steering").add_subparsers(
        dest="steer_command", required=True)
    p = steer.add_parser("build", help="erasure directions and gate from the forget/retain pairs -> safetensors")
    _model_and_data(p)
    p.add_argument("--out", required=True, help="steering file to write (.safetensors)")
    p.add_argument("--config", default=None, help="recipe whose mllmeraser parameters to start from (e.g. mllmeraser)")
    p.add_argument("--seed", type=int, default=0, help="seeds the perturbation of the erasure inputs' images")
    p.add_argument("--batch-size", type=int, default=8, help="pairs encoded at once (default 8)")
    add_dtype_option(p)
    p.add_argument("params", nargs="*", help="mllmeraser parameters as key=value (layers=[15,16] scale=2 gate=soft)")
    _finish(p, cmd_steer_build)

    attack = sub.add_parser("attack", help="attacks on an unlearned model").add_subparsers(
        dest="attack_command", required=True)
    p = attack.add_parser("relearn", help="fine-tune on some forget profiles, score the others: recovery per metric")
    p.add_argument("--model", required=True, nargs="+", help="unlearned model folder(s)")
    p.add_argument("--data", required=True, help="benchmark folder in MLLMU-Bench layout")
    p.add_argument("--forget-ratio", type=int, default=_default(DataConfig, "forget_ratio"),
                   choices=list(FORGET_RATIOS), help=FORGET_RATIO_HELP)
    p.add_argument("--steps", type=int, required=True, help="optimiser steps of the attack's fine-tuning")
    p.add_argument("--subset", type=float, required=True,
                   help="fraction of the forget profiles whose training pairs are fitted (the rest are scored)")
    p.add_argument("--out", default="runs/relearn", help="output folder (one subfolder per model when several)")
    p.add_argument("--config", default="tiny", help="recipe giving the fine-tuning's optimiser, dtype and DeepSpeed")
    p.add_argument("--lora", action="store_true", help="fit LoRA adapters instead of every weight")
    p.add_argument("--lr", type=float, default=None, help="learning rate (default: the recipe's)")
    p.add_argument("--seed", type=int, default=0, help="seeds the profile split and the fine-tuning")
    _eval_settings(p, batch_help="evaluation batch size")
    p.add_argument("--steer", default=None, metavar="FILE",
                   help="evaluate before and after with this MLLMEraser steering file (the attack fits the weights)")
    _finish(p, cmd_attack_relearn, force="overwrite a finished attack run",
            overrides="dotted key=value overrides of the fine-tuning run")


def _add_forget(sub) -> None:
    p = sub.add_parser("forget", help="audited deletion of the people of a JSONL folder: evaluate, train, "
                                      "evaluate, attack, report (audit.json, audit.md, audit.html)")
    p.add_argument("--model", required=True, help="local Hugging Face model folder (or @tiny/vanilla-llava)")
    p.add_argument("--data", required=True, help="folder of people: forget.jsonl, retain.jsonl, optional probes.jsonl")
    p.add_argument("--out", required=True, help="audit folder (an earlier audit there is never overwritten)")
    p.add_argument("--method", default=None, help="unlearning method (default: the recipe's)")
    p.add_argument("--config", default=None,
                   help="recipe giving the method's parameters, optimiser and precision (default: the method's "
                        "packaged recipe, else llava-1.5-7b: VGID's regime)")
    p.add_argument("--require", default=None, metavar="CONDITIONS",
                   help="the bar, e.g. \"forget.fact_recall<=0.1,retain.gen_rougeL>=0.9\" ([stage.]split.metric "
                        "OP number; stage after (default), before, reverse, relearn): exit status 4 when not met")
    p.add_argument("--relearn-steps", type=int, default=10, help="steps of the relearning attack (0: no attack)")
    p.add_argument("--relearn-subset", type=float, default=0.5,
                   help="share of the forgotten people the attack fits (the others are scored)")
    p.add_argument("--relearn-lr", type=float, default=None, help="the attack's learning rate (default: the recipe's)")
    p.add_argument("--executor", default="local", choices=["local", "slurm"],
                   help="local: in this process; slurm: one job through submitit, waited for")
    p.add_argument("--gpus", type=int, default=None, help="slurm: GPUs per node (one task per GPU)")
    p.add_argument("--cpus", type=int, default=None, help="slurm: CPUs per task")
    p.add_argument("--time-min", type=int, default=None, help="slurm: time limit in minutes")
    p.add_argument("--partition", default=None, help="slurm: partition")
    _finish(p, cmd_forget, overrides="dotted key=value overrides of the training run (optim.lr=1e-4)")


def _add_cluster_commands(sub) -> None:
    p = sub.add_parser("sweep", help="the model x forget-ratio x method matrix through submitit, tracked in MLflow",
                       epilog=matrices_epilog(), formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("matrix", help="matrix YAML path or packaged matrix name (tiny-matrix, paper-table3)")
    p.add_argument("--executor", default="auto", choices=["auto", "slurm", "local"],
                   help="slurm, local (one job at a time on this machine), auto: slurm when it answers")
    p.add_argument("--wait", action="store_true", help="wait for every job, then mark the parent run and report")
    p.add_argument("--experiment", default=None, help="MLflow experiment (default: the matrix's)")
    p.add_argument("--out", default=None, help="sweep root for the cells' output_dirs (default runs/sweeps/<experiment>)")
    p.add_argument("--dry-run", action="store_true", help="print the cells and their sbatch parameters, submit nothing")
    p.add_argument("--wait-timeout", type=float, default=None, help="with --wait: give up after this many seconds")
    _finish(p, cmd_sweep, overrides="dotted key=value overrides for every cell (e.g. eval.batch_size=32)")

    p = sub.add_parser("report", help="Table 3 / Table 6 and trade-off figures from an MLflow experiment")
    p.add_argument("--experiment", required=True, help="MLflow experiment name")
    p.add_argument("--out", default=None, help="output folder (default runs/reports/<experiment>)")
    _finish(p, cmd_report)

    p = sub.add_parser("plan", help="per-GPU memory of a run (parameters, gradients, optimiser, teacher, "
                                    "activations) and whether it fits")
    p.add_argument("--model", required=True, help="llava-1.5-7b, llava-1.5-13b, qwen2.5-vl-3b, or a model folder")
    p.add_argument("--gpus-per-node", type=int, default=8, help="GPUs (ranks) per node (default 8)")
    p.add_argument("--nodes", type=int, default=1, help="nodes (default 1)")
    p.add_argument("--zero", type=int, default=3, choices=[2, 3],
                   help="ZeRO stage: 3 shards parameters too, 2 only gradients and optimiser states (default 3)")
    p.add_argument("--offload", action="store_true", help="optimiser and parameters on the CPU (zero3_offload)")
    p.add_argument("--lora", action="store_true", help="LoRA adapters instead of full fine-tuning")
    p.add_argument("--lora-r", type=int, default=_default(LoraConfig, "r"),
                   help=f"LoRA rank, with --lora (default {_default(LoraConfig, 'r')})")
    p.add_argument("--gpu-memory-gb", type=float, default=80.0,
                   help="memory of one GPU; the plan fits when total x 1.1 + 1 GB is at most this (default 80)")
    p.add_argument("--batch-size", type=int, default=None,
                   help="global forget samples per step (default: one per GPU); as many retain samples ride along")
    p.add_argument("--grad-accum", type=int, default=1,
                   help="gradient accumulation steps: the micro-batch per GPU is batch / (GPUs x this) (default 1)")
    p.add_argument("--text-tokens", type=int, default=80, help="question + answer tokens per sample, image excluded")
    p.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float16", "float32"],
                   help="weights and activations (default bfloat16; optimiser states are fp32 either way)")
    p.add_argument("--activation-checkpointing", action="store_true",
                   help="recompute activations in backward (model.gradient_checkpointing): less memory, more time")
    p.add_argument("--json", action="store_true", help="one JSON object instead of the table")
    _finish(p, cmd_plan)

    p = sub.add_parser("ui", help="the MLflow browser on the tracking store (local SQLite unless MLFLOW_TRACKING_URI)")
    p.add_argument("--host", default="127.0.0.1", help="address to serve on (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=int, default=5000, help="default 5000; a free port when it is taken, or with 0")
    _finish(p, cmd_ui)

    p = sub.add_parser("track", help="record a finished output folder in the tracking store: complete a run whose "
                                     "tracking was lost, or track one trained with VGID_TRACKING=off")
    p.add_argument("output_dir", help="a run's output folder (DONE present)")
    p.add_argument("--experiment", default=None,
                   help="for a folder the store has no run of: MLFLOW_EXPERIMENT_NAME, else vgid")
    _finish(p, cmd_track)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="vgid", description="Distributed unlearning for multimodal LLMs")
    parser.add_argument("--version", action="version", version=version_text(),
                        help="the version of vgid and of the packages it runs on, then exit")
    sub = parser.add_subparsers(dest="command", required=True)
    _add_demo_train_config(sub)
    _add_eval_steer_attack(sub)
    _add_forget(sub)
    _add_cluster_commands(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    argv = options_as_overrides(parser, sys.argv[1:] if argv is None else list(argv))
    args, extra = parser.parse_known_args(argv)
    # key=value overrides may also follow options (`vgid sweep M --wait a=1`), which argparse alone refuses
    # once a positional argument came before the options.
    if extra and getattr(args, "overrides", None) is not None and all(
            "=" in a and not a.startswith("-") for a in extra):
        args.overrides = [*args.overrides, *extra]
    elif extra:
        args.command_parser.error(unrecognized_message(args.command_parser, extra))
    try:
        return args.func(args)
    except VgidError as exc:
        print(f"{exc.prefix}{exc}", file=sys.stderr, flush=True)
        return exc.exit_code


def entry() -> None:
    """The ``vgid`` script: ``main``, then the process ends without Python's module teardown (shutdown.py)."""
    end_process(main())


if __name__ == "__main__":
    entry()
