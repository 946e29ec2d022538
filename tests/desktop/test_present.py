"""The presentation model: one decision per display feature, for every view."""

from __future__ import annotations

from dataclasses import replace

import pytest
from test_qt_overlay import long_record

from desktop.present import (
    UNCOLOURED_BELOW,
    ExplanationView,
    blend,
    case_pieces,
    completeness_hint,
    legend,
    legend_words,
    levels_note,
    precision_note,
    units_of,
    verdict_view,
)
from engine.record import Reliability


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


def test_claim_views_quote_the_top_sentences_and_say_how_much_support_there_is():
    import math
    from dataclasses import replace

    from desktop.present import claim_units, claim_views, flagged_first
    from engine.record import Answer, Claim, Claims

    base = long_record()
    base = replace(base, answer=Answer("first. second", (1, 2), ("first.", " second"), True,
                                       (-0.1, -0.2)),
                   attribution=replace(base.attribution, per_token=base.attribution.per_token * 2))
    case = base.prompt.case_text
    cut = case.index(" ", len(case) // 2)
    sentences = ((0, cut), (cut + 1, len(case)))
    grounded = Claim("first", (0, 1), (0.75, 0.25), -3.0, ((0, 2.0), (1, 0.1)), 2.2, 0.1,
                     2.2, True)
    unsupported = Claim("second", (0, 1), (0.5, 0.5), -1.0, ((0, 0.01), (1, 0.02)), 0.05, 0.0,
                        0.05, False)
    record = replace(base, claims=Claims(sentences, (grounded, unsupported), "ifr", 3,
                                         math.log(1.25), 0.5))
    first, second = claim_views(record)
    assert first.marker == "✓" and first.evidence[0].text == case[:cut]
    assert first.evidence[0].share == 0.75 and first.evidence[0].drop == 2.0
    assert f"without the case, each of its words is on average {math.exp(2.2):.2f} times less " \
        "likely" in first.support
    assert f"without its top 2 sentences alone, {math.exp(2.2):.2f} times" in first.support
    assert second.marker == "!" and "not grounded in this case" in second.verdict
    assert "under 1.25 times: it rests on nothing in the case" in second.support
    assert [v.text for v in flagged_first([first, second])] == ["second", "first"]
    shift = base.prompt.text.rfind(case)
    units = claim_units(record, 0)
    assert [(u.start - shift, u.end - shift, u.score) for u in units] == [
        (0, cut, 0.75), (cut + 1, len(case), 0.25)]


@pytest.mark.parametrize(("precision", "said"), [
    ("bfloat16-twin", "weights rounded to bfloat16"),
    ("bfloat16", "in bfloat16, the model's own precision"),  # a bfloat16 model: no twin
    ("float32", "in float32, the model's own precision"),
    ("", None),  # a check saved before the precision was recorded
])
def test_the_badge_says_which_precision_its_deletions_ran_in(precision, said):
    check = Reliability("fair", "Use with care: ...", 0.2, 0.1, 0.3, 0.32, "ifr", 0.4, 2, 5.0,
                        precision)
    details = verdict_view(check).details
    # Checked before the levels were recorded: at all five.
    assert "top 1, 5, 10, 20 and 50% of the case words" in levels_note(check)
    assert levels_note(check) in details
    assert "top 1, 5 and 50%" in levels_note(replace(check, percents=(1, 5, 50)))
    if said is None:
        assert precision_note(check) == "" and not any("deletions" in d for d in details)
    else:
        assert said in precision_note(check) and details[-1] == precision_note(check)


def test_completeness_hints_show_only_plain_numbers_from_a_file():
    ran_out = {"integration": "adaptive-simpson", "converged": False, "target_error": 0.05,
               "points": 128}
    assert completeness_hint(ran_out, 0.2) == (" (the budget ran out after 128 points before "
                                               "the 5% target; raise max_steps)")
    # An edited file's text where numbers belong (exit 70 before), or a "converged" string.
    edited = {**ran_out, "target_error": "a", "points": "x", "converged": "yes"}
    assert completeness_hint(edited, 0.2) == (" (the budget ran out before its target; raise "
                                              "max_steps)")
    assert completeness_hint({"steps": "8"}, 0.5) == (" (high: more integration steps would make "
                                                      "the attribution more faithful)")
    assert completeness_hint({"steps": 8}, 0.5, "--steps") == (
        " (high: the path integral has not converged; try --steps 16)")


@pytest.mark.parametrize(("draws", "said"), [
    ((2, 0), "Random: 2 rankings, in pairs"),  # saved before each figure had its own
    ((4, 4), "Random: 4 rankings, in pairs"),
    ((4, 2), "Random: 4 rankings for comprehensiveness, 2 for sufficiency, in pairs"),
])
def test_the_badge_says_how_many_rankings_each_chance_figure_averages(draws, said):
    from desktop.report.pdf import report_html

    check = Reliability("fair", "Use with care: ...", 0.2, 0.1, 0.3, 0.32, "ifr", 0.4, draws[0],
                        5.0, "float32", sufficiency_draws=draws[1])
    assert any(line.startswith(said) for line in verdict_view(check).details)
    record = replace(long_record(30), reliability=check)
    page = report_html(record)
    comp, suff = check.draws
    assert f"+0.1000 (mean of {comp})" in page and f"+0.3200 (mean of {suff})" in page
