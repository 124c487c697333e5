"""The deletion audit's report: ``audit.json`` (everything), ``audit.md`` and a self-contained ``audit.html``
(before/after per split and per person, the trade-off figure, attack recovery, the exact configuration, model
and data hashes), written from the audit dict that ``cluster.forget`` assembles. None of them is ever
overwritten."""

from __future__ import annotations

import base64
import hashlib
import html
import io
from pathlib import Path

from vgid_dist.errors import RunExistsError
from vgid_dist.io import write_json_atomic, write_text_atomic

AUDIT_FILES = ("audit.json", "audit.md", "audit.html")
SPLIT_METRICS = ("fact_recall", "gen_rougeL", "gen_bleu", "class_acc")
PERSON_METRICS = ("fact_recall", "gen_rougeL")
ATTACK_METRICS = ("fact_recall", "gen_rougeL", "class_acc")
ATTACKS_TEXT = ("reverse: the unlearned model asked each question with the reverse-engineering prompt after it "
                "(start: the same questions without it). relearn: the unlearned model fine-tuned on some forgotten "
                "people's pairs, the other forgotten people's questions scored before and after. Recovery = "
                "attacked - start.")


# ---- provenance -------------------------------------------------------------------------------------------------

def digest_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def digest_files(files: dict[str, Path]) -> dict:
    """``{"sha256": one digest over (name, file digest) in name order, "files": {name: sha256}, "bytes": n}``."""
    digests = {name: digest_file(path) for name, path in sorted(files.items())}
    total = hashlib.sha256("".join(f"{name}\0{d}\n" for name, d in digests.items()).encode()).hexdigest()
    return {"sha256": total, "files": digests, "bytes": sum(Path(p).stat().st_size for p in files.values())}


def digest_folder(folder: Path) -> dict:
    """The digest of every file under ``folder`` (a model), named by its path inside it."""
    folder = Path(folder)
    files = {str(p.relative_to(folder)): p for p in folder.rglob("*") if p.is_file()}
    out = digest_files(files)
    return {"path": str(folder.resolve()), "sha256": out["sha256"], "files": len(files), "bytes": out["bytes"]}


def digest_people(people) -> dict:
    """The digest of a people folder: its JSONL files and every image they name."""
    files = {Path(p).name: Path(p) for p in people.files.values()}
    root = Path(people.root).resolve()
    for q in people.questions:
        if q.image is not None and q.image.path:
            path = Path(q.image.path).resolve()
            files[str(path.relative_to(root)) if path.is_relative_to(root) else str(path)] = path
    out = digest_files(files)
    return {"path": str(root), **out}


# ---- content ----------------------------------------------------------------------------------------------------

def by_person(before: dict, after: dict) -> dict:
    """``{split: {person: {"before": metrics, "after": metrics}}}`` from two results' ``by_person``."""
    out: dict = {}
    b, a = before.get("by_person") or {}, after.get("by_person") or {}
    for split in b.keys() | a.keys():
        persons = list(dict.fromkeys([*(b.get(split) or {}), *(a.get(split) or {})]))
        out[split] = {p: {"before": (b.get(split) or {}).get(p, {}), "after": (a.get(split) or {}).get(p, {})}
                      for p in persons}
    return out


def _fmt(value) -> str:
    return "-" if value is None else f"{value:.3f}"


def _change(before, after) -> str:
    if before is None and after is None:
        return "-"
    if before is None or after is None:
        return f"{_fmt(before)} → {_fmt(after)}"
    return f"{before:.3f} → {after:.3f} ({after - before:+.3f})"


def split_rows(audit: dict) -> list[list[str]]:
    rows = []
    for split, values in audit["before"].items():
        after = audit["after"].get(split, {})
        rows.append([split] + [_change(values.get(m), after.get(m)) for m in SPLIT_METRICS])
    return rows


def person_rows(audit: dict, group: str) -> list[list[str]]:
    """One row per person of ``group`` (forget, retain): pairs and probes, before → after."""
    people = audit["by_person"]
    rows = []
    persons = list(dict.fromkeys([*people.get(group, {}), *people.get(f"{group}_probes", {})]))
    for person in persons:
        cells = [person]
        for split in (group, f"{group}_probes"):
            entry = people.get(split, {}).get(person, {"before": {}, "after": {}})
            cells += [_change(entry["before"].get(m), entry["after"].get(m)) for m in PERSON_METRICS]
        rows.append(cells)
    return rows


def attack_rows(audit: dict) -> list[list[str]]:
    """One row per (attack, split): the score it starts from → the score under attack (recovery)."""
    rows = []
    for name, attack in (audit.get("attacks") or {}).items():
        for split, start in (attack.get("before") or {}).items():
            end = (attack.get("after") or {}).get(split, {})
            rows.append([name, split] + [_change(start.get(m), end.get(m)) for m in ATTACK_METRICS])
    return rows


def require_rows(audit: dict) -> list[list[str]]:
    return [[r["condition"], _fmt(r["value"]), "met" if r["met"] else "NOT MET"] for r in audit.get("require") or []]


