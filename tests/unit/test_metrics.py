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


def _sentence_pairs(count: int = 3000, seed: int = 0) -> list[tuple[str, str]]:
    """(reply, ground truth) pairs shaped like benchmark answers: shared and inflected words, punctuation,
    capitals, digits, non-ASCII letters, repeats, empty and one-word sides."""
    import random

    rng = random.Random(seed)
    words = ("the she he was born in Lisbon Porto worked working works as an architect architects engineer "
             "engineering studied university hobbies include rock climbing climbed chess painting paintings "
             "her his their family lives living lived moved 1987 2003 3rd Dr. café naïve São Paulo É "
             "is a of to and with for on at by from relational conditional generously happiness "
             "running runs ran cats cat dogs dog's well-known self-taught e-mail U.S. A B C D").split()
    pairs = [("", ""), ("", "Lisbon"), ("Lisbon", ""), ("...", "!!"), ("Lisbon", "Lisbon")]
    while len(pairs) < count:
        truth = rng.choices(words, k=rng.randint(1, 25))
        reply = [w for w in truth if rng.random() < 0.7] + rng.choices(words, k=rng.randint(0, 12))
        if rng.random() < 0.3:
            rng.shuffle(reply)
        punct = rng.choice(["", ".", ",", "!", " ;"])
        pairs.append((" ".join(reply) + punct, " ".join(truth)))
    return pairs


def test_rouge_l_equals_rouge_score_on_many_pairs():
    rouge_scorer = pytest.importorskip("rouge_score.rouge_scorer")
    scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)
    mismatches = [(reply, truth) for reply, truth in _sentence_pairs()
                  if rouge_l(reply, truth) != scorer.score(truth, reply)["rougeL"].fmeasure]
    assert not mismatches, mismatches[:5]


def test_bleu_equals_nltk_sentence_bleu_on_many_pairs():
    bleu_score = pytest.importorskip("nltk.translate.bleu_score")
    smoothing = bleu_score.SmoothingFunction().method1
    mismatches = []
    for reply, truth in _sentence_pairs():
        expected = bleu_score.sentence_bleu([truth.split()], reply.split(), smoothing_function=smoothing)
        if bleu(reply, truth) != expected:
            mismatches.append((reply, truth, bleu(reply, truth), expected))
    assert not mismatches, mismatches[:5]


def test_scoring_imports_neither_nltk_nor_rouge_score():
    import subprocess
    import sys

    code = ("import sys; from vgid_dist.eval.metrics import rouge_l, bleu; rouge_l('running cats', 'cats ran'); "
            "bleu('a b', 'a b'); loaded = {'nltk', 'rouge_score'} & set(sys.modules); assert not loaded, loaded")
    subprocess.run([sys.executable, "-c", code], check=True)
