"""The overlay on a long case: exact text, colours by score, cheap highlighting."""

from __future__ import annotations

import random
import re

import pytest

from desktop.present import blend, scale_of, units_of
from desktop.qt.overlay import TokenOverlay
from engine.record import (
    Answer,
    Attribution,
    Explanation,
    Hardware,
    MethodInfo,
    ModelInfo,
    Prompt,
    Timings,
    Versions,
)

WORDS = ["ER", "positive", "HER2", "negative", "grade", "2", "Ki-67", "20%", "axillary",
         "node", "biopsy-proven", "mass"]


def long_record(n_words: int = 3000) -> Explanation:
    rng = random.Random(0)
    lines = []
    for _ in range(n_words // 15):
        lines.append(" ".join(rng.choice(WORDS) for _ in range(15)) + ".")
    case = "\n".join(lines)
    prefix = "<|user|>\n"
    text = prefix + case + "\n<|assistant|>\n"
    offsets = [(0, len(prefix))]
    offsets += [(m.start() + len(prefix), m.end() + len(prefix))
                for m in re.finditer(r"\S+", case)]
    offsets.append((len(prefix) + len(case), len(text)))
    n = len(offsets)
    attributable = tuple([False] + [True] * (n - 2) + [False])
    scores = tuple(0.0 if not a else rng.uniform(-1, 1) for a in attributable)
    return Explanation(
        versions=Versions("0", "0", "0", "0"),
        model=ModelInfo("synthetic", "test", "0" * 64, "float32", "cpu", 0, 8192),
        method=MethodInfo("ig", {"steps": 1}),
        prompt=Prompt(text=text, case_text=case, token_ids=tuple(range(n)),
                      tokens=tuple(text[s:e] for s, e in offsets), attributable=attributable,
                      offsets=tuple(offsets)),
        answer=Answer("ok", (1,), ("ok",), True, (-0.1,)),
        attribution=Attribution(scores, (scores,), 0.0),
        timings=Timings(0, 0, 0), hardware=Hardware("cpu", 0, None))


def test_long_case_renders_exactly_and_highlights_without_rebuilding(qtbot):
    record = long_record()
    overlay = TokenOverlay()
    qtbot.addWidget(overlay)
    units = units_of(record, None, "word")
    assert len(units) > 2900
    overlay.show_units(record, units)
    assert overlay.toPlainText() == record.prompt.case_text
    top = max(units, key=lambda u: abs(u.score))
    r, g, b = blend(top.score, scale_of(units))
    assert f"background-color:#{r:02x}{g:02x}{b:02x}" in overlay.toHtml()

    document = overlay.document()
    revision = document.revision()
    for index in (5, 1500, len(units) - 1):
        overlay.highlight(index)
        (selection,) = overlay.extraSelections()
        assert selection.cursor.selectedText() == units[index].text
    assert overlay.document() is document and document.revision() == revision
    overlay.highlight(-1)
    assert overlay.extraSelections() == []


def test_sentence_granularity_on_long_case(qtbot):
    record = long_record(600)
    sentences = units_of(record, record.attribution.per_token[0], "sentence")
    assert len(sentences) == 40
    assert sum(u.score for u in sentences) == pytest.approx(sum(record.attribution.per_token[0]))
