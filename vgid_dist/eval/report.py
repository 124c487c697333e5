"""Paper-style reporting from results: Table 3 as Markdown and the forgetting/utility trade-off figure."""

from __future__ import annotations

from pathlib import Path

# (split, metric, desired direction) in the paper's Table 3 column order.
TABLE3_COLUMNS = [
    ("forget", "cloze_acc", "down"), ("forget", "class_acc", "down"), ("forget", "gen_rougeL", "down"),
    ("test", "cloze_acc", "down"), ("test", "class_acc", "down"), ("test", "gen_rougeL", "down"),
    ("retain", "cloze_acc", "up"), ("retain", "class_acc", "up"), ("retain", "gen_rougeL", "up"),
    ("celebrity", "cloze_acc", "up"), ("celebrity", "class_acc", "up"), ("celebrity", "gen_rougeL", "up"),
]
SHORT = {"cloze_acc": "Cloze", "class_acc": "Class", "gen_rougeL": "Gen RL", "gen_bleu": "Gen BLEU"}
ARROW = {"down": "\u2193", "up": "\u2191"}


def fmt(metric: str, value: float | None) -> str:
    if value is None:
        return "-"
    return f"{100 * value:.2f}%" if metric.endswith("_acc") else f"{value:.3f}"


def table3_markdown(results: dict[str, dict], title: str | None = None) -> str:
    """Rows = methods (in the given order), columns = split x task with the desired direction."""
    columns = [c for c in TABLE3_COLUMNS if any(c[1] in r.get(c[0], {}) for r in results.values())]
    head = "| Method | " + " | ".join(f"{split} {SHORT[m]} {ARROW[d]}" for split, m, d in columns) + " |"
    rule = "|---|" + "---|" * len(columns)
    lines = ([f"**{title}**", ""] if title else []) + [head, rule]
    for name, res in results.items():
        cells = [fmt(m, res.get(split, {}).get(m)) for split, m, _ in columns]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def format_split_table(results: dict[str, dict]) -> str:
    """A compact console table: one row per (name, split), the four metrics as columns."""
    metrics = ("gen_rougeL", "gen_bleu", "class_acc", "cloze_acc")
    lines = [f"{'model':<12} {'split':<10} " + " ".join(f"{m:>10}" for m in metrics)]
    for name, res in results.items():
        for split in ("forget", "test", "retain", "celebrity"):
            if split not in res:
                continue
            lines.append(f"{name:<12} {split:<10} " + " ".join(
                f"{res[split][m]:>10.3f}" if m in res[split] else f"{'-':>10}" for m in metrics))
    return "\n".join(lines)


def tradeoff_figure(results: dict[str, dict], path: Path, *, base: str = "base", metric: str = "gen_rougeL") -> Path:
    """x = reduction of forget-set ``metric`` relative to the base model, y = retain-set ``metric``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    base_forget = results[base]["forget"][metric]
    fig, ax = plt.subplots(figsize=(5.5, 4.2), dpi=120)
    for name, res in results.items():
        if metric not in res.get("forget", {}) or metric not in res.get("retain", {}):
            continue
        x, y = base_forget - res["forget"][metric], res["retain"][metric]
        ax.scatter([x], [y], s=40, zorder=3, marker="*" if name == "vgid" else "o")
        ax.annotate(name, (x, y), textcoords="offset points", xytext=(5, 4), fontsize=8)
    label = SHORT.get(metric, metric)
    ax.set_xlabel(f"forget-set {label} reduction vs {base} (\u2192 more forgetting)")
    ax.set_ylabel(f"retain-set {label} (\u2191 more utility)")
    ax.grid(True, alpha=0.3)
    ax.set_title("Unlearning completeness vs model utility")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path


def write_report(results: dict[str, dict], out_dir: Path, *, title: str | None = None) -> str:
    """table3.md and tradeoff.png in ``out_dir``; returns the Markdown table."""
    table = table3_markdown(results, title)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "table3.md").write_text(table + "\n")
    if "base" in results:
        tradeoff_figure(results, out_dir / "tradeoff.png")
    return table
