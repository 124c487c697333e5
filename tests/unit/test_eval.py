"""Evaluator pieces without a generation loop: questions, prompts (ICU, reverse attack, examples), batch plans
that keep ranks symmetric, scoring, and the paper-style report."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest
from PIL import Image

from vgid_dist.config import EvalOptions
from vgid_dist.data import MLLMUBench
from vgid_dist.data.schema import ImageRef
from vgid_dist.data.synthetic import png_bytes
from vgid_dist.errors import DataError
from vgid_dist.eval.evaluator import (
    Prediction,
    PromptEncoder,
    option_continuations,
    plan_batches,
    prediction_record,
    score,
)
from vgid_dist.eval.items import EvalItem
from vgid_dist.eval.prompting import encode
from vgid_dist.eval.report import table3_markdown, table6_markdown, tradeoff_points, write_report
from vgid_dist.eval.run import build_items
from vgid_dist.models import load_adapter
from vgid_dist.prompts import INSTRUCTIONS, REVERSE_ATTACK

OPTIONS = {"A": "Lisbon", "B": "Porto", "C": "Lyon", "D": "Graz"}


def item(uid: str, *, split="forget", task="generation", qtype="Pure_Text", question="Where was Ana born?",
         truth="Ana was born in Lisbon.", image=None, options=None) -> EvalItem:
    return EvalItem(uid, split, "p", task, qtype, question, truth, image, options)


@pytest.fixture(params=["llava", "qwen"])
def adapter(request, tiny_llava, tiny_qwen):
    return load_adapter(tiny_llava if request.param == "llava" else tiny_qwen)


# ---- scoring ------------------------------------------------------------------------------------------------

def test_combined_is_the_mean_over_every_question_not_of_the_type_means():
    preds = [Prediction(item(f"c{i}", task="classification", qtype="Image_Textual", truth="A", options=OPTIONS),
                        reply) for i, reply in enumerate(["A", "A", "A"])]
    preds.append(Prediction(item("c3", task="classification", qtype="Pure_Text", truth="A", options=OPTIONS), "B"))
    results = score(preds, ["forget"])
    assert results["forget"]["class_acc"] == pytest.approx(3 / 4)  # not (1 + 0) / 2
    assert results["by_type"]["forget"]["Image_Textual"]["class_acc"] == 1.0
    assert results["by_type"]["forget"]["Pure_Text"]["class_acc"] == 0.0
    assert results["counts"]["forget"]["class_acc"] == 4


def test_score_reports_empty_splits_and_skipped_questions():
    preds = [Prediction(item("g0"), "Ana was born in Lisbon."),
             Prediction(item("g1"), None, "x.parquet: unreadable image"),
             Prediction(item("k0", task="cloze", question="Ana was born in __.", truth="Lisbon"), "lisbon!")]
    results = score(preds, ["forget", "celebrity"])
    assert results["celebrity"] == {} and results["skipped"] == {"forget": 1, "celebrity": 0}
    assert results["forget"]["gen_rougeL"] == pytest.approx(1.0)
    assert results["forget"]["cloze_acc"] == 1.0
    assert results["counts"]["forget"] == {"gen_rougeL": 1, "gen_bleu": 1, "cloze_acc": 1}
    assert "class_acc" not in results["forget"]  # no classification question asked


def test_logits_choice_is_scored_beside_the_generated_answer():
    p = Prediction(item("c", task="classification", truth="C", options=OPTIONS), "I think A", None, "C")
    results = score([p], ["forget"])
    assert results["forget"]["class_acc"] == 0.0 and results["forget"]["class_acc_logits"] == 1.0


def test_class_acc_parses_the_first_character_officially_and_lenient_beside_it():
    preds = [Prediction(item(f"c{i}", task="classification", truth="B", options=OPTIONS), reply)
             for i, reply in enumerate(["b", "(B)", "**B**", "A"])]
    official, zero_shot = score(preds, ["forget"]), score(preds, ["forget"], "zero-shot")
    assert official["forget"]["class_acc"] == 0.25 and official["forget"]["class_acc_lenient"] == 0.75
    assert zero_shot["forget"]["class_acc"] == zero_shot["forget"]["class_acc_lenient"] == 0.75


def test_prediction_record_holds_what_the_file_promises():
    p = Prediction(item("forget/p/classification/0", task="classification", truth="B", options=OPTIONS), "B")
    record = prediction_record(p)
    for key in ("split", "task", "type", "question", "ground_truth", "reply"):
        assert key in record
    assert record["ground_truth"] == "B" and record["task"] == "classification"
    json.dumps(record)  # serialisable


# ---- batch plans --------------------------------------------------------------------------------------------

@pytest.mark.parametrize("world, batch_size, n_image, n_text", [(2, 4, 9, 3), (3, 2, 7, 0), (2, 16, 1, 5),
                                                                 (4, 3, 0, 10)])
def test_every_rank_runs_the_same_batches_and_every_item_once(world, batch_size, n_image, n_text):
    img = ImageRef(data=b"x", origin="t")
    items = [item(f"i{k}", image=img, qtype="Image_Textual", question="q" * (k % 5)) for k in range(n_image)]
    items += [item(f"t{k}", task=("cloze", "generation")[k % 2]) for k in range(n_text)]
    plans = [plan_batches(items, r, world, batch_size) for r in range(world)]
    shapes = [[(len(b.items), b.has_image) for b in plan] for plan in plans]
    assert all(s == shapes[0] for s in shapes), shapes
    asked = [it.uid for plan in plans for b in plan for it in b.items if it is not None]
    assert sorted(asked) == sorted(it.uid for it in items)
    for plan in plans:  # image batches hold only image questions, text batches only text ones
        for b in plan:
            assert all((it.image is not None) == b.has_image for it in b.items if it is not None)


def test_batches_group_questions_of_one_task():
    items = [item(f"g{k}") for k in range(3)] + [item(f"k{k}", task="cloze") for k in range(3)]
    plan = plan_batches(items, 0, 1, 3)
    assert [{it.task for it in b.items} for b in plan] == [{"cloze"}, {"generation"}]


def test_batches_keep_prompts_with_solved_examples_together():
    # Official protocol: one split's questions carry a profile's solved examples, another's none. Sorted on the
    # question alone the short and long prompts alternate (questions of both lengths in both splits); sorted
    # on the prompt, each batch holds one kind and pads little.
    from vgid_dist.eval.examples import Shot

    shot = Shot(("p0", "classification", "Pure_Text", 0), "classification", "Pure_Text",
                "Which city was Ana born in? " * 4, "A", OPTIONS, None)
    with_examples = [replace(item(f"r{k}", split="retain", task="classification", question="q" * k,
                                  options=OPTIONS), shots=(shot,) * 5) for k in range(4)]
    without = [item(f"c{k}", split="celebrity", task="classification", question="q" * k, options=OPTIONS)
               for k in range(4)]
    plan = plan_batches(with_examples + without, 0, 1, 4)
    assert [{it.split for it in b.items} for b in plan] == [{"celebrity"}, {"retain"}]


# ---- prompts ------------------------------------------------------------------------------------------------

def test_icu_instruction_comes_before_and_reverse_attack_after_the_question(adapter):
    q = item("g", question="Where was Ana Lima born?")
    plain = PromptEncoder(adapter, EvalOptions()).prompt(q)
    icu = PromptEncoder(adapter, EvalOptions(icu="strict")).prompt(q)
    attacked = PromptEncoder(adapter, EvalOptions(attack="reverse")).prompt(q)
    both = PromptEncoder(adapter, EvalOptions(icu="strict", attack="reverse")).prompt(q)
    assert INSTRUCTIONS["strict"] not in plain and REVERSE_ATTACK not in plain
    assert icu.index(INSTRUCTIONS["strict"]) < icu.index(q.question)
    assert attacked.index(q.question) < attacked.index(REVERSE_ATTACK)
    # Table 6's "ICU w/ reverse attack" row: instruction, question, then the attack
    assert both.index(INSTRUCTIONS["strict"]) < both.index(q.question) < both.index(REVERSE_ATTACK)


def test_pure_text_questions_are_asked_without_the_image(bench_dir):
    items = build_items(MLLMUBench(bench_dir), 5, ["forget", "test"])
    assert {it.image is None for it in items if it.qtype == "Pure_Text"} == {True}
    assert {it.image is not None for it in items if it.qtype == "Image_Textual"} == {True}


def test_example_images_are_encoded_before_the_question_image(adapter, bench_dir):
    bench = MLLMUBench(bench_dir)
    items = build_items(bench, 5, ["retain"], seed=1)
    q = next(it for it in items if it.task == "classification" and it.qtype == "Image_Textual")
    assert len(q.shots) == 2 and all(s.image is not None for s in q.shots)  # one example profile, 2 questions
    sample, _ = PromptEncoder(adapter, EvalOptions()).encode(q)
    one = adapter.encode_image(q.image.load())
    assert sample.image.num_tokens == 3 * one.num_tokens  # two example images and the question's own
    assert sum(t == adapter.image_token_id for t in sample.prompt_ids) == 3 * one.num_tokens
    first_key = next(iter(one.tensors))
    assert sample.image.tensors[first_key].shape[0] == 3 * one.tensors[first_key].shape[0]
    assert not any(it.shots for it in build_items(bench, 5, ["retain"], seed=1, protocol="zero-shot"))


def test_unusual_unicode_is_encoded_not_dropped(adapter):
    text = "Zoë Ørsted-李雷 🚀 naïve café\u200b — ¿dónde nació?"
    enc = encode(adapter, adapter.render(text, False, "generation"), [])
    assert text in adapter.tokenizer.decode(enc.prompt_ids, skip_special_tokens=True)


def test_prompt_with_a_stray_image_token_is_refused_by_name(adapter):
    token = adapter.tokenizer.convert_ids_to_tokens(adapter.image_token_id)
    from vgid_dist.errors import DataError

    with pytest.raises(DataError, match="image token"):
        encode(adapter, adapter.render(f"What is {token}?", False, "generation"), [])


def test_option_tokens_are_those_the_model_would_emit_after_the_prompt(adapter):
    prompt = adapter.render("Which city?\nA: x\nB: y\nC: z\nD: w", True, "classification")
    shared, own = option_continuations(adapter, prompt, "ABCD")
    assert len({tuple(o) for o in own.values()}) == 4
    for letter, tokens in own.items():
        # the shared piece and the option's own tokens spell the letter; the end-of-turn token is not scored
        assert adapter.tokenizer.decode(shared + tokens).strip() == letter
        assert adapter.tokenizer.eos_token_id not in tokens


def test_unreadable_image_is_recorded_and_replaced_by_a_padding_row(tiny_llava):
    adapter = load_adapter(tiny_llava)
    good = ImageRef(data=png_bytes(Image.new("RGB", (40, 40), (9, 9, 9))), origin="good")
    bad = ImageRef(data=b"not a jpeg", origin="x.parquet row 'p' field 'image'")
    items = [item("a", qtype="Image_Textual", image=good), item("b", qtype="Image_Textual", image=bad)]
    batch = plan_batches(items, 0, 1, 4)[0]
    errors: dict = {}
    rows, asked, _ = PromptEncoder(adapter, EvalOptions()).encode_batch(batch, errors)
    assert len(rows) == 2 and [a.uid if a else None for a in asked] == ["a", None]
    assert "unreadable image" in errors["b"] and "x.parquet" in errors["b"]
    assert rows[1].image is not None  # the padding row keeps the batch's modality


# ---- report -------------------------------------------------------------------------------------------------

RESULTS = {
    "base": {"forget": {"cloze_acc": 0.2391, "class_acc": 0.4917, "gen_rougeL": 0.571},
             "test": {"cloze_acc": 0.1087, "class_acc": 0.375, "gen_rougeL": 0.212},
             "retain": {"cloze_acc": 0.1881, "class_acc": 0.5162, "gen_rougeL": 0.496}},
    "vgid": {"forget": {"cloze_acc": 0.1086, "class_acc": 0.35, "gen_rougeL": 0.2},
             "test": {"cloze_acc": 0.1304, "class_acc": 0.35, "gen_rougeL": 0.151},
             "retain": {"cloze_acc": 0.24, "class_acc": 0.508, "gen_rougeL": 0.441}},
}


def test_table3_has_the_paper_layout():
    lines = table3_markdown(RESULTS).splitlines()
    head = [c.strip() for c in lines[0].strip("|").split("|")]
    assert head == ["Method",
                    "Forget Cloze ↓", "Forget Class ↓", "Forget Gen RL ↓",
                    "Test Cloze ↓", "Test Class ↓", "Test Gen RL ↓",
                    "Retain Cloze ↑", "Retain Class ↑", "Retain Gen RL ↑"]
    assert lines[2] == ("| base | 23.91% | 49.17% | 0.571 | 10.87% | 37.50% | 0.212 | 18.81% | 51.62% | 0.496 |")
    assert lines[3].startswith("| vgid | 10.86% | 35.00% | 0.200 |")


def test_table3_reads_results_files_and_shows_missing_values(tmp_path):
    path = tmp_path / "vgid.json"
    partial = {"forget": {"cloze_acc": 0.5}, "test": {}, "retain": {}}
    path.write_text(json.dumps(partial))
    table = table3_markdown({"base": RESULTS["base"], "vgid": path})
    assert "| vgid | 50.00% | - | - |" in table
    with pytest.raises(DataError, match="nope.json"):
        table3_markdown({"x": tmp_path / "nope.json"})


def test_table6_rows_without_and_with_the_attack():
    attacked = {"forget": {"cloze_acc": 0.2826, "class_acc": 0.4833, "gen_rougeL": 0.585},
                "test": {"cloze_acc": 0.1304, "class_acc": 0.4167, "gen_rougeL": 0.225}}
    table = table6_markdown({"Base": {"w/o": RESULTS["base"], "w/": attacked}, "VGID": {"w/o": RESULTS["vgid"]}})
    lines = table.splitlines()
    head = [c.strip() for c in lines[0].strip("|").split("|")]
    assert head[1] == "w/o attack: Forget Cloze ↓" and head[7] == "w/ attack: Forget Cloze ↓" and len(head) == 13
    assert lines[2] == ("| Base | 23.91% | 49.17% | 0.571 | 10.87% | 37.50% | 0.212 "
                        "| 28.26% | 48.33% | 0.585 | 13.04% | 41.67% | 0.225 |")
    assert lines[3].endswith("| - | - | - | - | - | - |")
    with pytest.raises(ValueError, match="unknown attack setting"):
        table6_markdown({"Base": {"with": RESULTS["base"]}})


def test_tradeoff_points_and_figure(tmp_path):
    points = tradeoff_points(RESULTS)
    assert points["base"] == (0.0, 0.496)
    assert points["vgid"] == pytest.approx((0.571 - 0.2, 0.441))
    table = write_report(RESULTS, tmp_path)
    assert (tmp_path / "table3.md").read_text().startswith(table + "\n\nAccuracies: % (correct/asked)")
    png = (tmp_path / "tradeoff.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 5000
    with pytest.raises(ValueError, match="base"):
        tradeoff_points({"vgid": RESULTS["vgid"]})


def test_report_command_prints_tables(tmp_path, capsys):
    from vgid_dist.eval.report import main

    (tmp_path / "b.json").write_text(json.dumps(RESULTS["base"]))
    (tmp_path / "v.json").write_text(json.dumps(RESULTS["vgid"]))
    assert main([f"base={tmp_path / 'b.json'}", f"vgid={tmp_path / 'v.json'}", "--out", str(tmp_path / "r")]) == 0
    assert "| vgid | 10.86% |" in capsys.readouterr().out and (tmp_path / "r" / "tradeoff.png").is_file()
    assert main(["--table6", f"base={tmp_path / 'b.json'}", f"base+reverse={tmp_path / 'v.json'}"]) == 0
    assert "| base | 23.91% |" in capsys.readouterr().out

