"""A folder of the user's own people, read for evaluation: the training pairs and the optional probes.

    my_people/
      forget.jsonl   the pairs of the people to forget   {"id", "image", "question", "answer"[, "facts"]}
      retain.jsonl   the pairs of the people to keep     (same rows)
      probes.jsonl   optional: more questions about the same people (paraphrases, other images)
                     {"id", "of": "forget"|"retain", "image", "question", "answer"[, "facts"]
                      [, "options": {"A": ..., "B": ...}, "correct": "B"]}

``id`` names the person; a probe's ``id`` must be a person of the file its ``of`` names. A probe with
``options`` is a multiple-choice question (``correct`` is the right letter; ``answer`` may be left out) and is
asked as one; any other row is an open question. ``facts`` lists the keywords a reply must contain to count as
recalling the answer (default: the answer's own words that the question does not hold, stop words left out).
Images are paths relative to the JSONL file. Every row is checked here, before a model loads: each error names
the file, the line and the field.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from vgid_dist.data.jsonl import image_field, jsonl_rows, text_field
from vgid_dist.data.schema import ImageRef
from vgid_dist.errors import DataError
from vgid_dist.vocab import PEOPLE_SPLITS

PROBES_FILE = "probes.jsonl"
PEOPLE_GROUPS = ("forget", "retain")


@dataclass(frozen=True)
class PersonQuestion:
    """One question about one person, with what a reply is scored against."""

    uid: str
    split: str  # one of PEOPLE_SPLITS
    person: str
    question: str
    answer: str  # the correct letter for a multiple-choice probe
    image: ImageRef | None
    options: dict[str, str] | None = None
    facts: tuple[str, ...] | None = None  # given by the row; None: derived from the answer when scored
    source: str = ""  # file:line


@dataclass
class People:
    root: Path
    files: dict[str, Path]
    """``forget``, ``retain`` and (when present) ``probes``: the files read."""
    ids: dict[str, list[str]]
    """``forget`` / ``retain`` -> the people of that file, in order of first appearance."""
    questions: list[PersonQuestion] = field(default_factory=list)

    @property
    def splits(self) -> tuple[str, ...]:
        return tuple(s for s in PEOPLE_SPLITS if any(q.split == s for q in self.questions))


def is_people_folder(path: str | Path) -> bool:
    """A folder holding ``forget.jsonl`` (the JSONL layout) rather than MLLMU-Bench's parquet folders."""
    return (Path(path).expanduser() / "forget.jsonl").is_file()


def _facts(row: dict, where: str) -> tuple[str, ...] | None:
    facts = row.get("facts")
    if facts is None:
        return None
    if not isinstance(facts, list) or not facts or not all(isinstance(f, str) and f.strip() for f in facts):
        raise DataError(f"{where} field 'facts': expected a non-empty list of non-empty strings, got {facts!r}")
    return tuple(facts)


def _options(row: dict, where: str) -> tuple[dict[str, str] | None, str | None]:
    """(options, correct letter) of a multiple-choice row, (None, None) for an open one."""
    options, correct = row.get("options"), row.get("correct")
    if options is None:
        if correct is not None:
            raise DataError(f"{where} field 'correct': given without 'options'")
        return None, None
    if not isinstance(options, dict) or len(options) < 2 or not all(
            isinstance(k, str) and len(k) == 1 and k.isupper() and isinstance(v, str) and v
            for k, v in options.items()):
        raise DataError(f"{where} field 'options': expected at least two options keyed by capital letters "
                        f"({{\"A\": \"...\", \"B\": \"...\"}}), got {options!r:.160}")
    if not isinstance(correct, str) or correct.strip().upper() not in options:
        raise DataError(f"{where} field 'correct': expected the letter of the right option, one of "
                        f"{sorted(options)}, got {correct!r}")
    return {k: v for k, v in options.items()}, correct.strip().upper()


def _read_pairs(path: Path, group: str) -> list[PersonQuestion]:
    out = []
    for where, row in jsonl_rows(path, group):
        person, question, answer = (text_field(row, f, where) for f in ("id", "question", "answer"))
        lineno = where.rpartition(":")[2]
        out.append(PersonQuestion(f"{group}/{person}/{lineno}", group, person, question, answer,
                                  image_field(row, path, where), facts=_facts(row, where), source=where))
    return out


def _read_probes(path: Path, ids: dict[str, list[str]], files: dict[str, Path]) -> list[PersonQuestion]:
    people = {group: set(members) for group, members in ids.items()}
    out = []
    for where, row in jsonl_rows(path, "probes"):
        person, question = text_field(row, "id", where), text_field(row, "question", where)
        group = row.get("of")
        if group not in PEOPLE_GROUPS:
            raise DataError(f"{where} field 'of': expected 'forget' or 'retain', got {group!r}")
        if person not in people[group]:
            other = next((g for g in PEOPLE_GROUPS if person in people[g]), None)
            raise DataError(f"{where} field 'id': {person!r} is in neither {files['forget'].name} nor "
                            f"{files['retain'].name}" if other is None else
                            f"{where} field 'id': {person!r} is a person of {files[other].name}, but 'of' says "
                            f"{group!r}")
        options, correct = _options(row, where)
        answer = correct if options else text_field(row, "answer", where)
        lineno = where.rpartition(":")[2]
        out.append(PersonQuestion(f"{group}_probes/{person}/{lineno}", f"{group}_probes", person, question, answer,
                                  image_field(row, path, where), options=options, facts=_facts(row, where),
                                  source=where))
    return out


def read_people(root: str | Path, *, forget_file: str | Path | None = None,
                retain_file: str | Path | None = None) -> People:
    """Every question of a people folder, checked (see the module's docstring)."""
    root = Path(root).expanduser()
    if not root.is_dir():
        raise DataError(f"{root}: folder not found (expected forget.jsonl, retain.jsonl and optionally "
                        f"{PROBES_FILE})")
    files = {"forget": Path(forget_file).expanduser() if forget_file else root / "forget.jsonl",
             "retain": Path(retain_file).expanduser() if retain_file else root / "retain.jsonl"}
    questions = _read_pairs(files["forget"], "forget") + _read_pairs(files["retain"], "retain")
    ids = {g: list(dict.fromkeys(q.person for q in questions if q.split == g)) for g in PEOPLE_GROUPS}
    both = sorted(set(ids["forget"]) & set(ids["retain"]))
    if both:
        raise DataError(f"{files['retain']} field 'id': {both[:5]} also in {files['forget']}; a person is either "
                        "forgotten or kept")
    if not ids["forget"]:
        raise DataError(f"{files['forget']}: no pair; expected one line per question about a person to forget")
    if (root / PROBES_FILE).is_file():
        files["probes"] = root / PROBES_FILE
        questions += _read_probes(files["probes"], ids, files)
    return People(root, files, ids, questions)
