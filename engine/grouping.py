"""Grouping token scores into words, for display and for the "most influential words" list."""

from __future__ import annotations

import bisect
import itertools
import re
from collections.abc import Sequence
from dataclasses import dataclass

import regex

# A letter, digit or underscore, a combining mark or any other number: a vowel sign of Hindi,
# Thai or Tamil, a vowel mark of Arabic, an accent of decomposed Latin ("e" + U+0301) and a
# superscript ("mg/m²", "10⁹/L") belong to their word.
WORD_CHAR = r"[\w\p{M}\p{N}]"
# A word keeps clinical tokens whole: "Ki-67", "HER2", "2.3", "60%", "biopsy-proven", "T2N1".
_WORD = regex.compile(rf"{WORD_CHAR}+(?:[-./+]{WORD_CHAR}+)*%?|[^\w\p{{M}}\p{{N}}\s]")


@dataclass(frozen=True)
class Span:
    """A piece of the prompt text with a score: ``text[start:end]``."""

    start: int
    end: int
    text: str
    score: float


def word_scores(text: str, offsets: Sequence[tuple[int, int]], scores: Sequence[float],
                attributable: Sequence[bool]) -> list[Span]:
    """Sum attributable token scores into the words of ``text`` they overlap most.

    Returns the words in text order; words no attributable token touches are left out.
    """
    words = [(m.start(), m.end()) for m in _WORD.finditer(text)]
    starts = [w[0] for w in words]
    totals: dict[int, float] = {}


    for (s, e), score, keep in zip(offsets, scores, attributable, strict=True):
        if not keep or e <= s:
            continue
        best, best_overlap = None, 0
        k = max(0, bisect.bisect_right(starts, s) - 1)
        while k < len(words) and words[k][0] < e:
            overlap = min(e, words[k][1]) - max(s, words[k][0])
            if overlap > best_overlap:
                best, best_overlap = k, overlap
            k += 1
        if best is not None:
            totals[best] = totals.get(best, 0.0) + float(score)
    return [Span(words[k][0], words[k][1], text[words[k][0]:words[k][1]], totals[k])
            for k in sorted(totals)]


def top_spans(spans: Sequence[Span], k: int = 10) -> list[Span]:
    """The ``k`` spans with the largest absolute score, largest first."""
    return sorted(spans, key=lambda span: abs(span.score), reverse=True)[:k]


_SENTENCE_END = re.compile(r"(?<=[.!?;])\s+|\n+|[\u3002\uff01\uff1f\u0964\u0965\u061f]+"
                           r"[\"')\]\u300d\u300f\u201d\uff09]*\s*")


def token_scores(text: str, offsets: Sequence[tuple[int, int]], scores: Sequence[float],
                 attributable: Sequence[bool]) -> list[Span]:
    """One span per attributable token, in text order."""
    return [Span(s, e, text[s:e], float(score))
            for (s, e), score, keep in zip(offsets, scores, attributable, strict=True)
            if keep and e > s]


def sentence_scores(text: str, offsets: Sequence[tuple[int, int]], scores: Sequence[float],
                    attributable: Sequence[bool]) -> list[Span]:
    """Token scores summed per sentence (split after . ! ? ; and at line breaks, and after the
    sentence ends of Chinese, Japanese, Hindi and Arabic)."""
    tokens = token_scores(text, offsets, scores, attributable)
    if not tokens:
        return []
    lo, hi = tokens[0].start, tokens[-1].end
    bounds = [lo] + [m.end() for m in _SENTENCE_END.finditer(text, lo, hi)] + [hi]
    spans = []
    k = 0
    for start, end in itertools.pairwise(bounds):
        total, touched = 0.0, False
        while k < len(tokens) and tokens[k].end - 1 < end:  # by its last character
            total += tokens[k].score
            touched = True
            k += 1
        if touched:
            stripped = text[start:end].rstrip()
            spans.append(Span(start, start + len(stripped), stripped, total))
    return spans


GROUPINGS = {"token": token_scores, "word": word_scores, "sentence": sentence_scores}
