"""The Porter stemmer (M. F. Porter, "An algorithm for suffix stripping", Program 14(3), 1980) with the
departures NLTK makes in its default ``NLTK_EXTENSIONS`` mode, so that ``stem(w)`` equals
``nltk.stem.porter.PorterStemmer().stem(w)``. ROUGE-L with ``use_stemmer=True`` stems every ``[a-z0-9]`` token
longer than three characters with that stemmer; this module gives the same stems without importing NLTK.

Vocabulary of the paper: a *consonant* is any letter other than a, e, i, o, u, and other than a y that follows
a consonant (a y that starts the word or follows a vowel is a consonant). Digits count as consonants. Writing
c for a consonant and v for a vowel, every word reads ``[C](VC){m}[V]`` and m is its *measure*. The conditions:
``*v*`` the stem holds a vowel, ``*d`` it ends in a double consonant, ``*o`` it ends consonant-vowel-consonant
with the last consonant not w, x or y.

Departures from the paper (NLTK's extensions, all reproduced here):

- a small pool of irregular forms is answered directly ("skies" -> "sky", "dying" -> "die", "news" -> "news");
- words of one or two characters are returned unchanged (lower-cased);
- step 1a: a four-letter word in -ies keeps -ie ("dies" -> "die", "flies" -> "fli");
- step 1b: -ied becomes -ie in four-letter words and -i otherwise, with no condition ("spied" -> "spi");
- ``*o`` also holds for a two-letter stem vowel-consonant (any consonant, w, x and y included);
- step 1c: y -> i only after a consonant that is not the stem's first letter ("happy" -> "happi",
  "enjoy" -> "enjoy", "spy" -> "spi");
- step 2: -bli -> -ble replaces the paper's -abli -> -able; -alli -> -al is followed by another pass of step 2
  ("conditionalli" -> "condit"); -fulli -> -ful and -logi -> -log are added, and -logi's condition counts the
  l as part of the stem ("geologi" -> "geolog").

Rules inside a step are tried in table order and the first suffix that matches decides: when its condition
fails the step leaves the word alone rather than trying a shorter suffix ("agreement" keeps -ement and
does not fall back to -ment). The tables list overlapping suffixes longest first, as the paper intends.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import lru_cache

_VOWELS = frozenset("aeiou")

# Irregular forms answered without running the steps: word -> stem.
_IRREGULAR = {
    "sky": "sky", "skies": "sky", "dying": "die", "lying": "lie", "tying": "tie", "news": "news",
    "inning": "inning", "innings": "inning", "outing": "outing", "outings": "outing",
    "canning": "canning", "cannings": "canning", "howe": "howe",
    "proceed": "proceed", "exceed": "exceed", "succeed": "succeed",
}  # fmt: skip


def _shape(part: str) -> str:
    """Each character of ``part`` as ``c`` (consonant) or ``v`` (vowel), left to right in one pass: a y is a
    vowel exactly when the character before it is a consonant."""
    kinds = []
    previous = "v"  # so that a leading y reads as a consonant
    for ch in part:
        if ch in _VOWELS:
            kind = "v"
        elif ch == "y":
            kind = "v" if previous == "c" else "c"
        else:
            kind = "c"
        kinds.append(kind)
        previous = kind
    return "".join(kinds)


def _measure(part: str) -> int:
    """m of ``[C](VC){m}[V]``: the number of vowel-to-consonant transitions."""
    return _shape(part).count("vc")


def _has_vowel(part: str) -> bool:
    """Condition ``*v*``."""
    return "v" in _shape(part)


def _ends_double_consonant(part: str) -> bool:
    """Condition ``*d``: the last two characters are the same consonant."""
    return len(part) >= 2 and part[-1] == part[-2] and _shape(part)[-1] == "c"


def _ends_cvc(part: str) -> bool:
    """Condition ``*o``: ends consonant-vowel-consonant, the last not w, x or y; NLTK also accepts a whole
    two-character stem vowel-consonant (with no exception for w, x, y)."""
    if len(part) == 2:
        return _shape(part) == "vc"
    return len(part) >= 3 and _shape(part).endswith("cvc") and part[-1] not in "wxy"


def _m_above_0(stem: str) -> bool:
    return _measure(stem) > 0


def _m_above_1(stem: str) -> bool:
    return _measure(stem) > 1


def _stem_with_l_m_above_0(stem: str) -> bool:
    """-logi -> -log: the l stays with the stem when measuring ("geologi": measure "geol", not "geo")."""
    return _measure(stem + "l") > 0


def _m_above_1_after_s_or_t(stem: str) -> bool:
    return _measure(stem) > 1 and stem[-1] in "st"


Rule = tuple[str, str, Callable[[str], bool] | None]

_STEP1A: tuple[Rule, ...] = (("sses", "ss", None), ("ies", "i", None), ("ss", "ss", None), ("s", "", None))

_STEP2: tuple[Rule, ...] = tuple(
    (suffix, replacement, _m_above_0)
    for suffix, replacement in (
        ("ational", "ate"), ("tional", "tion"), ("enci", "ence"), ("anci", "ance"), ("izer", "ize"),
        ("bli", "ble"), ("alli", "al"), ("entli", "ent"), ("eli", "e"), ("ousli", "ous"),
        ("ization", "ize"), ("ation", "ate"), ("ator", "ate"), ("alism", "al"), ("iveness", "ive"),
        ("fulness", "ful"), ("ousness", "ous"), ("aliti", "al"), ("iviti", "ive"), ("biliti", "ble"),
        ("fulli", "ful"),
    )
) + (("logi", "log", _stem_with_l_m_above_0),)  # fmt: skip

_STEP3: tuple[Rule, ...] = tuple(
    (suffix, replacement, _m_above_0)
    for suffix, replacement in (
        ("icate", "ic"), ("ative", ""), ("alize", "al"), ("iciti", "ic"), ("ical", "ic"), ("ful", ""),
        ("ness", ""),
    )
)  # fmt: skip

_STEP4: tuple[Rule, ...] = tuple(
    (suffix, "", _m_above_1_after_s_or_t if suffix == "ion" else _m_above_1)
    for suffix in (
        "al", "ance", "ence", "er", "ic", "able", "ible", "ant", "ement", "ment", "ent", "ion", "ou", "ism",
        "ate", "iti", "ous", "ive", "ize",
    )
)  # fmt: skip


def _apply_first(word: str, rules: tuple[Rule, ...]) -> tuple[str, str | None]:
    """The word after the first rule whose suffix it ends with, and that suffix (None when none matched or the
    matching rule's condition on the remaining stem failed)."""
    for suffix, replacement, condition in rules:
        if word.endswith(suffix):
            stem = word[: len(word) - len(suffix)]
            if condition is None or condition(stem):
                return stem + replacement, suffix
            return word, None
    return word, None


def _step1a(word: str) -> str:
    """Plurals: -sses -> -ss, -ies -> -i (-ie in four-letter words), -ss stays, -s goes."""
    if len(word) == 4 and word.endswith("ies"):
        return word[:-1]
    return _apply_first(word, _STEP1A)[0]


def _step1b(word: str) -> str:
    """Past tenses and participles: -ied, (m>0) -eed -> -ee, (*v*) -ed and -ing, then the tidy-up after -ed
    or -ing: at/bl/iz get their e back, a double consonant other than l, s, z is halved, and a stem of
    measure 1 ending ``*o`` gets an e."""
    if word.endswith("ied"):
        return word[:-1] if len(word) == 4 else word[:-2]
    if word.endswith("eed"):
        stem = word[:-3]
        return stem + "ee" if _measure(stem) > 0 else word
    for suffix in ("ed", "ing"):
        if word.endswith(suffix) and _has_vowel(word[: -len(suffix)]):
            stem = word[: -len(suffix)]
            break
    else:
        return word
    if stem.endswith(("at", "bl", "iz")):
        return stem + "e"
    if _ends_double_consonant(stem):
        return stem if stem[-1] in "lsz" else stem[:-1]
    if _measure(stem) == 1 and _ends_cvc(stem):
        return stem + "e"
    return stem


def _step1c(word: str) -> str:
    """A final y after a consonant becomes i, unless that consonant is the only letter before it."""
    if word.endswith("y") and len(word) > 2 and _shape(word[:-1])[-1] == "c":
        return word[:-1] + "i"
    return word


def _step2(word: str) -> str:
    """Double suffixes to single ones (m>0); -alli -> -al runs the step once more on the result."""
    result, suffix = _apply_first(word, _STEP2)
    return _step2(result) if suffix == "alli" else result


def _step5(word: str) -> str:
    """Tidying: drop a final e when m>1, or when m=1 and the stem does not end ``*o``; then -ll -> -l when
    m>1."""
    if word.endswith("e"):
        stem = word[:-1]
        measure = _measure(stem)
        if measure > 1 or (measure == 1 and not _ends_cvc(stem)):
            word = stem
    if word.endswith("ll") and _measure(word[:-1]) > 1:
        word = word[:-1]
    return word


@lru_cache(maxsize=1 << 16)
def stem(word: str) -> str:
    """The Porter stem of ``word``, lower-cased first, exactly as NLTK's ``PorterStemmer().stem`` gives it in
    its default mode (its length test looks at the word before lower-casing, as NLTK's does)."""
    lowered = word.lower()
    if lowered in _IRREGULAR:
        return _IRREGULAR[lowered]
    if len(word) <= 2:
        return lowered
    result = _step1c(_step1b(_step1a(lowered)))
    result = _step2(result)
    result = _apply_first(result, _STEP3)[0]
    result = _apply_first(result, _STEP4)[0]
    return _step5(result)
