"""``vgid report``: the paper's tables and trade-off figures from the runs of an MLflow experiment.

Rows come from FINISHED training runs (tags ``model``, ``forget_ratio``, ``method``; metrics ``forget/...``);
several seeds of a cell are averaged, and of several runs of one seed the newest counts. The Base and ICU rows
come from the reference evaluations on the sweep's parent run (``ref/<model>/fr<ratio>/<name>/...``).

Written to the output folder:
  table3.md                           one Table 3 per model and forget ratio
  table6.md                           without and with the attack, forget and test sets (when attack results exist)
  relearn.md                          relearning attack: held-out forget profiles before -> after (when run)
  tradeoff-<model>-fr<ratio>.png      forgetting vs utility (when a Base row exists)
  results.json                        {model: {forget_ratio: {row: {split: {metric: value}}}}}
"""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path
from typing import Any

from vgid_dist.errors import TrackingError
from vgid_dist.eval.report import table3_markdown, table6_markdown, tradeoff_figure
from vgid_dist.tracking import KIND_TAG, RunRecord, Tracker
from vgid_dist.tracking.names import COUNT_KEY
from vgid_dist.vocab import METRICS, SPLITS

# Table 3's row order in the paper; other methods follow alphabetically.
ROW_ORDER = ["base", "icu", "ga", "ga_diff", "kl_min", "po", "npo", "rmu", "icu_t", "noise_t", "vgid", "vkd",
             "mllmeraser"]
PLAIN = ""  # the evaluation without attack


def parse_eval_key(key: str) -> tuple[str, str, str] | None:
    """``forget/gen_rougeL`` -> ("", "forget", "gen_rougeL"); ``reverse/forget/gen_rougeL`` -> ("reverse",
    "forget", "gen_rougeL"); a question count (``forget/count/gen_rougeL``, ``reverse/forget/count/...``) ->
    the same with the metric ``count/gen_rougeL``; per-question-type keys (``forget/Pure_Text/...``) and others
    -> None."""
    parts = key.split("/")
    attack = PLAIN if parts[0] in SPLITS else parts[0]
    rest = parts if attack == PLAIN else parts[1:]
    if attack == "train" or not rest or rest[0] not in SPLITS:
        return None
    if len(rest) == 2:
        return attack, rest[0], rest[1]
    if len(rest) == 3 and rest[1] == COUNT_KEY:
        return attack, rest[0], f"{COUNT_KEY}/{rest[2]}"
    return None


def _put(results: dict, split: str, metric: str, value: float) -> None:
    """A score into ``results[split]``, a question count (``count/<metric>``) into ``results["counts"][split]``."""
    if metric.startswith(f"{COUNT_KEY}/"):
        results.setdefault("counts", {}).setdefault(split, {})[metric.split("/", 1)[1]] = int(value)
    else:
        results.setdefault(split, {})[metric] = value


def _nest(metrics: dict[str, float]) -> dict[str, dict[str, dict[str, float]]]:
    """{attack: {split: {metric: value}, "counts": {split: {metric: n}}}} of one run's evaluation metrics."""
    out: dict = defaultdict(dict)
    for key, value in metrics.items():
        parsed = parse_eval_key(key)
        if parsed is not None:
            attack, split, metric = parsed
            _put(out[attack], split, metric, value)
    return dict(out)


def _mean(results: list[dict]) -> dict:
    """Element-wise mean of {split: {metric: value}} dicts (seeds of one cell); the question counts of the
    seeds are summed (the mean is over all of them)."""
    acc: dict = defaultdict(lambda: defaultdict(list))
    counts: dict = defaultdict(lambda: defaultdict(int))
    for res in results:
        for split, metrics in res.items():
            if split == "counts":
                for count_split, per_metric in metrics.items():
                    for metric, n in per_metric.items():
                        counts[count_split][metric] += n
                continue
            for metric, value in metrics.items():
                acc[split][metric].append(value)
    out: dict = {s: {m: sum(v) / len(v) for m, v in ms.items()} for s, ms in acc.items()}
    if counts:
        out["counts"] = {s: dict(ms) for s, ms in counts.items()}
    return out


def collect(runs: list[RunRecord]) -> dict[tuple[str, int], dict[str, dict[str, dict]]]:
    """{(model, forget_ratio): {attack: {row: {split: {metric: value}}}}}."""
    newest: dict[tuple, RunRecord] = {}
    for run in runs:
        t = run.tags
        if run.status != "FINISHED" or t.get(KIND_TAG, "train") != "train" or not {"model", "forget_ratio",
                                                                                     "method"} <= t.keys():
            continue
        key = (t["model"], int(t["forget_ratio"]), t["method"], t.get("seed", ""))
        if key not in newest or run.start_time > newest[key].start_time:
            newest[key] = run
    per_cell: dict = defaultdict(lambda: defaultdict(list))
    for (model, ratio, method, _), run in newest.items():
        for attack, res in _nest(run.metrics).items():
            per_cell[(model, ratio, attack)][method].append(res)
    table: dict = defaultdict(lambda: defaultdict(dict))
    for (model, ratio, attack), methods in per_cell.items():
        for method, results in methods.items():
            table[(model, ratio)][attack][method] = _mean(results)

    # Reference rows from sweep parents, newest parent first so it wins.
    parents = sorted((r for r in runs if r.tags.get(KIND_TAG) == "sweep"), key=lambda r: r.start_time)
    for run in parents:
        for key, value in run.metrics.items():
            parts = key.split("/")
            if parts[0] != "ref" or len(parts) < 6 or not parts[2].startswith("fr"):
                continue
            parsed = parse_eval_key("/".join(parts[4:]))
            if parsed is not None:
                model, ratio, name = parts[1], int(parts[2][2:]), parts[3]
                attack, split, metric = parsed
                _put(table[(model, ratio)][attack].setdefault(name, {}), split, metric, value)
    return {k: {a: dict(rows) for a, rows in v.items()} for k, v in table.items()}


