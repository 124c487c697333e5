"""The official MLLMU-Bench protocol: prompts equal to the official evaluator's strings, its example profiles
and the questions they take out of scoring, its Test_Set image draws, its reply parsing, and the scores of a
fake model with fixed replies on a hand-made official-layout folder, worked out by hand."""

from __future__ import annotations

import json

import pytest
import torch

from tests.official_layout import FORGET_5, write_official_layout
from vgid_dist.config import EvalOptions
from vgid_dist.data import MLLMUBench
from vgid_dist.data.collate import Collator
from vgid_dist.data.schema import ImageRef
from vgid_dist.eval.evaluator import PromptEncoder
from vgid_dist.eval.examples import EXAMPLE_PROFILES, Shot, draw_examples
from vgid_dist.eval.items import EvalItem, items_for
from vgid_dist.eval.run import build_items, run_evaluation
from vgid_dist.models import load_adapter

IMG = ImageRef(data=b"x", origin="t")
OPTIONS = {"A": "Lisbon", "B": "Porto", "C": "Lyon", "D": "Graz"}
EXAMPLE_OPTIONS = {"A": "Oslo", "B": "Rome", "C": "Kyiv", "D": "Bern"}


@pytest.fixture(scope="module")
def llava(tiny_llava):
    return load_adapter(tiny_llava)


@pytest.fixture(scope="module")
def official(tmp_path_factory):
    return write_official_layout(tmp_path_factory.mktemp("official") / "MLLMU-Bench")


def prompt(adapter, task, qtype, question, options=None, shots=()):
    image = IMG if qtype == "Image_Textual" else None
    it = EvalItem("u", "forget", "p", task, qtype, question, "A", image, options, tuple(shots))
    return PromptEncoder(adapter, EvalOptions()).prompt(it)


def shot(task, qtype, question, answer, options=None):
    return Shot(("q", task, qtype, 0), task, qtype, question, answer, options,
                IMG if qtype == "Image_Textual" else None)


# ---- prompts: the official evaluator's strings, character by character ---------------------------------------

def test_zero_shot_prompts_are_the_official_strings(llava):
    letters = "A: Lisbon\nB: Porto\nC: Lyon\nD: Graz\n"
    assert prompt(llava, "classification", "Image_Textual", "Where?", OPTIONS) == (
        f"USER: <image>\nWhere?\n{letters}Just give ONE letter representing the answer directly.\nASSISTANT:")
    assert prompt(llava, "classification", "Pure_Text", "Where?", OPTIONS) == (
        f"USER:\nWhere?\n{letters}Just give ONE letter representing the answer directly.\nASSISTANT:")
    blank = "Born in [Blank].\nPlease **ONLY** provide the correct answer that should replace the [Blank]."
    assert prompt(llava, "cloze", "Image_Textual", "Born in __.") == f"USER: <image>\n{blank}\nASSISTANT:"
    assert prompt(llava, "cloze", "Pure_Text", "Born in __.") == f"USER:\n{blank}\nASSISTANT:"
    assert prompt(llava, "generation", "Image_Textual", "Who?") == (
        "USER: <image>\nWho?\nAnswer the question based on your trained knowledge in one sentence accurately in "
        "ENGLISH.\nASSISTANT: ")
    assert prompt(llava, "generation", "Pure_Text", "Who?") == (
        "USER: Who?\nAnswer the question based on your trained knowledge in one sentence in ENGLISH.\nASSISTANT:")


def test_example_turns_are_the_official_strings(llava):
    example = "Question: Where to?\nA: Oslo\nB: Rome\nC: Kyiv\nD: Bern\nCorrect Answer: C\n"
    question = "Where?\nA: Lisbon\nB: Porto\nC: Lyon\nD: Graz\nJust give ONE letter representing the answer directly."
    shots = [shot("classification", "Image_Textual", "Where to?", "C", EXAMPLE_OPTIONS)] * 2
    assert prompt(llava, "classification", "Image_Textual", "Where?", OPTIONS, shots) == (
        f"USER: <image>\n{example}USER: <image>\n{example}USER: <image>\n{question}\nASSISTANT:")
    shots = [shot("classification", "Pure_Text", "Where to?", "C", EXAMPLE_OPTIONS)]
    assert prompt(llava, "classification", "Pure_Text", "Where?", OPTIONS, shots) == (
        f"USER:\n{example}USER:\n{question}\nASSISTANT:")
    instruction = "\nPlease **ONLY** provide the correct answer that should replace the [Blank]."
    shots = [shot("cloze", "Image_Textual", "Works as a __.", "baker")]
    assert prompt(llava, "cloze", "Image_Textual", "Born in __.", shots=shots) == (
        f"USER:<image>\nWorks as a [Blank].{instruction}\nCorrect Answer: baker\n"
        f"USER: <image>\nBorn in [Blank].{instruction}\nASSISTANT:")
    shots = [shot("cloze", "Pure_Text", "Works as a __.", "baker")]
    assert prompt(llava, "cloze", "Pure_Text", "Born in __.", shots=shots) == (
        f"USER:\nWorks as a [Blank].{instruction}\nCorrect Answer: baker\n"
        f"USER:\nBorn in [Blank].{instruction}\nASSISTANT:")


