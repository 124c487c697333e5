"""A folder of the user's own people: the reader's checks, fact recall, the people scoring, the --require bar,
the benchmark-to-folder writer and the audit files' no-overwrite rule."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from PIL import Image

from vgid_dist.data.people import read_people
from vgid_dist.data.people_writer import write_people_folder
from vgid_dist.errors import ConfigError, DataError, RunExistsError
from vgid_dist.eval.audit import check_no_audit
from vgid_dist.eval.evaluator import Prediction
from vgid_dist.eval.facts import answer_facts, fact_recall, words
from vgid_dist.eval.people import people_items, people_scorer
from vgid_dist.eval.require import check_require, parse_require


def write_folder(root: Path, probes: list[dict] | None = None) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (8, 8), (200, 10, 10)).save(root / "alice.png")
    forget = [{"id": "alice", "image": "alice.png", "question": "Who is this?", "answer": "This is Alice Smith."},
              {"id": "alice", "image": None, "question": "Where does Alice work?", "answer": "At Northwind Labs.",
               "facts": ["Northwind Labs"]},
              {"id": "carol", "question": "Where was Carol born?", "answer": "Carol was born in Ghent in 1976."}]
    retain = [{"id": "bob", "question": "What does Bob do?", "answer": "Bob is a baker."}]
    for name, rows in (("forget", forget), ("retain", retain), ("probes", probes)):
        if rows is not None:
            (root / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return root


PROBE = {"id": "alice", "of": "forget", "image": "alice.png", "question": "Who is shown?", "answer": "Alice Smith."}


def test_people_folder_is_read_into_four_splits(tmp_path):
    mc = {**PROBE, "answer": None, "options": {"A": "Alice", "B": "Bob"}, "correct": "a"}
    people = read_people(write_folder(tmp_path / "p", [PROBE, mc, {**PROBE, "id": "bob", "of": "retain"}]))
    assert people.ids == {"forget": ["alice", "carol"], "retain": ["bob"]}
    assert people.splits == ("forget", "retain", "forget_probes", "retain_probes")
    items, facts = people_items(people)
    tasks = {it.uid: it.task for it in items}
    assert sorted(tasks.values()) == ["chat", "chat", "chat", "chat", "classification", "generation", "generation"]
    choice = next(it for it in items if it.task == "classification")
    assert choice.ground_truth == "A" and choice.uid not in facts  # letter upper-cased; no facts for a choice
    assert facts["forget/alice/2"] == ("Northwind Labs",)  # given
    assert facts["forget/carol/3"] == ("ghent", "1976")  # derived: not stop words, not in the question


@pytest.mark.parametrize("row, message", [
    ({**PROBE, "image": "missing.png"}, r"probes.jsonl:1 field 'image': image file .*missing.png not found"),
    ({**PROBE, "of": "kept"}, r"probes.jsonl:1 field 'of': expected 'forget' or 'retain', got 'kept'"),
    ({**PROBE, "id": "dave"}, r"probes.jsonl:1 field 'id': 'dave' is in neither forget.jsonl nor retain.jsonl"),
    ({**PROBE, "id": "bob"}, r"'bob' is a person of retain.jsonl, but 'of' says 'forget'"),
    ({**PROBE, "options": {"A": "x", "B": "y"}, "correct": "C"},
     r"probes.jsonl:1 field 'correct': expected the letter of the right option, one of \['A', 'B'\], got 'C'"),
    ({**PROBE, "options": {"A": "x", "B": "y"}}, r"field 'correct': expected the letter"),
    ({**PROBE, "correct": "A"}, r"field 'correct': given without 'options'"),
    ({**PROBE, "options": {"first": "x", "second": "y"}, "correct": "first"}, r"field 'options': expected at least"),
    ({**PROBE, "facts": []}, r"field 'facts': expected a non-empty list"),
])
def test_bad_probes_are_named_by_file_line_and_field(tmp_path, row, message):
    with pytest.raises(DataError, match=message):
        read_people(write_folder(tmp_path / "p", [PROBE, row][1:]))


def test_bad_pairs_are_refused(tmp_path):
    root = write_folder(tmp_path / "p")
    (root / "retain.jsonl").write_text(json.dumps({"id": "alice", "question": "q", "answer": "a"}) + "\n")
    with pytest.raises(DataError, match=r"\['alice'\] also in .*forget.jsonl"):
        read_people(root)
    (root / "retain.jsonl").write_text(json.dumps({"id": "bob", "image": "nope.png", "question": "q",
                                                   "answer": "a"}) + "\n")
    with pytest.raises(DataError, match=r"retain.jsonl:1 field 'image': image file .*nope.png not found"):
        read_people(root)


def test_fact_recall_counts_facts_stated_in_order():
    assert words("Alma's pottery, in KRAKÓW!") == ["alma", "pottery", "in", "kraków"]
    facts = answer_facts("Where does Alma work?", "Alma works at Northwind Labs as a baker.")
    assert facts == ("works", "northwind", "labs", "baker")
    assert fact_recall("She is a baker at Northwind Labs.", ("Northwind Labs", "baker")) == 1.0
    assert fact_recall("Labs of Northwind.", ("Northwind Labs", "baker")) == 0.0  # words out of order
    assert fact_recall("a bakery", ("baker",)) == 0.0  # whole words only
    assert fact_recall("I cannot say.", ()) is None


def test_people_scoring_adds_fact_recall_per_split_and_person(tmp_path):
    people = read_people(write_folder(tmp_path / "p", [PROBE]))
    items, facts = people_items(people)
    replies = {"forget/alice/1": "This is Alice Smith.", "forget/alice/2": "I cannot say.",
               "forget/carol/3": "Born in Ghent.", "retain/bob/1": "Bob is a baker.",
               "forget_probes/alice/1": "Alice Smith."}
    results = people_scorer(facts)([Prediction(it, replies[it.uid]) for it in items], people.splits, "official")
    assert results["forget"]["fact_recall"] == pytest.approx((1 + 0 + 0.5) / 3)
    assert results["by_person"]["forget"]["alice"]["fact_recall"] == 0.5
    assert results["by_person"]["forget"]["carol"]["fact_recall"] == 0.5
    assert results["retain"]["gen_rougeL"] == 1.0
    assert results["by_type"]["forget"]["Pure_Text"]["fact_recall"] == 0.25
    assert results["counts"]["forget_probes"]["fact_recall"] == 1


def test_require_bar_is_parsed_against_the_data_and_checked():
    splits = ("forget", "retain", "forget_probes")
    bar = parse_require("forget.fact_recall<=0.1, retain.gen_rougeL>=0.9,relearn.forget_probes.fact_recall<0.5",
                        splits)
    assert [(c.stage, c.split, c.metric, c.op, c.bound) for c in bar] == [
        ("after", "forget", "fact_recall", "<=", 0.1), ("after", "retain", "gen_rougeL", ">=", 0.9),
        ("relearn", "forget_probes", "fact_recall", "<", 0.5)]
    checked = check_require(bar, {"after": {"forget": {"fact_recall": 0.05}, "retain": {"gen_rougeL": 0.85}}})
    assert [r["met"] for r in checked] == [True, False, False]  # the relearn value was not measured
    for text, message in (("retain_probes.fact_recall<=1", "this data has"), ("forget.recall<=1", "metric"),
                          ("later.forget.fact_recall<=1", "stage one of"), ("forget.fact_recall=1", "OP"),
                          ("reverse.retain.fact_recall<=1", "forgotten people only")):
        with pytest.raises(ConfigError, match=message):
            parse_require(text, splits)


def test_benchmark_people_written_as_a_folder(bench_dir, tmp_path):
    out = write_people_folder(bench_dir, tmp_path / "people", forget_ratio=15)
    people = read_people(out)
    assert len(people.ids["forget"]) == 3 and len(people.ids["retain"]) == 17
    probes = [q for q in people.questions if q.split == "forget_probes"]
    assert len(probes) == 3 * 8  # 4 generation + 4 classification questions each
    born = next(q for q in people.questions if q.split == "forget" and "born" in q.question and q.image is None)
    assert born.facts and born.facts[-1].isdigit()  # the place and the year
    with pytest.raises(FileExistsError):
        write_people_folder(bench_dir, out)


def test_an_audit_is_never_overwritten(tmp_path):
    check_no_audit(tmp_path)  # an empty folder is fine
    (tmp_path / "audit.md").write_text("# earlier\n")
    with pytest.raises(RunExistsError, match="never overwritten"):
        check_no_audit(tmp_path)