def verdict(audit: dict) -> str:
    if audit.get("passed") is None:
        return "no bar set (--require)"
    return "bar met" if audit["passed"] else "bar NOT met"


def person_head() -> list[str]:
    return ["person"] + [f"{kind} {m}" for kind in ("pairs", "probes") for m in PERSON_METRICS]


def attack_head() -> list[str]:
    return ["attack", "split"] + [f"{m}: start → attacked (recovery)" for m in ATTACK_METRICS]


# ---- markdown ---------------------------------------------------------------------------------------------------

def _md_table(head: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


def audit_markdown(audit: dict) -> str:
    m, data = audit["model"], audit["data"]
    parts = [f"# Deletion audit: {audit['method']} on {Path(m['path']).name}", "",
             f"**{verdict(audit)}** · {audit['created']} · {audit['people']['forget']} people forgotten, "
             f"{audit['people']['retain']} kept", ""]
    if audit.get("require"):
        parts += ["## The bar", "", _md_table(["condition", "value", ""], require_rows(audit)), ""]
    parts += ["## Before → after, per split", "", _md_table(["split", *SPLIT_METRICS], split_rows(audit)), "",
              "## Attacks on the forgotten people", "", ATTACKS_TEXT, "", _md_table(attack_head(), attack_rows(audit)),
              ""]
    for group in ("forget", "retain"):
        parts += [f"## Per person: {group}", "", _md_table(person_head(), person_rows(audit, group)), ""]
    parts += ["## Provenance", "",
              f"- model: `{m['path']}` sha256 `{m['sha256']}` ({m['files']} files, {m['bytes']} bytes)",
              f"- unlearned model: `{audit['unlearned_model']['path']}` sha256 `{audit['unlearned_model']['sha256']}`",
              f"- data: `{data['path']}` sha256 `{data['sha256']}`"]
    parts += [f"  - `{name}` `{digest}`" for name, digest in data["files"].items()][:50]
    parts += [f"- recipe `{audit['recipe']}`, overrides `{' '.join(audit['overrides']) or '(none)'}`",
              f"- MLflow run: `{(audit.get('mlflow') or {}).get('run_id')}`", "",
              "```yaml", audit["config_yaml"].rstrip(), "```", ""]
    return "\n".join(parts)


# ---- figure and HTML --------------------------------------------------------------------------------------------

def audit_figure(audit: dict, metric: str = "fact_recall") -> bytes:
    """Two panels as PNG bytes: the trade-off (forget-set reduction vs retain-set score, before and after) and
    each person's score before vs after (forgotten people should fall below the diagonal, kept ones on it)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4.2), dpi=110)
    base_forget = audit["before"].get("forget", {}).get(metric, 0.0)
    for name, results, marker in (("before", audit["before"], "o"), ("after", audit["after"], "*")):
        x = base_forget - results.get("forget", {}).get(metric, 0.0)
        y = results.get("retain", {}).get(metric)
        if y is not None:
            left.scatter([x], [y], s=120 if marker == "*" else 60, marker=marker, zorder=3)
            left.annotate(name, (x, y), textcoords="offset points", xytext=(6, 4), fontsize=9)
    left.set_xlim(-0.05, 1.05)
    left.set_ylim(-0.05, 1.05)
    left.set_xlabel(f"forget {metric} reduction (→ more forgetting)")
    left.set_ylabel(f"retain {metric} (↑ more utility)")
    left.set_title("Forgetting vs utility")
    left.grid(True, alpha=0.3)
    for group, colour in (("retain", "tab:blue"), ("forget", "tab:red")):
        points = [(e["before"].get(metric), e["after"].get(metric))
                  for split in (group, f"{group}_probes") for e in audit["by_person"].get(split, {}).values()]
        points = [(b, a) for b, a in points if b is not None and a is not None]
        if points:
            right.scatter(*zip(*points), s=22, alpha=0.7, color=colour, label=f"{group} (pairs and probes)")
    right.plot([0, 1], [0, 1], color="grey", linewidth=0.8, linestyle="--")
    right.set_xlim(-0.05, 1.05)
    right.set_ylim(-0.05, 1.05)
    right.set_xlabel(f"{metric} before")
    right.set_ylabel(f"{metric} after")
    right.set_title("Per person")
    right.legend(fontsize=8, loc="upper left")
    right.grid(True, alpha=0.3)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    return buf.getvalue()


_CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",sans-serif;margin:24px auto;max-width:1100px;color:#1d2330;
padding:0 16px}h1{font-size:22px;margin-bottom:4px}h2{font-size:17px;margin-top:28px;border-bottom:1px solid #dde;
padding-bottom:4px}table{border-collapse:collapse;font-size:13px;margin:8px 0}th,td{border:1px solid #d6d9e0;
padding:4px 8px;text-align:left}th{background:#f1f3f7}td{font-variant-numeric:tabular-nums}
.banner{display:inline-block;padding:6px 12px;border-radius:6px;font-weight:600;margin:8px 0}
.met{background:#dff3e4;color:#17612d}.unmet{background:#fbe0e0;color:#8a1c1c}.none{background:#eef0f4}
pre{background:#f6f7f9;padding:10px;font-size:12px;overflow-x:auto;border:1px solid #e2e4ea}
.meta{color:#566;font-size:13px}code{font-size:12px}img{max-width:100%;border:1px solid #e2e4ea}
"""


def _html_table(head: list[str], rows: list[list[str]]) -> str:
    esc = html.escape
    cells = "".join(f"<th>{esc(h)}</th>" for h in head)
    body = "".join("<tr>" + "".join(f"<td>{esc(c)}</td>" for c in r) + "</tr>" for r in rows)
    return f"<table><thead><tr>{cells}</tr></thead><tbody>{body}</tbody></table>"


def audit_html(audit: dict, figure_png: bytes) -> str:
    """One HTML file with everything inline (styles, the figure as a data URI): it opens anywhere, offline."""
    esc = html.escape
    m, data = audit["model"], audit["data"]
    state = "none" if audit.get("passed") is None else "met" if audit["passed"] else "unmet"
    figure = base64.b64encode(figure_png).decode()
    files = _html_table(["file", "sha256"], [[n, d] for n, d in data["files"].items()])
    parts = [
        "<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>",
        f"<title>Deletion audit: {esc(audit['method'])} on {esc(Path(m['path']).name)}</title>",
        f"<style>{_CSS}</style></head><body>",
        f"<h1>Deletion audit: {esc(audit['method'])} on {esc(Path(m['path']).name)}</h1>",
        f"<div class='meta'>{esc(audit['created'])} · {audit['people']['forget']} people forgotten, "
        f"{audit['people']['retain']} kept · {esc(str(audit['timings'].get('total_s', 0)))} s</div>",
        f"<div class='banner {state}'>{esc(verdict(audit))}</div>",
    ]
    if audit.get("require"):
        parts += ["<h2>The bar</h2>", _html_table(["condition", "value", ""], require_rows(audit))]
    parts += [
        "<h2>Before → after, per split</h2>", _html_table(["split", *SPLIT_METRICS], split_rows(audit)),
        f"<h2>Trade-off</h2><img alt='trade-off figure' src='data:image/png;base64,{figure}'>",
        "<h2>Attacks on the forgotten people</h2>", f"<p class='meta'>{esc(ATTACKS_TEXT)}</p>",
        _html_table(attack_head(), attack_rows(audit)),
        "<h2>Per person: forgotten</h2>", _html_table(person_head(), person_rows(audit, "forget")),
        f"<h2>Per person: kept</h2><details{' open' if audit['people']['retain'] <= 20 else ''}><summary>"
        f"{audit['people']['retain']} people</summary>",
        _html_table(person_head(), person_rows(audit, "retain")), "</details>",
        "<h2>Provenance</h2><ul>",
        f"<li>model <code>{esc(m['path'])}</code><br>sha256 <code>{m['sha256']}</code> ({m['files']} files, "
        f"{m['bytes']} bytes)</li>",
        f"<li>unlearned model <code>{esc(audit['unlearned_model']['path'])}</code><br>sha256 "
        f"<code>{audit['unlearned_model']['sha256']}</code></li>",
        f"<li>data <code>{esc(data['path'])}</code><br>sha256 <code>{data['sha256']}</code></li>",
        f"<li>recipe <code>{esc(audit['recipe'])}</code>, overrides "
        f"<code>{esc(' '.join(audit['overrides']) or '(none)')}</code></li>",
        f"<li>MLflow run <code>{esc(str((audit.get('mlflow') or {}).get('run_id')))}</code></li></ul>",
        f"<details><summary>data files ({len(data['files'])})</summary>{files}</details>",
        f"<h2>Configuration</h2><pre>{esc(audit['config_yaml'])}</pre>",
        "</body></html>",
    ]
    return "\n".join(parts)


def check_no_audit(out: Path) -> None:
    """Refuse a folder that already holds an audit: an audit is a record and is never overwritten."""
    found = [name for name in AUDIT_FILES if (Path(out) / name).exists()]
    if found:
        raise RunExistsError(f"{Path(out) / found[0]}: this folder holds an earlier audit, which is never "
                             "overwritten; choose another --out")


def write_audit(out: Path, audit: dict) -> list[Path]:
    """audit.json, audit.md and audit.html in ``out`` (each written to a temporary file and renamed)."""
    out = Path(out)
    check_no_audit(out)
    figure = audit_figure(audit)
    paths = [write_text_atomic(out / "audit.md", audit_markdown(audit)),
             write_text_atomic(out / "audit.html", audit_html(audit, figure))]
    # Last: its presence marks the audit finished (and a folder that holds one is refused from then on).
    paths.append(write_json_atomic(out / "audit.json", audit, sort_keys=False))
    return paths