def test_qwen_gets_examples_as_finished_chat_exchanges(tiny_qwen):
    adapter = load_adapter(tiny_qwen)
    shots = [shot("classification", "Image_Textual", "Where to?", "C", EXAMPLE_OPTIONS)] * 2
    text = prompt(adapter, "classification", "Image_Textual", "Where?", OPTIONS, shots)
    assert text.count("<|im_start|>assistant\nC<|im_end|>") == 2 and text.count("<|im_start|>user") == 3
    assert text.index("Where to?") < text.rindex("Where?\nA: Lisbon") and text.endswith("<|im_start|>assistant\n")


# ---- draws ----------------------------------------------------------------------------------------------------

def test_example_profiles_are_drawn_per_split_and_task_seeded(official):
    bench = MLLMUBench(official)
    ids = bench.split_ids("forget", 5)
    first = draw_examples("forget", ids, bench.full_set(), seed=3)
    assert first == draw_examples("forget", ids, bench.full_set(), seed=3)
    assert {t: len(v) for t, v in first.drawn.items()} == EXAMPLE_PROFILES
    assert all(set(v) <= set(ids) for v in first.drawn.values())
    draws = {draw_examples(split, ids, bench.full_set(), seed=s).drawn["classification"]
             for s in range(6) for split in ("forget", "test")}
    assert len(draws) > 1  # seeds and splits draw independently
    assert draw_examples("celebrity", ["cel001"], bench.full_set(), seed=3).shots == {}
    # every question of the drawn profiles is shown, Full_Set image and all, and none of them is scored
    (pid,) = first.drawn["classification"]
    shown = first.shots[("classification", "Image_Textual")] + first.shots[("classification", "Pure_Text")]
    assert [s.key[0] for s in shown] == [pid] * 4
    assert {s.image.origin for s in shown if s.image is not None} == {
        f"{official / 'Full_Set' / 'train-00000-of-00001.parquet'} row {pid!r} field 'image'"}
    scored = {(it.profile_id, it.task) for it in build_items(bench, 5, ["forget"], seed=3)}
    assert (pid, "classification") not in scored and (pid, "generation") in scored


def test_test_image_is_drawn_per_profile_and_task(official):
    profile = MLLMUBench(official).profiles("test", 5)[0]

    def images(seed, protocol):
        return {it.task: it.image.origin for it in items_for(profile, "test", seed, protocol)
                if it.image is not None}

    assert images(4, "official") == images(4, "official")
    assert any(len(set(images(s, "official").values())) > 1 for s in range(8))  # tasks draw apart
    assert all(len(set(images(s, "zero-shot").values())) == 1 for s in range(8))  # one image per profile


# ---- a fake model with fixed replies, scored by hand -----------------------------------------------------------

def fixed_reply(turn: str) -> str:
    """The fake model's reply to the scored turn (the text after the prompt's last ``USER:``)."""
    if "Just give ONE letter" in turn:
        if "in the image born?" in turn:
            return "B"
        if "in the image do for a living?" in turn:
            return "(D) the second"  # official: "(" is no letter; lenient: D
        if " born?\n" in turn:
            return "c"  # upper-cased: C
        return "The answer is A"  # T either way
    if "[Blank]" in turn:
        if "in the image" in turn:
            return "Tromsø, Norway"
        return "Fjordlys AS\nASSISTANT: Red Mesa Water"  # the official evaluator reads up to "ASSISTANT:"
    if "Zoë" in turn:
        return "Zoë Ørsted was born in Tromsø and is a glass-blower.\nASSISTANT: I do not know"
    return "I do not know."


