"""MLLMU-Bench metrics, as the official evaluator defines them. Pure functions of strings."""

from __future__ import annotations

import re
from functools import lru_cache

_ALNUM = re.compile(r"[A-Za-z0-9]")


def classification_choice(reply: str) -> str | None:
    """The first alphanumeric character of the reply, upper-cased (None if there is none)."""
    m = _ALNUM.search(reply)
    return m.group(0).upper() if m else None


def classification_correct(reply: str, correct_letter: str) -> bool:
    return classification_choice(reply) == correct_letter.strip().upper()


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
