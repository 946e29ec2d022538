"""Splitting clinical text into sentences, and an answer into claims, as character spans.

Rules, not a trained model (offline, predictable, and clinical text defeats general-purpose
splitters in the same few ways):

- A sentence ends at ``.``, ``!`` or ``?`` followed by blank space, or at "。", "！", "？",
  "।", "॥" or "؟" (no space needed in those scripts), unless the word before the
  point is an abbreviation (``e.g.``, ``i.e.``, ``Dr.``, ``vs.``, ``approx.``, ``b.i.d.``...) or
  a single capital letter (an initial: "J. Smith"). A decimal point ("2.3 cm") is never
  followed by a space, so it never ends a sentence.
- A line break ends a sentence, and so does the start of a list item ("- ", "* ", "• ",
  "1. ", "2) ") at the start of a line or after a colon, and an inline numbered item within a
  line ("1) ... 2) ...", only in runs that count up from 1, so "(grade 3)" is no item).
- Claims (``split_claims``) are sentences further split at ``;``: a sentence that joins two
  statements with a semicolon makes two claims. Clauses joined by "and" stay one claim.

Spans are (start, end) character offsets with surrounding blank space left out; spans that hold
no letter or digit (a lone bullet or number) are merged into the next one.
"""

from __future__ import annotations

import itertools
import re

ABBREVIATIONS = frozenset({
    "e.g", "i.e", "etc", "vs", "cf", "approx", "dr", "drs", "mr", "mrs", "ms", "prof", "st",
    "no", "nos", "fig", "figs", "al", "b.i.d", "t.i.d", "q.i.d", "q.d", "p.o", "i.v", "s.c",
    "i.m", "p.r.n", "h.s", "a.m", "p.m", "ca", "incl", "resp", "max", "min", "pt", "pts", "yr",
    "yrs", "wk", "wks", "mo", "mos", "hx", "dx", "tx", "rx", "sx", "fx", "u.s", "jr", "sr",
})

# Latin ends need a space after them ("2.3 cm" is one sentence); the ideographic full stop and
# full-width marks (Chinese, Japanese), the danda (Hindi) and the Arabic question mark do not.
_END = re.compile(r"[.!?]+[\"')\]]*(?=\s)|[\u3002\uff01\uff1f\u0964\u0965\u061f]+"
                  r"[\"')\]\u300d\u300f\u201d\uff09]*")
_LIST_ITEM = re.compile(r"(?:^|(?<=:))[ \t]*(?:[-*\u2022]|\d{1,2}[.)])[ \t]+", re.MULTILINE)
_INLINE_ITEM = re.compile(r"(?<![\w(.,])(\d{1,2})[.)]\s")
_LIST_NUMBER = re.compile(r"(?:[\n:]|[.!?;]\s)[ \t]*\d{1,2}$")
_WORD_BEFORE = re.compile(r"([A-Za-z](?:[A-Za-z.]*[A-Za-z])?)\.$")
_CONTENT = re.compile(r"\w")


def split_sentences(text: str) -> list[tuple[int, int]]:
    """Sentence spans of ``text`` in order (see the module docstring)."""
    cuts = {0, len(text)}
    items = _inline_items(text)  # {start of the item: position of the "." or ")" after its number}
    markers = set(items.values())
    for match in _END.finditer(text):
        if match.start() not in markers and not _is_abbreviation(text, match.start(),
                                                                  match.group()):
            cuts.add(match.end())
    for match in re.finditer(r"\n", text):
        cuts.add(match.end())
    for match in _LIST_ITEM.finditer(text):
        cuts.add(match.start())
    cuts.update(items)
    return _spans(text, sorted(cuts))


def _inline_items(text: str) -> dict[int, int]:
    """Inline items "1) ... 2) ..." or "1. ... 2. ...": only runs that count up from 1, so that
    "(grade 3) " or "Stage 2." is never taken for an item. Maps each item's start to the
    position of the mark after its number."""
    items: dict[int, int] = {}
    run: dict[int, int] = {}
    for match in _INLINE_ITEM.finditer(text):
        number = int(match.group(1))
        if number == 1:
            if len(run) > 1:
                items.update(run)
            run = {}
        if number == len(run) + 1:
            run[match.start()] = match.end(1)
    if len(run) > 1:
        items.update(run)
    return items


def split_claims(text: str) -> list[tuple[int, int]]:
    """Claim spans of an answer: its sentences, split again at semicolons."""
    cuts = {0, len(text)}
    for start, end in split_sentences(text):
        cuts.update((start, end))
        for match in re.finditer(r";", text[start:end]):
            cuts.add(start + match.end())
    return _spans(text, sorted(cuts))


def _is_abbreviation(text: str, point: int, ending: str) -> bool:
    """Whether the full stop at ``point`` closes an abbreviation rather than a sentence."""
    if not ending.startswith(".") or ending.startswith(".."):
        return False
    before = text[max(0, point - 12):point]
    if _LIST_NUMBER.search(before if point > 12 else "\n" + before):
        return True  # "1." opening a list item (at a line start, after a colon or a sentence)
    word = _WORD_BEFORE.search(text[max(0, point - 12):point + 1])
    if word is None:
        return False
    token = word.group(1).lower()
    if token in ABBREVIATIONS:
        return True
    # A single capital letter is an initial ("J. Smith"); a single lower-case letter is a
    # list marker or a unit only when lower case follows, which is rare: keep those ends.
    return len(token) == 1 and token.isalpha() and word.group(1).isupper()


def _spans(text: str, cuts: list[int]) -> list[tuple[int, int]]:
    spans: list[tuple[int, int]] = []
    carry = None  # the start of a piece with no content, merged into the next one
    for start, end in itertools.pairwise(cuts):
        piece = text[start:end]
        stripped = piece.strip()
        if not stripped:
            continue
        left = start + (len(piece) - len(piece.lstrip()))
        right = left + len(stripped)
        if carry is not None:
            left, carry = carry, None
        if not _CONTENT.search(text[left:right]):
            carry = left
            continue
        spans.append((left, right))
    if carry is not None and spans:  # trailing punctuation joins the last sentence
        spans[-1] = (spans[-1][0], len(text.rstrip()))
    return spans