def fake_generate(tokenizer):
    def generate(inputs, max_new_tokens):
        rows = []
        for ids, mask in zip(inputs.input_ids, inputs.attention_mask):
            text = tokenizer.decode(ids[mask.bool()].tolist(), skip_special_tokens=True)
            rows.append(tokenizer(fixed_reply(text.rsplit("USER:", 1)[1]), add_special_tokens=False).input_ids
                        + [tokenizer.eos_token_id])
        width = max(len(r) for r in rows)
        return torch.tensor([r + [tokenizer.eos_token_id] * (width - len(r)) for r in rows])

    return generate


class OneProcess:
    rank, world_size, is_main = 0, 1, True

    def gather_objects(self, obj):
        return [obj]


# Classification questions answered right per profile, (Image_Textual, Pure_Text) out of (2, 2). The layout's
# correct letters at position k are "ABCD"[k % 4], [(k+1) % 4] (Image_Textual), [(k+2) % 4], [(k+3) % 4]
# (Pure_Text); the replies read B, "(" (lenient D), C, T:
#   k=0 (hb001, cel001) A B C D: Pure_Text 1 | k=1 (hb002, cel002) B C D A: Image_Textual 1
#   k=2 (hb003) C D A B: lenient Image_Textual 1 | k=3 (hb004) D A B C: none
#   k=4 (hb005) A B C D: Pure_Text 1 | k=5 (hb006) B C D A: Image_Textual 1
OFFICIAL_CLASS = {"hb001": (0, 1), "hb002": (1, 0), "hb003": (0, 0), "hb004": (0, 0), "hb005": (0, 1),
                  "hb006": (1, 0), "cel001": (0, 1), "cel002": (1, 0)}
LENIENT_CLASS = {**OFFICIAL_CLASS, "hb003": (1, 0)}
# Cloze (Image_Textual, Pure_Text) out of (1, 1): "Tromsø" is hb001's birthplace, "Fjordlys AS" its employer;
# read past "ASSISTANT:" (zero-shot), the reply also holds hb003's employer.
OFFICIAL_CLOZE = {"hb001": (1, 1)}
ZERO_SHOT_CLOZE = {"hb001": (1, 1), "hb003": (0, 1)}
PROFILES = {"forget": FORGET_5, "test": FORGET_5, "retain": ("hb004", "hb005", "hb006"),
            "celebrity": ("cel001", "cel002")}


def expected(split: str, class_table: dict, cloze_table: dict, examples: dict) -> dict:
    """The official figures of ``split`` from the per-profile tables, without the example profiles."""
    scored_class = [p for p in PROFILES[split] if p not in examples.get("classification", ())]
    scored_cloze = [p for p in PROFILES[split] if p not in examples.get("cloze", ())]
    it_class = sum(class_table[p][0] for p in scored_class)
    pt_class = sum(class_table[p][1] for p in scored_class)
    it_cloze = sum(cloze_table.get(p, (0, 0))[0] for p in scored_cloze)
    pt_cloze = sum(cloze_table.get(p, (0, 0))[1] for p in scored_cloze)
    return {"class": ((it_class + pt_class) / (4 * len(scored_class)), it_class / (2 * len(scored_class)),
                      pt_class / (2 * len(scored_class))),
            "cloze": ((it_cloze + pt_cloze) / (2 * len(scored_cloze)), it_cloze / len(scored_cloze),
                      pt_cloze / len(scored_cloze)),
            "counts": (4 * len(scored_class), 2 * len(scored_cloze))}


def run_fake(llava, official, tmp_path, protocol: str) -> dict:
    opts = EvalOptions(batch_size=4, protocol=protocol, seed=11)
    items = build_items(MLLMUBench(official), 5, seed=opts.seed, protocol=protocol)
    out = tmp_path / f"{protocol}.json"
    results = run_evaluation(items, Collator(llava, 10**6), fake_generate(llava.tokenizer), opts, OneProcess(),
                             out, progress=False)
    assert json.loads(out.read_text()) == json.loads(json.dumps(results))  # what is returned is what is written
    return results


