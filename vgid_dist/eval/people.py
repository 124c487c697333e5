"""Evaluation on a folder of the user's own people (``vgid eval --data my_people/``, ``data.format: jsonl``).

Splits: ``forget`` and ``retain`` (the pairs of forget.jsonl and retain.jsonl) and ``forget_probes`` and
``retain_probes`` (the rows of probes.jsonl about those people). How each question is asked:

- a pair as training shows it (the family's chat template, the question alone): does the model still give
  the answer it was trained to forget, or to keep;
- an open probe as the benchmark asks a generation question (its one-sentence instruction), so the synthetic
  benchmark's people give the same generation scores through either layout;
- a multiple-choice probe as the benchmark asks a classification question (no solved examples).

Metrics, per split, per question type (with or without an image) and per person: ``gen_rougeL`` and
``gen_bleu`` as the benchmark defines them, and ``fact_recall`` (``eval.facts``) on open questions;
``class_acc`` and ``class_acc_lenient`` on multiple-choice probes. Decoding, batching, distribution and the
``--icu`` / ``--attack`` modes are the benchmark evaluation's (``eval.evaluator``).
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

from vgid_dist.config import EvalOptions
from vgid_dist.data.people import People, read_people
from vgid_dist.errors import ConfigError
from vgid_dist.eval.evaluator import Prediction, item_values, score
from vgid_dist.eval.facts import answer_facts, fact_recall
from vgid_dist.eval.items import EvalItem
from vgid_dist.eval.run import evaluate_items
from vgid_dist.vocab import PEOPLE_SPLITS

PEOPLE_METRICS = ("fact_recall", "gen_rougeL", "gen_bleu", "class_acc")


def people_items(people: People, splits=PEOPLE_SPLITS,
                 persons: set[str] | None = None) -> tuple[list[EvalItem], dict[str, tuple[str, ...]]]:
    """(the questions of ``splits`` as EvalItems, {uid: facts} of the open ones); ``persons``: only theirs."""
    items: list[EvalItem] = []
    facts: dict[str, tuple[str, ...]] = {}
    for q in people.questions:
        if q.split not in splits or (persons is not None and q.person not in persons):
            continue
        task = "classification" if q.options else "generation" if q.split.endswith("_probes") else "chat"
        qtype = "Image_Textual" if q.image is not None else "Pure_Text"
        items.append(EvalItem(q.uid, q.split, q.person, task, qtype, q.question, q.answer, q.image, q.options))
        if not q.options:
            facts[q.uid] = answer_facts(q.question, q.answer, q.facts)
    return items, facts


def people_scorer(facts: dict[str, tuple[str, ...]]):
    """The ``score_fn`` of an evaluation on people: the benchmark's scoring plus ``fact_recall`` on every open
    question that has facts, and ``by_person``: ``{split: {person: {metric: mean}}}``."""

    def extra(p: Prediction) -> dict[str, float]:
        recall = fact_recall(p.reply, facts.get(p.item.uid, ()))
        return {} if recall is None else {"fact_recall": recall}

    def score_people(predictions: list[Prediction], splits, protocol: str) -> dict:
        results = score(predictions, splits, protocol, extra=extra)
        values: dict[tuple[str, str, str], list[float]] = defaultdict(list)
        for p in predictions:
            if p.reply is not None:
                for metric, v in (item_values(p, protocol) | extra(p)).items():
                    values[(p.item.split, p.item.profile_id, metric)].append(v)
        by_person: dict = defaultdict(lambda: defaultdict(dict))
        for (split, person, metric), vs in sorted(values.items()):
            by_person[split][person][metric] = sum(vs) / len(vs)
        results["by_person"] = {s: dict(persons) for s, persons in by_person.items()}
        return results

    return score_people


def check_splits(people: People, splits) -> tuple[str, ...]:
    """The requested splits that the folder has (all of them when ``splits`` is None); unknown ones refused."""
    if splits is None:
        return people.splits
    unknown = [s for s in splits if s not in PEOPLE_SPLITS]
    if unknown:
        raise ConfigError(f"splits {unknown}: a people folder ({people.root}) has the splits {list(PEOPLE_SPLITS)}")
    return tuple(s for s in PEOPLE_SPLITS if s in splits)


def evaluate_people(model_path: str, data_root: str | Path, out_file: str | Path, *, opts: EvalOptions,
                    splits=None, dtype: str = "float32", attention: str = "auto", limit: int | None = None,
                    progress: bool = True, persons: set[str] | None = None,
                    people: People | None = None) -> dict | None:
    """Evaluate a model folder on a people folder (read and checked first, unless ``people`` is given);
    results on rank 0 (None elsewhere), written to ``out_file`` and its predictions file. ``limit``: the first
    N people of each file; ``persons``: only these people."""
    people = people or read_people(data_root)
    splits = check_splits(people, splits)
    if limit:
        persons = {p for group in people.ids.values() for p in group[:limit]} & (persons or set(
            p for group in people.ids.values() for p in group))
    items, facts = people_items(people, splits, persons)
    return evaluate_items(model_path, items, out_file, opts=opts, splits=splits, dtype=dtype, attention=attention,
                          progress=progress, score_fn=people_scorer(facts),
                          meta={"data": str(people.root), "format": "jsonl",
                                "files": {k: str(v) for k, v in people.files.items()}})


def format_people_table(results: dict, persons: str = "forget") -> str:
    """One row per split, then one per person of ``persons`` (``forget``: the forget file's people, pairs
    and probes), the metrics as columns (``-`` where a split has no such question)."""
    head = f"{'split':<14} {'person':<20} " + " ".join(f"{m:>12}" for m in PEOPLE_METRICS)

    def row(split: str, person: str, values: dict) -> str:
        return f"{split:<14} {person:<20} " + " ".join(
            f"{values[m]:>12.3f}" if m in values else f"{'-':>12}" for m in PEOPLE_METRICS)

    lines = [head] + [row(s, "(all)", results[s]) for s in PEOPLE_SPLITS if s in results]
    for split in (persons, f"{persons}_probes"):
        for person, values in (results.get("by_person") or {}).get(split, {}).items():
            lines.append(row(split, person, values))
    return "\n".join(lines)
