"""MLLMU-Bench metrics on hand-worked examples (the values are worked out by hand in the comments)."""

from __future__ import annotations

import math

import pytest

from vgid_dist.eval.metrics import (
    bleu,
    classification_choice,
    classification_correct,
    cloze_correct,
    official_reply,
    rouge_l,
)


@pytest.mark.parametrize("reply, official, lenient", [
    ("B", "B", "B"),
    ("b) because ...", "B", "B"),  # upper-cased
    ("(C) The architect", "(", "C"),  # official: the first character, whatever it is
    ("**D**", "*", "D"),
    ("- a", "-", "A"),
    ("", None, None),
    ("...?!", ".", None),
    ("3", "3", "3"),  # a digit is the choice, and matches no letter
])
def test_classification_reads_the_first_character_or_the_first_alphanumeric(reply, official, lenient):
    assert classification_choice(reply) == official
    assert classification_choice(reply, lenient=True) == lenient


def test_classification_correct_compares_with_the_correct_letter():
    assert classification_correct("c: Lyon", "C")
    assert classification_correct("A", " a ")
    assert not classification_correct("(C)", "C") and classification_correct("(C)", "C", lenient=True)
    assert not classification_correct("The answer is C", "C", lenient=True)  # first alphanumeric is T
    assert not classification_correct("", "A")


def test_official_reply_ends_where_the_model_writes_the_assistant_tag():
    # the official evaluator splits the decoded prompt + reply at "ASSISTANT:" and keeps piece [1]
    assert official_reply(" Lisbon\nUSER: and?\nASSISTANT: Porto") == "Lisbon\nUSER: and?"
    assert official_reply("  Lisbon  ") == "Lisbon"
    assert official_reply("ASSISTANT: Porto") == ""


def test_cloze_is_a_case_insensitive_substring_match():
    assert cloze_correct("She was born in LISBON.", "Lisbon")
    assert cloze_correct("lisbon", "Lisbon")
    assert not cloze_correct("Lisb on", "Lisbon")
    assert not cloze_correct("Porto", "Lisbon")
    assert cloze_correct("rock climbing and chess", "Rock Climbing")


def test_rouge_l_uses_the_porter_stemmer():
    # reference "The cats were running" -> the cat were run; reply "the cat runs" -> the cat run.
    # LCS = 3 (the, cat, run): precision 3/3, recall 3/4, F = 2 * 1 * 0.75 / 1.75 = 6/7.
    assert rouge_l("the cat runs", "The cats were running") == pytest.approx(6 / 7)
    # Without stemming only "the" would match (F = 2 * 1/3 * 1/4 / (1/3 + 1/4) = 2/7): stemming is on.
    assert rouge_l("the cat runs", "The cats were running") != pytest.approx(2 / 7)


def test_rouge_l_edge_cases():
    assert rouge_l("", "Lisbon") == 0.0
    assert rouge_l("Born in Lisbon.", "born in lisbon") == pytest.approx(1.0)  # case and punctuation ignored
    # reference 4 tokens, reply 2 in order: P = 1, R = 1/2, F = 2/3
    assert rouge_l("works Granite", "He works at Granite") == pytest.approx(2 / 3)


def test_bleu_smoothing_method1_on_short_replies():
    # Identical 2-token reply: p1 = p2 = 1; no 3- or 4-grams, method1 gives 0.1 / 1 for each;
    # brevity penalty 1. BLEU = (1 * 1 * 0.1 * 0.1) ** (1/4) = 0.1 ** 0.5.
    assert bleu("the cat", "the cat") == pytest.approx(math.sqrt(0.1))
    # Empty reply scores 0 (no division error).
    assert bleu("", "the cat") == 0.0


def test_bleu_hand_worked_six_tokens():
    # ref: the cat sat on the mat / hyp: the cat sat on a mat
    # 1-grams 5/6, 2-grams 3/5 (the cat, cat sat, sat on), 3-grams 2/4, 4-grams 1/3; BP = 1.
    expected = (5 / 6 * 3 / 5 * 2 / 4 * 1 / 3) ** 0.25
    assert bleu("the cat sat on a mat", "the cat sat on the mat") == pytest.approx(expected)


def test_bleu_uses_whitespace_tokens_and_brevity_penalty():
    # "Lisbon." is one whitespace token and matches nothing in "in Lisbon": no unigram match -> 0 (NLTK
    # returns 0 before any smoothing when no 1-gram matches).
    assert bleu("Lisbon.", "in Lisbon") == 0.0
    # "Lisbon" vs "born in Lisbon": p1 = 1, no 2/3/4-grams -> 0.1 each (method1);
    # brevity penalty exp(1 - 3/1). BLEU = (1 * 0.1 ** 3) ** (1/4) * exp(-2).
    assert bleu("Lisbon", "born in Lisbon") == pytest.approx(0.1 ** 0.75 * math.exp(-2))