def check_split(results: dict, split: str, want: dict, lenient_want: dict) -> None:
    got, by_type = results[split], results["by_type"][split]
    assert (got["class_acc"], by_type["Image_Textual"]["class_acc"], by_type["Pure_Text"]["class_acc"]) == \
        pytest.approx(want["class"]), split
    assert (got["class_acc_lenient"], by_type["Image_Textual"]["class_acc_lenient"],
            by_type["Pure_Text"]["class_acc_lenient"]) == pytest.approx(lenient_want["class"]), split
    assert (got["cloze_acc"], by_type["Image_Textual"]["cloze_acc"], by_type["Pure_Text"]["cloze_acc"]) == \
        pytest.approx(want["cloze"]), split
    assert (results["counts"][split]["class_acc"], results["counts"][split]["cloze_acc"]) == want["counts"], split


def test_official_scores_of_a_fake_model_worked_out_by_hand(llava, official, tmp_path):
    results = run_fake(llava, official, tmp_path, "official")
    meta = results["meta"]
    assert meta["protocol"] == "official" and meta["seed"] == 11
    examples = meta["examples"]
    assert set(examples) == {"forget", "test", "retain"}  # the celebrity split gets none
    for split, tasks in examples.items():
        assert {t: len(ids) for t, ids in tasks.items()} == EXAMPLE_PROFILES
        assert all(set(ids) <= set(PROFILES[split]) for ids in tasks.values())
    for split in PROFILES:
        drawn = examples.get(split, {})
        check_split(results, split, expected(split, OFFICIAL_CLASS, OFFICIAL_CLOZE, drawn),
                    expected(split, LENIENT_CLASS, OFFICIAL_CLOZE, drawn))
        # generation is zero-shot and fully scored: only hb001's Pure_Text answer is right (ROUGE-L = BLEU = 1,
        # read up to "ASSISTANT:")
        n = len(PROFILES[split])
        right = 1.0 if split in ("forget", "test") else 0.0
        assert results[split]["gen_rougeL"] == pytest.approx(right / (2 * n))
        assert results["by_type"][split]["Pure_Text"]["gen_bleu"] == pytest.approx(right / n)
        assert results["counts"][split]["gen_rougeL"] == 2 * n
    # hand-checked on one draw: forget classification without its example profile
    (pid,) = examples["forget"]["classification"]
    assert results["forget"]["class_acc"] == pytest.approx({"hb001": 1 / 8, "hb002": 1 / 8, "hb003": 2 / 8}[pid])


def test_zero_shot_scores_every_question_and_reads_past_the_tag(llava, official, tmp_path):
    results = run_fake(llava, official, tmp_path, "zero-shot")
    assert results["meta"]["protocol"] == "zero-shot" and results["meta"]["examples"] == {}
    for split in PROFILES:
        want = expected(split, LENIENT_CLASS, ZERO_SHOT_CLOZE, {})
        check_split(results, split, want, want)  # class_acc reads the first alphanumeric character here
    # forget: lenient Image_Textual hb002 + hb003, Pure_Text hb001 -> 3 of 12; cloze hb001 both + hb003's
    # employer -> 3 of 6
    assert results["forget"]["class_acc"] == pytest.approx(3 / 12)
    assert results["forget"]["cloze_acc"] == pytest.approx(3 / 6)
    # hb001's generation reply read whole: 16 ROUGE tokens ("glass-blower" is two, "ASSISTANT: I do not know"
    # five more), the reference's 11 among them in order -> P = 11/16, R = 1, F = 22/27; every other answer 0
    assert results["forget"]["gen_rougeL"] == pytest.approx(22 / 27 / 6)


def test_a_split_whose_every_question_is_an_example_says_so(bench_dir):
    bench = MLLMUBench(bench_dir)  # 20 profiles: 5% forgets one, shown as the classification example
    with pytest.warns(UserWarning, match="forget split has 1 profile.*no classification question of it is scored"):
        items = build_items(bench, 5, ["forget"], seed=0)
    assert {it.task for it in items} == {"generation"}
    assert {it.task for it in build_items(bench, 5, ["forget"], seed=0, protocol="zero-shot")} == {
        "classification", "cloze", "generation"}


def test_split_results_keeps_only_the_splits_of_every_results_shape():
    from vgid_dist.eval.evaluator import RESULT_SECTIONS, split_results

    results = {"forget": {"gen_rougeL": 0.5}, "forget_probes": {"fact_recall": 0.1}, "celebrity": {},
               **{section: {"forget": {"x": 1}} for section in RESULT_SECTIONS}}
    assert split_results(results) == {"forget": {"gen_rougeL": 0.5}, "forget_probes": {"fact_recall": 0.1},
                                      "celebrity": {}}
    assert split_results(None) == {}
