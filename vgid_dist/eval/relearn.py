"""Relearning attack (VKD paper's robustness evaluation; readings ours): does forgotten knowledge come back after
a little fine-tuning on related forget data?

    vgid attack relearn --model PATH --data DIR --forget-ratio R --steps K --subset F

1. The forget profiles at ratio R are split by a seeded shuffle: a fraction F of them is ATTACKED (their
   training pairs are fitted), the rest is HELD OUT (their evaluation questions are scored). The two sets are
   disjoint, checked before anything runs: an attack that saw the questions it is scored on measures
   memorisation, not recovery.
2. The model is evaluated on the held-out profiles' forget-split questions (before).
3. It is fine-tuned for K optimiser steps on the attacked profiles' pairs: the ``finetune`` method
   (``source: forget``, ``profiles: [...]``) through the normal training entry, so the attacked run is an
   ordinary run (output folder, config, log, tracking); full fine-tuning or LoRA (``--lora``).
4. The attacked model is evaluated on the same questions (after). Recovery = after - before, per metric.
   A training-free method (MLLMEraser) is attacked the same way: its steering file (``--steer``) is applied
   at both evaluations while the fine-tuning fits the weights underneath it.

Output folder: ``plan.json`` (the two profile sets), ``before.json``, ``attack/`` (the run), ``after.json``,
``relearn.json`` (before, after, recovery).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from vgid_dist.assets import resolve_assets
from vgid_dist.config import EvalOptions, RunConfig, load_run_config, updated_config
from vgid_dist.data.mllmu import MLLMUBench
from vgid_dist.engine.entry import train
from vgid_dist.errors import RelearnError
from vgid_dist.eval.evaluator import split_results
from vgid_dist.eval.run import build_items, evaluate_model
from vgid_dist.io import write_json_atomic
from vgid_dist.perturb import noise_rng
from vgid_dist.vocab import METRICS


@dataclass(frozen=True)
class RelearnPlan:
    attacked: tuple[str, ...]
    """Forget profiles whose training pairs the attack fits."""
    held_out: tuple[str, ...]
    """Forget profiles whose evaluation questions are scored."""


def split_forget_profiles(profile_ids: list[str], subset: float, seed: int) -> RelearnPlan:
    """A seeded split of the forget profiles: round(subset * n) attacked (at least 1), the rest held out (at
    least 1)."""
    if not 0 < subset < 1:
        raise RelearnError(f"--subset {subset}: expected a fraction strictly between 0 and 1")
    ids = sorted(set(profile_ids))
    if len(ids) < 2:
        raise RelearnError(f"{len(ids)} forget profile(s): the attack needs at least 2 (some to fit, some to score)")
    order = noise_rng(seed, "relearn").permutation(len(ids))
    n_attacked = min(max(1, round(subset * len(ids))), len(ids) - 1)
    attacked = sorted(ids[int(i)] for i in order[:n_attacked])
    held_out = sorted(ids[int(i)] for i in order[n_attacked:])
    return RelearnPlan(tuple(attacked), tuple(held_out))


def check_disjoint(train_samples, eval_items, key: str = "profile_id") -> None:
    """Raises RelearnError when a scored question belongs to a profile whose pairs the attack fits (``key``:
    the attribute naming a training pair's profile)."""
    fitted = {getattr(s, key) for s in train_samples}
    scored = {it.profile_id for it in eval_items}
    overlap = sorted(fitted & scored)
    if overlap:
        raise RelearnError(f"relearning attack: profiles {overlap[:5]} are both fitted and scored")
    if not fitted:
        raise RelearnError("relearning attack: the attacked profiles have no training pairs")
    if not scored:
        raise RelearnError("relearning attack: the held-out profiles have no evaluation questions")


def plan_attack(data_root: str, forget_ratio: int, subset: float, seed: int, train_root: str | None = None,
                protocol: str = "official"):
    """(plan, training pairs of the attacked profiles, evaluation items of the held-out profiles), checked."""
    bench = MLLMUBench(data_root, train_root)
    plan = split_forget_profiles(bench.split_ids("forget", forget_ratio), subset, seed)
    attacked, held = set(plan.attacked), set(plan.held_out)
    train = [s for s in bench.train_samples("forget", forget_ratio) if s.profile_id in attacked]
    items = [it for it in build_items(bench, forget_ratio, ("forget",), seed, protocol=protocol)
             if it.profile_id in held]
    check_disjoint(train, items)
    return plan, train, items


def recovery(before: dict, after: dict, split: str = "forget") -> dict[str, float]:
    """after - before for every metric both results hold on ``split``."""
    b, a = before.get(split, {}), after.get(split, {})
    return {m: a[m] - b[m] for m in sorted(b.keys() & a.keys())}


def format_recovery(rows: dict[str, dict]) -> str:
    """A markdown table: one row per model, before -> after (recovery) per metric."""
    metrics = [m for m in METRICS if any(m in r["recovery"] for r in rows.values())]
    lines = ["| model | " + " | ".join(metrics) + " |", "|---|" + "---|" * len(metrics)]
    for name, r in rows.items():
        cells = [f"{r['before']['forget'][m]:.3f} -> {r['after']['forget'][m]:.3f} ({r['recovery'][m]:+.3f})"
                 for m in metrics]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def attack_config(config: str, overrides: list[str], *, model: str, data_root: str, forget_ratio: int,
                  attacked: tuple[str, ...], steps: int, seed: int, out: Path, lora: bool, lr: float | None,
                  batch_size: int | None) -> RunConfig:
    """The fine-tuning run of the attack: ``config`` (a recipe giving optimiser, dtype and DeepSpeed settings,
    with the user's ``overrides``) fitting the attacked profiles' forget pairs with the ``finetune`` method."""
    cfg = load_run_config(config, overrides)
    values = {"model.path": model, "data.root": data_root, "data.forget_ratio": forget_ratio,
              "method": {"name": "finetune", "source": "forget", "profiles": list(attacked)},
              "optim.max_steps": steps, "optim.seed": seed, "output_dir": str(out),
              "eval.at_end": False, "eval.every_steps": 0}
    if lr is not None:
        values["optim.lr"] = lr
    if batch_size is not None:
        values["optim.batch_size"] = batch_size
    # lora: the recipe's adapters (their defaults when it has none); else every weight, even when the recipe
    # trains LoRA adapters.
    values["model.lora"] = ({} if cfg.model.lora is None else cfg.model.lora.model_dump()) if lora else None
    # Model and data are given: only what the recipe still names as a packaged asset is built.
    return resolve_assets(updated_config(cfg, values, f"relearning attack ({config})"))


def run_relearn(model: str, data_root: str, forget_ratio: int, steps: int, subset: float, out: str | Path, *,
                config: str = "tiny", lora: bool = False, lr: float | None = None, batch_size: int | None = None,
                seed: int = 0, opts=None, overrides: list[str] | None = None, force: bool = False,
                callbacks: list | tuple = ()) -> dict:
    """The attack on one model folder; returns {plan, before, after, recovery} (also in ``out/relearn.json``) on
    rank 0, {} on the other ranks of a distributed run. ``callbacks`` go to the fine-tuning run (tracking)."""
    if steps < 1:
        raise RelearnError(f"--steps {steps}: expected >= 1")
    opts = opts or EvalOptions(seed=seed)
    plan, train_pairs, items = plan_attack(data_root, forget_ratio, subset, seed, protocol=opts.protocol)
    # Validated before the first evaluation: a bad override costs seconds, not an evaluation.
    cfg = attack_config(config, list(overrides or []), model=model, data_root=data_root, forget_ratio=forget_ratio,
                        attacked=plan.attacked, steps=steps, seed=seed, out=Path(out).expanduser() / "attack",
                        lora=lora, lr=lr, batch_size=batch_size)
    held = set(plan.held_out)

    def evaluate(model_path: str, out_file: Path) -> dict | None:
        return evaluate_model(model_path, data_root, forget_ratio, out_file, opts=opts, splits=("forget",),
                              profiles=held)

    return relearn_attack(model, out, plan, cfg, evaluate, scored=len(items), train_pairs=len(train_pairs),
                          record={"steps": steps, "subset": subset, "lora": lora, "steer": opts.steer, "seed": seed},
                          force=force, callbacks=callbacks)


def relearn_attack(model: str, out: str | Path, plan: RelearnPlan, cfg: RunConfig, evaluate, *, scored: int,
                   train_pairs: int, record: dict, force: bool = False, callbacks: list | tuple = ()) -> dict:
    """Steps 2-4 of the attack, whatever the data's layout: ``evaluate(model folder, results file)`` scores the
    held-out profiles (results on rank 0, None elsewhere) before and after ``cfg``'s fine-tuning. ``record``
    (the attack's settings) goes into ``relearn.json`` with the plan, the scores and ``recovery`` (forget split)."""
    out = Path(out).expanduser()
    out.mkdir(parents=True, exist_ok=True)
    if int(os.environ.get("RANK", "0")) == 0:  # every rank plans the same split; one writes it
        write_json_atomic(out / "plan.json", {"attacked": plan.attacked, "held_out": plan.held_out,
                                              "train_pairs": train_pairs, "scored_questions": scored,
                                              "subset": record.get("subset"), "seed": record.get("seed")})
    print(f"[relearn] {len(plan.attacked)} forget profiles attacked ({train_pairs} pairs), {len(plan.held_out)} "
          f"held out ({scored} questions scored)", flush=True)
    before = evaluate(model, out / "before.json")
    train(cfg, force=force, callbacks=callbacks)
    after = evaluate(str(out / "attack" / "model"), out / "after.json")
    if before is None or after is None:
        return {}  # ranks other than 0 of a distributed run: the results are gathered on rank 0
    splits = [s for s in split_results(before) if s in after]
    result = {"model": str(model), "plan": {"attacked": plan.attacked, "held_out": plan.held_out}, **record,
              "before": {s: before[s] for s in splits}, "after": {s: after[s] for s in splits},
              "recovery": recovery(before, after)}
    write_json_atomic(out / "relearn.json", result)
    return result


def run_people_relearn(model: str, people, steps: int, subset: float, out: str | Path, *, config: str,
                       overrides: list[str] = (), lora: bool = False, lr: float | None = None, seed: int = 0,
                       opts=None, force: bool = False, callbacks: list | tuple = ()) -> dict:
    """The attack on a people folder (``data.people.People``): the forget file's people are split as above,
    the attacked ones' forget pairs fitted (``config`` with ``overrides``, reading the folder as JSONL), the
    held-out ones' forget pairs and forget probes scored before and after."""
    from vgid_dist.eval.people import evaluate_people, people_items

    if steps < 1:
        raise RelearnError(f"relearning attack: {steps} steps; expected >= 1")
    opts = opts or EvalOptions(seed=seed)
    plan = split_forget_profiles(people.ids["forget"], subset, seed)
    attacked, held = set(plan.attacked), set(plan.held_out)
    splits = tuple(s for s in ("forget", "forget_probes") if s in people.splits)
    pairs = [q for q in people.questions if q.split == "forget" and q.person in attacked]
    items, _ = people_items(people, splits, held)
    check_disjoint(pairs, items, key="person")
    cfg = attack_config(config, ["data.format=jsonl", *overrides], model=model, data_root=str(people.root),
                        forget_ratio=5, attacked=plan.attacked, steps=steps, seed=seed,
                        out=Path(out).expanduser() / "attack", lora=lora, lr=lr, batch_size=None)

    def evaluate(model_path: str, out_file: Path) -> dict | None:
        return evaluate_people(model_path, people.root, out_file, opts=opts, splits=splits, persons=held,
                               people=people, dtype=cfg.model.dtype, attention=cfg.model.attention,
                               progress=False)

    return relearn_attack(model, out, plan, cfg, evaluate, scored=len(items), train_pairs=len(pairs),
                          record={"steps": steps, "subset": subset, "lora": lora, "seed": seed},
                          force=force, callbacks=callbacks)
