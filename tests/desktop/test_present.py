"""The presentation model: one decision per display feature, for every view."""

from __future__ import annotations

import pytest
from test_qt_overlay import long_record

from desktop.present import (
    UNCOLOURED_BELOW,
    ExplanationView,
    blend,
    case_pieces,
    legend,
    legend_words,
    units_of,
)


def test_pieces_cover_the_case_exactly_and_leave_small_scores_plain():
    record = long_record()
    units = units_of(record)
    pieces = case_pieces(record, units)
    assert "".join(p.text for p in pieces) == record.prompt.case_text
    scale = max(abs(u.score) for u in units)
    for piece in pieces:
        if piece.index < 0:
            assert piece.background is None
            continue
        small = abs(piece.score) < UNCOLOURED_BELOW * scale
        assert (piece.background is None) == small
        if not small:
            assert piece.background == blend(piece.score, scale)


def test_shares_get_a_one_sided_legend_and_signed_scores_a_two_sided_one():
    assert [s.value for s in legend(2.0, "ig")] == [-2.0, -1.0, 0.0, 1.0, 2.0]
    assert [s.value for s in legend(2.0, "ifr")] == [0.0, 0.5, 1.0, 1.5, 2.0]
    assert "no direction" in legend_words("ifr") and "against" in legend_words("ig")


def test_the_view_ranks_words_and_their_shares_add_up():
    view = ExplanationView.from_record(long_record(), top=5)
    assert [w.rank for w in view.top_words] == [1, 2, 3, 4, 5]
    magnitudes = [abs(w.score) for w in view.top_words]
    assert magnitudes == sorted(magnitudes, reverse=True)
    assert all(0 <= w.share <= 1 for w in view.top_words)
    listed = [u for u in view.units if any(c.isalnum() for c in u.text)]
    assert view.top_words[0].share == pytest.approx(
        abs(view.top_words[0].score) / sum(abs(u.score) for u in listed))
