"""MLLMU-Bench metrics, as the official evaluator defines them (and a lenient classification parsing beside
it). Pure functions of strings."""

from __future__ import annotations

import re
from functools import lru_cache

_ALNUM = re.compile(r"[A-Za-z0-9]")
ASSISTANT_TAG = "ASSISTANT:"


def official_reply(text: str) -> str:
    """The part of a decoded reply the official evaluator scores: it splits the whole decoded sequence at
    ``ASSISTANT:`` and keeps the piece after the prompt's own, so the reply ends where the model writes the tag
    itself; stripped."""
    return text.split(ASSISTANT_TAG, 1)[0].strip()


def classification_choice(reply: str, *, lenient: bool = False) -> str | None:
    """The letter read from a reply, upper-cased (None if there is none). Official: the reply's first
    character (``"(B)"`` reads as ``(``, no letter); lenient: its first alphanumeric character."""
    if lenient:
        m = _ALNUM.search(reply)
        return m.group(0).upper() if m else None
    return reply[0].upper() if reply else None


def classification_correct(reply: str, correct_letter: str, *, lenient: bool = False) -> bool:
    return classification_choice(reply, lenient=lenient) == correct_letter.strip().upper()


def cloze_correct(reply: str, ground_truth: str) -> bool:
    """The ground truth, lower-cased, is a substring of the reply, lower-cased."""
    return ground_truth.lower() in reply.lower()


@lru_cache(maxsize=1)
def _rouge_scorer():
    from rouge_score import rouge_scorer

    return rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)


def rouge_l(reply: str, ground_truth: str) -> float:
    """ROUGE-L F-measure (rouge_score, Porter stemmer on), reference = ground truth."""
    return float(_rouge_scorer().score(ground_truth, reply)["rougeL"].fmeasure)


def bleu(reply: str, ground_truth: str) -> float:
    """NLTK sentence BLEU on whitespace tokens, smoothing method1 (0 for an empty reply)."""
    from nltk.translate.bleu_score import SmoothingFunction, sentence_bleu

    hypothesis = reply.split()
    if not hypothesis:
        return 0.0
    return float(sentence_bleu([ground_truth.split()], hypothesis, smoothing_function=SmoothingFunction().method1))
