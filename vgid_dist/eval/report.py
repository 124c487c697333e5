"""Paper-style reporting from results: Table 3 and Table 6 as Markdown and the forgetting/utility trade-off
figure (the paper's Figure 4 axes).

Every function takes ``{name: results}`` where results is an evaluation results dict or the path of a results
JSON written by ``vgid eval`` (``{split: {metric: value}, ...}``). From the command line::

    python -m vgid_dist.eval.report base=eval/base.json vgid=eval/vgid.json --out report/
    python -m vgid_dist.eval.report --table6 base=b.json base+reverse=b_rev.json icu=i.json icu+reverse=i_rev.json
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Mapping
from pathlib import Path

from vgid_dist.errors import ConfigError, DataError
from vgid_dist.vocab import QUESTION_TYPES, SPLITS

# (split, metric, desired direction) in the paper's Table 3 column order.
TABLE3_COLUMNS = [
    ("forget", "cloze_acc", "down"), ("forget", "class_acc", "down"), ("forget", "gen_rougeL", "down"),
    ("test", "cloze_acc", "down"), ("test", "class_acc", "down"), ("test", "gen_rougeL", "down"),
    ("retain", "cloze_acc", "up"), ("retain", "class_acc", "up"), ("retain", "gen_rougeL", "up"),
]
CELEBRITY_COLUMNS = [("celebrity", "cloze_acc", "up"), ("celebrity", "class_acc", "up"),
                     ("celebrity", "gen_rougeL", "up")]
TABLE6_COLUMNS = TABLE3_COLUMNS[:6]  # forget and test sets
ATTACK_SETTINGS = (("w/o", "w/o reverse attack"), ("w/", "w/ reverse attack"))
SHORT = {"cloze_acc": "Cloze", "class_acc": "Class", "gen_rougeL": "Gen RL", "gen_bleu": "Gen BLEU",
         "class_acc_logits": "Class (logits)", "class_acc_lenient": "Class lenient"}
ARROW = {"down": "\u2193", "up": "\u2191"}
# Forgetting shows as lower scores on the forget and test sets; utility as scores kept on retain and celebrity.
SPLIT_DIRECTION = {"forget": "down", "test": "down", "retain": "up", "celebrity": "up"}
HOW_TO_READ = ("Accuracies: % (correct/asked). ROUGE-L: mean over n answers. \u2193 lower is better (the "
               "forget and test sets: forgotten), \u2191 higher is better (the retain and celebrity sets: kept). On a "
               "split of n questions one answer moves an accuracy by 1/n.")

Source = Mapping | str | Path


def load_results(sources: Mapping[str, Source]) -> dict[str, dict]:
    """``{name: results dict}`` from ``{name: results dict or path of a results JSON}``, order kept."""
    out: dict[str, dict] = {}
    for name, src in sources.items():
        if isinstance(src, Mapping):
            out[name] = dict(src)
            continue
        path = Path(src)
        try:
            data = json.loads(path.read_text())
        except FileNotFoundError:
            raise DataError(f"{path}: results file of {name!r} not found") from None
        except json.JSONDecodeError as exc:
            raise DataError(f"{path}: not valid JSON ({exc})") from None
        if not isinstance(data, dict) or not any(s in data for s in SPLITS):
            raise DataError(f"{path}: expected an evaluation results JSON with splits {SPLITS} at the top level")
        out[name] = data
    return out


def fmt(metric: str, value: float | None, count: int | None = None) -> str:
    """``87.50% (7/8)``: an accuracy with the questions answered right and asked; ``0.903 (n=12)``: a mean
    score with the number of answers it averages; the value alone when the count is unknown; ``-`` when the
    value is missing."""
    if value is None:
        return "-"
    if "_acc" in metric:
        return f"{100 * value:.2f}%" + (f" ({round(value * count)}/{count})" if count else "")
    return f"{value:.3f}" + (f" (n={count})" if count else "")


def score_cell(results: Mapping, split: str, metric: str) -> str:
    """``fmt`` of ``results[split][metric]`` with its count from ``results["counts"]`` when recorded."""
    value = (results.get(split) or {}).get(metric)
    return fmt(metric, value, ((results.get("counts") or {}).get(split) or {}).get(metric))


def _header(name: str, columns, prefix: str = "") -> list[str]:
    cells = [f"{prefix}{split.capitalize()} {SHORT[m]} {ARROW[d]}" for split, m, d in columns]
    return [f"| {name} | " + " | ".join(cells) + " |", "|---|" + "---|" * len(columns)]


def table3_markdown(results: Mapping[str, Source], title: str | None = None, *, celebrity: bool = True) -> str:
    """The paper's Table 3: rows = methods (in the given order), columns = forget / test / retain set x
    cloze accuracy, classification accuracy, generation ROUGE-L, each with the desired direction, then the
    celebrity set (``celebrity=False`` leaves it out, as the paper does). Every value carries its count when the
    results record it (``fmt``). Columns no result has are left out (a table of forget/test results only has
    six); a value missing from one result prints as ``-``."""
    loaded = load_results(results)
    columns = [c for c in TABLE3_COLUMNS + (CELEBRITY_COLUMNS if celebrity else [])
               if any(c[1] in (r.get(c[0]) or {}) for r in loaded.values())]
    lines = ([f"**{title}**", ""] if title else []) + _header("Method", columns)
    for name, res in loaded.items():
        cells = [score_cell(res, split, m) for split, m, _ in columns]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def table6_markdown(rows: Mapping[str, Mapping[str, Source]], title: str | None = None) -> str:
    """The paper's Table 6 (robustness to the reverse-engineering attack): rows = interventions (Base, ICU,
    VGID, ...), columns = forget / test set x the three tasks, without and then with the attack.

    ``rows``: ``{name: {"w/o": results, "w/": results}}`` (results dicts or paths; a missing setting prints
    ``-``): e.g. ``{"Base": {"w/o": "base.json", "w/": "base_reverse.json"}, "ICU": ...}``."""
    columns = [(setting, col) for setting, _ in ATTACK_SETTINGS for col in TABLE6_COLUMNS]
    head = "| Intervention | " + " | ".join(
        f"{setting} attack: {split.capitalize()} {SHORT[m]} {ARROW[d]}" for setting, (split, m, d) in columns) + " |"
    lines = ([f"**{title}**", ""] if title else []) + [head, "|---|" + "---|" * len(columns)]
    for name, settings in rows.items():
        unknown = set(settings) - {s for s, _ in ATTACK_SETTINGS}
        if unknown:
            raise ConfigError(f"row {name!r}: unknown attack setting(s) {sorted(unknown)}; expected 'w/o' and 'w/'")
        loaded = load_results(settings)
        cells = [score_cell(loaded.get(setting, {}), split, m) for setting, (split, m, _) in columns]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


SPLIT_TABLE_METRICS = ("cloze_acc", "class_acc", "class_acc_lenient", "class_acc_logits", "gen_rougeL", "gen_bleu")


def format_split_table(results: Mapping[str, Source], metrics: tuple[str, ...] = SPLIT_TABLE_METRICS) -> str:
    """A console table: one row per (split, name), the names of one split together so that they compare, the
    desired direction beside the split, ``metrics`` as columns (those no result has are left out), every value
    with its count (``fmt``)."""
    loaded = load_results(results)
    shown = [m for m in metrics if any(m in (res.get(s) or {}) for res in loaded.values() for s in SPLITS)]
    cells = {(name, split): [score_cell(res, split, m) for m in shown]
             for split in SPLITS for name, res in loaded.items() if split in res}
    width = max([len(SHORT[m]) for m in shown] + [len(c) for row in cells.values() for c in row] + [1])
    name_width = max([len(n) for n in loaded] + [6])
    lines = [f"{'split':<11} {'model':<{name_width}}  " + "  ".join(f"{SHORT[m]:>{width}}" for m in shown)]
    for (name, split), row in cells.items():
        label = f"{split} {ARROW[SPLIT_DIRECTION[split]]}"
        lines.append(f"{label:<11} {name:<{name_width}}  " + "  ".join(f"{c:>{width}}" for c in row))
    return "\n".join(lines)


TYPE_COLUMNS = (("class_acc", "class %"), ("class_acc_lenient", "class lenient %"), ("cloze_acc", "cloze %"),
                ("gen_rougeL", "gen ROUGE-L"), ("gen_bleu", "gen BLEU"))


def format_type_table(results: Mapping) -> str:
    """The official evaluator's figures: one row per (split, question type), accuracies in %, ROUGE-L and
    BLEU as fractions (from ``results["by_type"]``), each with its count (``results["by_type_counts"]``)."""
    by_type = results.get("by_type") or {}
    type_counts = results.get("by_type_counts") or {}
    head = f"{'split':<10} {'type':<14} " + " ".join(f"{label:>17}" for _, label in TYPE_COLUMNS)
    lines = [head]
    for split in SPLITS:
        for qtype in QUESTION_TYPES:
            values = (by_type.get(split) or {}).get(qtype)
            if values is None:
                continue
            counts = (type_counts.get(split) or {}).get(qtype) or {}
            cells = [fmt(metric, values.get(metric), counts.get(metric)).replace("%", "")
                     for metric, _ in TYPE_COLUMNS]
            lines.append(f"{split:<10} {qtype:<14} " + " ".join(f"{c:>17}" for c in cells))
    return "\n".join(lines)


def tradeoff_points(results: Mapping[str, Source], *, base: str = "base",
                    metric: str = "gen_rougeL") -> dict[str, tuple[float, float]]:
    """``{name: (x, y)}``: x = base forget-set ``metric`` minus the method's (the reduction), y = the method's
    retain-set ``metric``. Methods lacking either value are left out."""
    loaded = load_results(results)
    if base not in loaded:
        raise ConfigError(f"the trade-off needs the base model's results under {base!r}; got {sorted(loaded)}")
    base_forget = (loaded[base].get("forget") or {}).get(metric)
    if base_forget is None:
        raise DataError(f"results {base!r} have no forget-set {metric}")
    points = {}
    for name, res in loaded.items():
        forget, retain = (res.get("forget") or {}).get(metric), (res.get("retain") or {}).get(metric)
        if forget is not None and retain is not None:
            points[name] = (base_forget - forget, retain)
    return points


def tradeoff_figure(results: Mapping[str, Source], path: Path, *, base: str = "base",
                    metric: str = "gen_rougeL") -> Path:
    """The trade-off scatter as a PNG: one point per method (see ``tradeoff_points``) on the metric's whole
    range, so that the distances read true: y from 0 to 1, x from 0 (or below, for a method that raised the
    forget score) to 1. Every method is in the legend with its (x, y), so that points on top of each other
    stay told apart; a method without both values is named under the plot instead. Dashed lines: the base
    model's retain score, and the largest reduction possible (the base model's forget score, down to 0)."""
    import math

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    loaded = load_results(results)
    points = tradeoff_points(loaded, base=base, metric=metric)
    missing = [name for name in loaded if name not in points]
    rows = math.ceil(len(points) / 2)
    fig, ax = plt.subplots(figsize=(6.4, 4.6 + 0.2 * rows), dpi=120)
    colours = plt.get_cmap("tab10").colors
    markers = "os^vDP<>hX"
    for i, (name, (x, y)) in enumerate(points.items()):
        star = name.lower() == "vgid"
        # Colour and marker together tell up to 100 methods apart.
        marker = "*" if star else markers[(i + i // len(colours)) % len(markers)]
        ax.scatter([x], [y], s=130 if star else 45, zorder=3, marker=marker,
                   color=colours[i % len(colours)], label=f"{name} ({x:.3f}, {y:.3f})",
                   edgecolors="black", linewidths=0.4)
    base_forget = (loaded[base].get("forget") or {})[metric]
    ax.axvline(base_forget, color="grey", linestyle="--", linewidth=0.8)
    if base in points:
        ax.axhline(points[base][1], color="grey", linestyle=":", linewidth=0.8)
    ax.set_xlim(min([0.0] + [x for x, _ in points.values()]) - 0.05, max(1.0, base_forget + 0.02))
    ax.set_ylim(0.0, 1.0)
    label = SHORT.get(metric, metric)
    ax.set_xlabel(f"forget-set {label} reduction vs {base} (\u2192 more forgetting; dashed: all forgotten)",
                  fontsize=8.5)
    ax.set_ylabel(f"retain-set {label} (\u2191 more utility; dotted: {base})", fontsize=8.5)
    ax.grid(True, alpha=0.3)
    ax.set_title("Unlearning completeness vs model utility")
    if points:
        ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.14), ncol=2, fontsize=8, frameon=False,
                  title="method (reduction, retain)", title_fontsize=8)
    if missing:
        fig.text(0.01, 0.005, f"not plotted (no forget or retain {label}): {', '.join(missing)}", fontsize=7)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path


def write_report(results: Mapping[str, Source], out_dir: Path, *, title: str | None = None) -> str:
    """table3.md (the table, then how to read it) and, when a ``base`` entry is present, tradeoff.png in
    ``out_dir``; returns the table."""
    loaded = load_results(results)
    table = table3_markdown(loaded, title)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "table3.md").write_text(f"{table}\n\n{HOW_TO_READ}\n")
    if "base" in loaded:
        tradeoff_figure(loaded, out_dir / "tradeoff.png")
    return table


def _named(pairs: list[str]) -> dict[str, str]:
    out = {}
    for pair in pairs:
        name, sep, path = pair.partition("=")
        if not sep or not name or not path:
            raise SystemExit(f"error: expected NAME=RESULTS.json, got {pair!r}")
        out[name] = path
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m vgid_dist.eval.report",
                                     description="Table 3 / Table 6 Markdown and the trade-off figure")
    parser.add_argument("results", nargs="+", help="NAME=RESULTS.json, in row order (a row named 'base' is the "
                                                   "trade-off reference); with --table6 NAME+reverse=... is the "
                                                   "attacked run of NAME")
    parser.add_argument("--out", default=None, help="folder for table3.md and tradeoff.png")
    parser.add_argument("--table6", action="store_true", help="print Table 6 (reverse attack) instead")
    parser.add_argument("--title", default=None)
    args = parser.parse_args(argv)
    named = _named(args.results)
    if args.table6:
        rows: dict[str, dict[str, str]] = {}
        for name, path in named.items():
            row, attacked = (name[: -len("+reverse")], True) if name.endswith("+reverse") else (name, False)
            rows.setdefault(row, {})["w/" if attacked else "w/o"] = path
        print(table6_markdown(rows, args.title))
        return 0
    if args.out:
        print(write_report(named, Path(args.out), title=args.title))
        if "base" in named:
            print(f"figure: {Path(args.out) / 'tradeoff.png'}")
    else:
        print(table3_markdown(named, args.title))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