# Evaluations logged by the relearning attack (cluster.tasks.CellTask._relearn): not attacks of Table 6.
RELEARN_BEFORE, RELEARN_AFTER = "relearn_before", "relearn_after"


def relearn_markdown(before: dict[str, dict], after: dict[str, dict], title: str) -> str:
    """Rows = methods; per metric, the held-out forget profiles' score before -> after the attack (recovery).
    ``before``/``after``: {row: {"forget": {metric: value}}}."""
    lines = [f"**{title}**", "", "| Method | " + " | ".join(METRICS) + " |",
             "|---|" + "---|" * len(METRICS)]
    for row in ordered(after):
        b, a = before.get(row, {}).get("forget", {}), after[row].get("forget", {})
        cells = [f"{b[m]:.3f} -> {a[m]:.3f} ({a[m] - b[m]:+.3f})" if m in a and m in b else "-"
                 for m in METRICS]
        lines.append(f"| {row} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def ordered(rows: dict[str, Any]) -> dict[str, Any]:
    known = [r for r in ROW_ORDER if r in rows]
    return {r: rows[r] for r in known + sorted(set(rows) - set(known))}


def build_report(tracker: Tracker, experiment: str, out_dir: Path) -> list[Path]:
    """Write the tables and figures of ``experiment``; returns the files written."""
    exp_id = tracker.experiment_id(experiment, create=False)
    if exp_id is None:
        names = sorted(e.name for e in tracker.client.search_experiments())
        raise TrackingError(f"{tracker.uri}: no experiment {experiment!r} (experiments: {', '.join(names) or 'none'})")
    data = collect(tracker.runs(exp_id))
    if not data:
        raise TrackingError(f"{tracker.uri}: experiment {experiment!r} has no finished run with evaluation "
                            "metrics (forget/..., from eval.at_end) yet")
    return write_report_files(data, experiment, out_dir)


def write_report_files(data: dict[tuple[str, int], dict[str, dict[str, dict]]], experiment: str,
                       out_dir: Path) -> list[Path]:
    """The files of ``build_report`` from collected results; returns the files written."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    t3, t6 = [f"# {experiment}: Table 3", ""], [f"# {experiment}: Table 6 (attacks)", ""]
    relearn = [f"# {experiment}: relearning attack (held-out forget profiles, before -> after)", ""]
    for model, ratio in sorted(data):
        by_attack = data[(model, ratio)]
        plain = ordered(by_attack.get(PLAIN, {}))
        if plain:
            t3 += [table3_markdown(plain, title=f"{model}, forget {ratio}%"), ""]
            if "base" in plain and "forget" in plain["base"] and "gen_rougeL" in plain["base"]["forget"]:
                written.append(tradeoff_figure(plain, out_dir / f"tradeoff-{model}-fr{ratio}.png"))
        if RELEARN_AFTER in by_attack:
            relearn += [relearn_markdown(by_attack.get(RELEARN_BEFORE, {}), by_attack[RELEARN_AFTER],
                                         f"{model}, forget {ratio}%"), ""]
        for attack in sorted(a for a in by_attack if a not in (PLAIN, RELEARN_BEFORE, RELEARN_AFTER)):
            # Rows that were evaluated under the attack, each beside its evaluation without it.
            rows = {r: {"w/o": plain.get(r, {}), "w/": res} for r, res in ordered(by_attack[attack]).items()}
            t6 += [table6_markdown(rows, title=f"{model}, forget {ratio}% ({attack} attack)"), ""]
    (out_dir / "table3.md").write_text("\n".join(t3))
    written.insert(0, out_dir / "table3.md")
    if len(t6) > 2:
        (out_dir / "table6.md").write_text("\n".join(t6))
        written.insert(1, out_dir / "table6.md")
    if len(relearn) > 2:
        (out_dir / "relearn.md").write_text("\n".join(relearn))
        written.insert(1, out_dir / "relearn.md")
    serial = {m: {} for m, _ in data}
    for (model, ratio), by_attack in data.items():
        serial[model][str(ratio)] = {a or "plain": ordered(rows) for a, rows in by_attack.items()}
    (out_dir / "results.json").write_text(json.dumps(serial, indent=2, sort_keys=True))
    written.append(out_dir / "results.json")
    return written
