"""MLLMU-Bench metrics, as the official evaluator defines them (and a lenient classification parsing beside
it). Pure functions of strings. ROUGE-L and BLEU are computed here, equal to ``rouge_score``'s and NLTK's values
(tests/unit/test_metrics.py compares them on many pairs): importing those packages costs over a second of every
evaluation's start-up."""

from __future__ import annotations

import math
import re
from collections import Counter

from vgid_dist.eval.porter import stem

_ALNUM = re.compile(r"[A-Za-z0-9]")
_NON_ALNUM = re.compile(r"[^a-z0-9]+")
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


def _rouge_tokens(text: str) -> list[str]:
    """ROUGE's tokens of ``text``, as ``rouge_score`` makes them: lower-cased, every run of characters other
    than ``[a-z0-9]`` a separator, tokens longer than 3 characters Porter-stemmed."""
    words = _NON_ALNUM.sub(" ", text.lower()).split()
    return [t for t in (stem(w) if len(w) > 3 else w for w in words) if t]


def _lcs_length(a: list[str], b: list[str]) -> int:
    """Length of the longest common subsequence of two token lists (one row of the DP table kept)."""
    if len(b) > len(a):
        a, b = b, a
    row = [0] * (len(b) + 1)
    for x in a:
        diagonal = 0  # row[j - 1] of the previous row
        for j, y in enumerate(b, start=1):
            above = row[j]
            row[j] = diagonal + 1 if x == y else max(above, row[j - 1])
            diagonal = above
    return row[-1]


def rouge_l(reply: str, ground_truth: str) -> float:
    """ROUGE-L F-measure of the reply against the ground truth (Porter stemmer on): the value
    ``rouge_score.RougeScorer(["rougeL"], use_stemmer=True).score(ground_truth, reply)`` gives."""
    reference, candidate = _rouge_tokens(ground_truth), _rouge_tokens(reply)
    if not reference or not candidate:
        return 0.0
    lcs = _lcs_length(reference, candidate)
    precision, recall = lcs / len(candidate), lcs / len(reference)
    return 2 * precision * recall / (precision + recall) if precision + recall > 0 else 0.0


def _ngram_counts(tokens: list[str], n: int) -> Counter:
    return Counter(zip(*(tokens[i:] for i in range(n))))


def bleu(reply: str, ground_truth: str, max_order: int = 4, epsilon: float = 0.1) -> float:
    """Sentence BLEU on whitespace tokens with uniform weights and smoothing "method 1", the value NLTK's
    ``sentence_bleu([ground_truth.split()], reply.split(), smoothing_function=SmoothingFunction().method1)``
    gives: an order with no clipped match counts as ``epsilon`` over the reply's n-grams of that order (at
    least 1), but a reply with no unigram match scores 0; brevity penalty ``exp(1 - r / c)`` when the reply is
    not longer than the ground truth."""
    hypothesis, reference = reply.split(), ground_truth.split()
    if not hypothesis:
        return 0.0
    log_precision = []
    for n in range(1, max_order + 1):
        counts, ref_counts = _ngram_counts(hypothesis, n), _ngram_counts(reference, n)
        matched = sum(min(c, ref_counts[g]) for g, c in counts.items())
        total = max(1, sum(counts.values()))
        if n == 1 and matched == 0:
            return 0.0
        log_precision.append(math.log(matched / total if matched else epsilon / total) / max_order)
    c, r = len(hypothesis), len(reference)
    brevity = 1.0 if c > r else math.exp(1 - r / c)
    return brevity * math.exp(math.fsum(log_precision))
