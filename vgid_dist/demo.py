"""``vgid demo``: the whole job on the embedded default, in one process on a CPU.

    DIR/data/          synthetic benchmark (MLLMU-Bench layout)
    DIR/vanilla/       tiny vanilla model (fine-tuned on ft_Data until it knows the profiles)
    DIR/runs/<method>/ one unlearning run per method (model/, metrics.json, ...)
    DIR/eval/<name>.json (+ .predictions.jsonl) evaluation of base and of every method
    DIR/results.json   {"methods": {name: {split: {metric: value}, "counts": {split: {metric: questions}}}}}
    DIR/table3.md, DIR/tradeoff.png

Everything already finished in DIR is reused when the demo runs again (``--force`` redoes the methods).
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from vgid_dist.config import RECIPES_DIR, load_run_config
from vgid_dist.errors import ConfigError, did_you_mean
from vgid_dist.vocab import SPLITS

FORGET_RATIO = 5
# ``--methods all``: the paper's Table 3 rows (plus ICU, Table 6, and the IDK variant of PO), in table order.
ALL_METHODS = ("icu", "ga", "ga_diff", "kl_min", "npo", "po", "idk", "rmu", "icu_t", "noise_t", "vgid", "vkd",
               "mllmeraser")


def resolve_methods(methods: list[str]) -> list[str]:
    """``all`` expands to ALL_METHODS; unknown names fail before anything runs, naming the closest and
    listing the known ones."""
    from vgid_dist.config import METHOD_PARAMS

    known = sorted(set(METHOD_PARAMS) - {"finetune"})  # finetune builds the vanilla model; it unlearns nothing
    unknown = [m for m in methods if m != "all" and m not in known]
    if unknown or not methods:
        hint = did_you_mean(unknown[0], known) if unknown else ""
        raise ConfigError(f"--methods: {('unknown method ' + repr(unknown[0])) if unknown else 'no method given'}"
                          f"{hint} (known: all, {', '.join(known)})")
    names: list[str] = []
    for m in methods:
        for name in ALL_METHODS if m == "all" else (m,):
            if name not in names:
                names.append(name)
    return names


def method_recipe(method: str) -> tuple[str, list[str]]:
    """The packaged tiny recipe of a method (``tiny-<method>``), else ``tiny`` with the method swapped in."""
    if (RECIPES_DIR / f"tiny-{method}.yaml").is_file():
        return f"tiny-{method}", []
    return "tiny", [f"method={{name: {method}}}"] if method != "vgid" else []


def run_demo(out: Path, methods: list[str], *, family: str = "llava", force: bool = False) -> dict:
    from transformers.utils import logging as hf_logging

    from vgid_dist.assets import ensure_benchmark, ensure_vanilla
    from vgid_dist.config import EvalOptions
    from vgid_dist.engine.entry import train
    from vgid_dist.eval.run import evaluate_model
    from vgid_dist.methods import method_class

    t_start = time.perf_counter()
    out = out.expanduser()
    methods = resolve_methods(methods)
    # The tiny model loads and saves in milliseconds: no bars for that.
    hf_logging.disable_progress_bar()
    print(f"[demo] {out}: synthetic benchmark, tiny vanilla {family} model, then {', '.join(methods)} at forget "
          f"ratio {FORGET_RATIO} %, each evaluated on the four splits", flush=True)
    data = ensure_benchmark(out / "data")
    vanilla = ensure_vanilla(out / "vanilla", data, family, in_process=True)
    opts = EvalOptions()
    results: dict[str, dict] = {}

    def evaluate(name: str, model: Path, *, redo: bool, icu: str | None = None, steer: Path | None = None) -> None:
        target = out / "eval" / f"{name}.json"
        if redo or not target.is_file():
            print(f"[demo] evaluating {name} ({model})", flush=True)
            evaluate_model(str(model), str(data), FORGET_RATIO, target,
                           opts=opts.but(icu=icu, steer=str(steer) if steer else None))
        else:
            print(f"[demo] {name}: evaluated before ({target})", flush=True)
        results[name] = {k: v for k, v in json.loads(target.read_text()).items() if k in (*SPLITS, "counts")}

    evaluate("base", vanilla, redo=False)
    for method in methods:
        recipe, overrides = method_recipe(method)
        if method == "mllmeraser":
            # Training-free steering of the base model: directions and gate from the training pairs.
            from vgid_dist.eval.steering import build_steering_file, steering_params

            steer = out / "runs" / method / "steer.safetensors"
            redo = force or not steer.is_file()
            if redo:
                print(f"[demo] building the {method} steering file (recipe {recipe})", flush=True)
                build_steering_file(str(vanilla), str(data), FORGET_RATIO, steer, steering_params(recipe))
            evaluate(method, vanilla, redo=redo, steer=steer)
            continue
        if not method_class(method).trains:
            # ICU: the base model, asked with the unlearning instruction before every question.
            cfg = load_run_config(recipe, overrides)
            evaluate(method, vanilla, redo=force, icu=cfg.method.params().instruction_style)
            continue
        run_dir = out / "runs" / method
        redo = force or not (run_dir / "DONE").is_file()
        if redo:
            cfg = load_run_config(recipe, overrides + [f"model.path={vanilla}", f"data.root={data}",
                                                       f"output_dir={run_dir}", f"data.forget_ratio={FORGET_RATIO}"])
            print(f"[demo] training {method} (recipe {recipe})", flush=True)
            train(cfg, force=True)
        evaluate(method, run_dir / "model", redo=redo)

    summary = {"methods": results, "forget_ratio": FORGET_RATIO, "seconds": time.perf_counter() - t_start}
    (out / "results.json").write_text(json.dumps(summary, indent=2))
    print_results(results, out)
    unchanged = [m for m in methods if method_class(m).trains and results[m]["forget"] == results["base"]["forget"]]
    if unchanged:
        print(f"[demo] warning: forget-set scores identical to the base model's for {', '.join(unchanged)} "
              "(too few steps or too low a learning rate in their tiny recipes?)", flush=True)
    print(f"[demo] done in {summary['seconds']:.0f} s; results in {out / 'results.json'}", flush=True)
    return summary


def print_results(results: dict, out: Path) -> None:
    """The before/after table (every score with its count), how to read it, and where the files are."""
    from vgid_dist.eval.report import HOW_TO_READ, format_split_table, write_report

    write_report(results, out)
    print(f"\n{format_split_table(results, ('cloze_acc', 'class_acc', 'gen_rougeL'))}\n{HOW_TO_READ}\n"
          f"[demo] wrote {out / 'table3.md'} and {out / 'tradeoff.png'}", flush=True)
