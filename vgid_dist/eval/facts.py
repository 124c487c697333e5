"""Fact recall: the share of an answer's facts that a reply states. Pure functions of strings.

An answer's facts are the keywords its row gives (``facts``), or else the answer's own words that the question
does not hold, English stop words left out ("This person was born in Lisbon in 1987." asked "Where and when
was the person in the image born?" -> ``lisbon``, ``1987``). A fact is recalled when its words appear in the
reply, in order and next to each other, case-insensitively, a possessive ``'s`` ignored ("Northwind Labs"
matches "at northwind labs." but not "Northwind's labs").
"""

from __future__ import annotations

import re

# A common English stop-word list (function words: articles, pronouns, auxiliaries, prepositions, conjunctions).
STOP_WORDS = frozenset("""
a about above after again against all am an and any are as at be because been before being below between both but
by can could did do does doing down during each few for from further had has have having he her here hers herself
him himself his how i if in into is it its itself just me more most my myself no nor not now of off on once only or
other our ours ourselves out over own same she should so some such than that the their theirs them themselves then
there these they this those through to too under until up very was we were what when where which while who whom
why will with would you your yours yourself yourselves
""".split())

_WORD = re.compile(r"[^\W_]+(?:['\u2019][^\W_]+)*")


def words(text: str) -> list[str]:
    """Lower-cased words of ``text`` (letters and digits of any script; a possessive ``'s`` dropped)."""
    out = []
    for w in _WORD.findall(text.lower()):
        w = w.replace("\u2019", "'")
        out.append(w[:-2] if w.endswith("'s") else w)
    return out


def answer_facts(question: str, answer: str, given: tuple[str, ...] | list[str] | None = None) -> tuple[str, ...]:
    """The facts a reply to ``question`` is checked for: ``given`` when there are any, else the answer's words
    that are neither stop words nor words of the question (each once, in order)."""
    if given:
        return tuple(f for f in given if words(f))
    asked = set(words(question))
    return tuple(dict.fromkeys(w for w in words(answer) if w not in STOP_WORDS and w not in asked))


def _contains(haystack: list[str], needle: list[str]) -> bool:
    n = len(needle)
    return any(haystack[i:i + n] == needle for i in range(len(haystack) - n + 1))


def fact_recall(reply: str, facts: tuple[str, ...] | list[str]) -> float | None:
    """Share of ``facts`` whose words appear, contiguous and in order, in ``reply``; None without facts."""
    if not facts:
        return None
    said = words(reply)
    return sum(_contains(said, words(f)) for f in facts) / len(facts)
