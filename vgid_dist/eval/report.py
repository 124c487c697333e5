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
         "class_acc_logits": "Class (logits)"}
ARROW = {"down": "\u2193", "up": "\u2191"}

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


def fmt(metric: str, value: float | None) -> str:
    if value is None:
        return "-"
    return f"{100 * value:.2f}%" if "_acc" in metric else f"{value:.3f}"


def _header(name: str, columns, prefix: str = "") -> list[str]:
    cells = [f"{prefix}{split.capitalize()} {SHORT[m]} {ARROW[d]}" for split, m, d in columns]
    return [f"| {name} | " + " | ".join(cells) + " |", "|---|" + "---|" * len(columns)]


def table3_markdown(results: Mapping[str, Source], title: str | None = None, *, celebrity: bool = False) -> str:
    """The paper's Table 3: rows = methods (in the given order), columns = forget / test / retain set x
    cloze accuracy, classification accuracy, generation ROUGE-L, each with the desired direction
    (``celebrity=True`` appends the celebrity set). Columns no result has are left out (a table of forget/test
    results only has six); a value missing from one result prints as ``-``."""
    loaded = load_results(results)
    columns = [c for c in TABLE3_COLUMNS + (CELEBRITY_COLUMNS if celebrity else [])
               if any(c[1] in (r.get(c[0]) or {}) for r in loaded.values())]
    lines = ([f"**{title}**", ""] if title else []) + _header("Method", columns)
    for name, res in loaded.items():
        cells = [fmt(m, (res.get(split) or {}).get(m)) for split, m, _ in columns]
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
        cells = [fmt(m, (loaded.get(setting, {}).get(split) or {}).get(m)) for setting, (split, m, _) in columns]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def format_split_table(results: Mapping[str, Source]) -> str:
    """A compact console table: one row per (name, split), the metrics as columns."""
    loaded = load_results(results)
    optional = ("class_acc_lenient", "class_acc_logits")  # shown when a result has them
    metrics = [m for m in ("gen_rougeL", "gen_bleu", "class_acc", "class_acc_lenient", "cloze_acc", "class_acc_logits")
               if m not in optional or any(m in (res.get(s) or {}) for res in loaded.values() for s in SPLITS)]
    lines = [f"{'model':<12} {'split':<10} " + " ".join(f"{m:>17}" for m in metrics)]
    for name, res in loaded.items():
        for split in SPLITS:
            if split not in res:
                continue
            lines.append(f"{name:<12} {split:<10} " + " ".join(
                f"{res[split][m]:>17.3f}" if m in res[split] else f"{'-':>17}" for m in metrics))
    return "\n".join(lines)


TYPE_COLUMNS = (("class_acc", "class %"), ("class_acc_lenient", "class lenient %"), ("cloze_acc", "cloze %"),
                ("gen_rougeL", "gen ROUGE-L"), ("gen_bleu", "gen BLEU"))


def format_type_table(results: Mapping) -> str:
    """The official evaluator's figures: one row per (split, question type), accuracies in %, ROUGE-L and
    BLEU as fractions (from ``results["by_type"]``)."""
    by_type = results.get("by_type") or {}
    head = f"{'split':<10} {'type':<14} " + " ".join(f"{label:>15}" for _, label in TYPE_COLUMNS)
    lines = [head]
    for split in SPLITS:
        for qtype in QUESTION_TYPES:
            values = (by_type.get(split) or {}).get(qtype)
            if values is None:
                continue
            cells = []
            for metric, _ in TYPE_COLUMNS:
                v = values.get(metric)
                cells.append(f"{'-':>15}" if v is None else
                             f"{100 * v:>15.2f}" if "_acc" in metric else f"{v:>15.3f}")
            lines.append(f"{split:<10} {qtype:<14} " + " ".join(cells))
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
    """The trade-off scatter as a PNG: one point per method (see ``tradeoff_points``)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    points = tradeoff_points(results, base=base, metric=metric)
    fig, ax = plt.subplots(figsize=(5.5, 4.2), dpi=120)
    for name, (x, y) in points.items():
        ax.scatter([x], [y], s=60 if name.lower() == "vgid" else 40, zorder=3,
                   marker="*" if name.lower() == "vgid" else "o")
        ax.annotate(name, (x, y), textcoords="offset points", xytext=(5, 4), fontsize=8)
    label = SHORT.get(metric, metric)
    ax.set_xlabel(f"forget-set {label} reduction vs {base} (\u2192 more forgetting)")
    ax.set_ylabel(f"retain-set {label} (\u2191 more utility)")
    ax.grid(True, alpha=0.3)
    ax.set_title("Unlearning completeness vs model utility")
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path


def write_report(results: Mapping[str, Source], out_dir: Path, *, title: str | None = None) -> str:
    """table3.md and (when a ``base`` entry is present) tradeoff.png in ``out_dir``; returns the table."""
    loaded = load_results(results)
    table = table3_markdown(loaded, title)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "table3.md").write_text(table + "\n")
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
