"""The reliability check of one explanation: its numbers, its verdict, cancellation."""

from __future__ import annotations

import copy
from dataclasses import replace

import pytest
import torch
from tiny import CASE

from engine.defaults import CHECK_PERCENTS
from engine.errors import Cancelled, InvalidSettingsError
from engine.explain import ExplainRequest, explain
from engine.methods import get_method
from engine.methods.base import parse_baseline
from engine.metrics import MetricSettings, faithfulness, random_scores
from engine.models import ModelRequest, load_model
from engine.record import Explanation
from engine.reliability import (
    antithetic_rankings,
    check_reliability,
    comparable,
    problem_of,
    spearman,
)
from engine.task import TaskState
from engine.verdict import close_call, close_figures, summary_of, verdict_of


@pytest.fixture(scope="module")
def loaded(tiny_model_folder):
    return load_model(ModelRequest(str(tiny_model_folder)))


def test_spearman():
    a = torch.tensor([0.1, 0.5, 0.2, 0.9])
    assert spearman(a, a * 3 + 1) == pytest.approx(1.0)
    assert spearman(a, -a) == pytest.approx(-1.0)
    assert spearman(a, torch.ones(4)) == 0.0
    # Ties share their average rank: ranks (1, 2.5, 2.5, 4) against (1, 2, 3, 4).
    tied = torch.tensor([1.0, 2.0, 2.0, 3.0])
    expected = (torch.tensor([-1.5, 0, 0, 1.5]) @ torch.tensor([-1.5, -0.5, 0.5, 1.5])) / (
        torch.tensor([-1.5, 0, 0, 1.5]).norm() * torch.tensor([-1.5, -0.5, 0.5, 1.5]).norm())
    assert spearman(tied, torch.arange(4.0)) == pytest.approx(float(expected))


def test_shares_are_compared_with_magnitudes():
    shares = torch.tensor([0.1, 0.7, 0.05, 0.15])
    signed = torch.tensor([0.2, -1.4, 0.1, -0.3])  # the same ranking by size, mixed signs
    assert spearman(*comparable(shares, False, signed, True)) == pytest.approx(1.0)
    assert spearman(shares, signed) < 0.5
    # Two signed (or two share) methods keep their signs: opposite directions disagree.
    assert spearman(*comparable(signed, True, -signed, True)) == pytest.approx(-1.0)


def test_verdicts():
    assert verdict_of(0.30, 0.10, 0.01, 0.05, 0.6) == "strong"
    assert verdict_of(0.30, 0.10, 0.01, 0.05, 0.1) == "fair"  # a second method disagrees
    assert verdict_of(0.15, 0.10, 0.01, 0.05, 0.6) == "fair"  # not twice chance
    assert verdict_of(0.30, 0.10, 0.09, 0.05, 0.6) == "fair"  # keeping them is no better
    assert verdict_of(0.05, 0.10, 0.01, 0.05, 0.9) == "weak"  # below chance
    assert verdict_of(0.105, 0.10, 0.01, 0.05, 0.9) == "weak"  # a tie within 10% is no win
    assert verdict_of(0.30, 0.10, 0.3044, 0.3047, 0.9) == "fair"  # keeping them: a tie
    # An answer the model is all but certain of: ratios of hairs decide nothing (both were
    # "strong" before the floor).
    assert verdict_of(3e-4, 1e-4, 1e-4, 5e-4, 0.9) == "weak"
    assert verdict_of(0.001, -0.02, 0.1, 0.2, 0.5) == "fair"  # above chance, but a hair


def test_the_badge_sentence_never_reads_a_ratio_of_hairs_as_a_win():
    # "3.0x as much as random words" under a "Do not rely" verdict, before.
    weak = summary_of(3e-4, 1e-4, 1e-4, 5e-4, 0.9, "ifr")
    assert weak.startswith("Do not rely") and "x as much" not in weak
    assert "+0.0003, against +0.0001" in weak and "too small to tell them apart" in weak
    strong = summary_of(0.30, 0.10, 0.01, 0.05, 0.6, "ifr")
    assert strong.startswith("Trustworthy here") and "3.0x as much" in strong


@pytest.mark.parametrize(("method", "second"), [("ig", "ifr"), ("ifr", "input-x-gradient")])
def test_check_on_a_real_explanation(loaded, method, second):
    record = explain(ExplainRequest(CASE, method=method, steps=4 if method == "ig" else None,
                                    target="recommend endocrine therapy"), loaded)
    check = check_reliability(loaded.model, loaded.tokenizer, record, precision="model")
    assert check.verdict in ("strong", "fair", "weak") and check.precision == "float32"
    assert check.percents == CHECK_PERCENTS
    levels = MetricSettings(soft=False, percents=CHECK_PERCENTS)  # the check's levels
    assert check.second_method == second
    assert -1 <= check.rank_correlation <= 1 and check.random_draws in (2, 4)
    assert "rank correlation" in check.summary and check.seconds > 0
    # The numbers are the metrics of the record's own attribution.
    baseline = parse_baseline("pad", loaded.tokenizer, len(loaded.tokenizer))
    ours = faithfulness(loaded.model, problem_of(record, "cpu"),
                        torch.tensor(record.attribution.sequence), baseline, levels)
    # Within float rounding: batches padded to other lengths round differently (about 1e-10).
    assert check.comprehensiveness == pytest.approx(ours.values["comprehensiveness"], abs=1e-7)
    assert check.sufficiency == pytest.approx(ours.values["sufficiency"], abs=1e-7)
    # Chance is the mean of the same metrics over a seeded random ranking and its reverse, and
    # over a second pair exactly when the first pair left a close call.
    drawn = [random_scores((len(record.prompt.token_ids),), seed=seed) for seed in (0, 1)]
    chance = [faithfulness(loaded.model, problem_of(record, "cpu"), ranking, baseline, levels)
              for ranking in (drawn[0], 1 - drawn[0], drawn[1], 1 - drawn[1])]

    def mean(name, rankings):
        return sum(c.values[name] for c in chance[:rankings]) / rankings

    first_pair = (ours.values["comprehensiveness"], mean("comprehensiveness", 2),
                  ours.values["sufficiency"], mean("sufficiency", 2), check.rank_correlation)
    again = close_figures(*first_pair)  # a second pair for each figure that is close
    assert check.draws == tuple(4 if close else 2 for close in again)
    assert check.sufficiency_draws == check.draws[1]
    assert check.random_comprehensiveness == pytest.approx(
        mean("comprehensiveness", check.draws[0]), abs=1e-7)
    assert check.random_sufficiency == pytest.approx(
        mean("sufficiency", check.draws[1]), abs=1e-7)
    # Agreement: IFR's shares against the signed method's magnitudes (and the other way).
    spec = get_method(second)
    other = spec.run(loaded.model, loaded.tokenizer, problem_of(record, "cpu"),
                     **{**spec.defaults(), "matrix": False})
    case = torch.tensor(record.prompt.attributable)
    ours_case = torch.tensor(record.attribution.sequence, dtype=torch.float64)[case]
    theirs = other.sequence[case]
    assert check.rank_correlation == pytest.approx(spearman(ours_case.abs(), theirs.abs()),
                                                   abs=1e-9)
    assert check.verdict == verdict_of(check.comprehensiveness, check.random_comprehensiveness,
                                       check.sufficiency, check.random_sufficiency,
                                       check.rank_correlation)

    checked = replace(record, reliability=check)
    assert Explanation.from_json(checked.to_json()) == checked


def test_close_calls():
    # Comprehensiveness within 10% of beating chance (1.1 x chance's) is close, whatever rho.
    assert close_call(0.115, 0.10, 0.01, 0.05, 0.0)
    assert close_call(0.105, 0.10, 0.01, 0.05, 0.9)
    assert not close_call(0.15, 0.10, 0.01, 0.05, 0.1)  # fair whatever chance's next pair says
    # Near twice chance's: close only when the second method agrees (else strong is out).
    assert close_call(0.21, 0.10, 0.01, 0.05, 0.6)
    assert not close_call(0.21, 0.10, 0.01, 0.05, 0.1)
    # Sufficiency within 2.5% of beating chance's (0.9 x), when strong is possible.
    assert close_call(0.30, 0.10, 0.0449, 0.05, 0.6)
    assert not close_call(0.30, 0.10, 0.040, 0.05, 0.6)
    assert not close_call(0.30, 0.10, 0.0449, 0.05, 0.1)
    assert not close_call(0.15, 0.10, 0.0449, 0.05, 0.6)  # far from strong: fair either way
    # Which figure is close: only its chance is drawn again.
    assert close_figures(0.105, 0.10, 0.0449, 0.05, 0.9) == (True, False)  # strong far off
    assert close_figures(0.21, 0.10, 0.01, 0.05, 0.6) == (True, False)
    assert close_figures(0.30, 0.10, 0.0449, 0.05, 0.6) == (False, True)
    assert close_figures(0.21, 0.10, 0.0449, 0.05, 0.6) == (True, True)
    assert close_figures(0.21, 0.10, 0.0449, 0.05, 0.1) == (False, False)


@pytest.mark.parametrize(("close", "draws"), [((True, True), (4, 4)), ((False, False), (2, 2)),
                                              ((True, False), (4, 2)), ((False, True), (2, 4))])
def test_a_close_call_draws_a_second_pair_for_the_close_figure(loaded, monkeypatch, close,
                                                                draws):
    import engine.reliability

    record = explain(ExplainRequest(CASE, target="recommend endocrine therapy"), loaded)
    first = check_reliability(loaded.model, loaded.tokenizer, record, close_pairs=0)
    monkeypatch.setattr(engine.reliability, "close_figures", lambda *figures: close)
    check = check_reliability(loaded.model, loaded.tokenizer, record)
    assert check.draws == draws
    assert check.comprehensiveness == pytest.approx(first.comprehensiveness, abs=1e-9)
    # A figure not drawn again keeps the first pair's chance; one drawn again moves.
    for name, again in zip(("random_comprehensiveness", "random_sufficiency"), close,
                           strict=True):
        assert (getattr(check, name) == pytest.approx(getattr(first, name), abs=1e-9)) \
            is not again
    reopened = Explanation.from_json(replace(record, reliability=check).to_json()).reliability
    assert reopened.draws == draws


def test_random_rankings_come_in_antithetic_pairs():
    rankings = antithetic_rankings((101,), pairs=2)
    assert len(rankings) == 4
    for drawn, reverse in zip(rankings[::2], rankings[1::2], strict=True):
        order = drawn.argsort(descending=True)
        assert torch.equal(reverse.argsort(descending=True), order.flip(0))
        # The top words of one are never the top words of the other, up to half of the case.
        for count in (1, 5, 10, 20, 50):
            top = set(order[:count].tolist())
            assert top.isdisjoint(reverse.argsort(descending=True)[:count].tolist())
    assert not torch.equal(rankings[0], rankings[2])  # each pair has its own seed
    # A close call's second pair continues the seeds.
    assert all(torch.equal(a, b) for a, b in zip(
        antithetic_rankings((101,), pairs=1, first_seed=1), rankings[2:], strict=True))


def test_check_reports_its_three_parts_in_order(loaded):
    record = explain(ExplainRequest(CASE, target="recommend surgery"), loaded)

    class Heard(TaskState):
        def __init__(self):
            super().__init__()
            self.reports = []

        def progressed(self, stage, done, total):
            self.reports.append((stage, done, total))

    heard = Heard()
    check_reliability(loaded.model, loaded.tokenizer, record, state=heard)
    # The parts' own progress (the second method's, the prompts') would jump the bar about.
    assert heard.reports == [("reliability", done, 3) for done in range(4)]


def test_an_explanation_that_ranks_nothing_is_worth_chance(loaded):
    # Every case word scored alike: deleting "the top words" would delete the first words of
    # the text, which can beat chance; a ranking of equal words is a random ranking.

    record = explain(ExplainRequest(CASE, target="recommend surgery"), loaded)
    flat = tuple(0.5 if a else 0.0 for a in record.prompt.attributable)
    record = replace(record, attribution=replace(record.attribution, sequence=flat,
                                                 per_token=None))
    check = check_reliability(loaded.model, loaded.tokenizer, record)
    assert check.comprehensiveness == check.random_comprehensiveness
    assert check.sufficiency == check.random_sufficiency
    assert check.verdict == "weak"


def test_an_explanation_of_a_span_is_not_checked(loaded):
    # The check watches the whole answer: it would judge a span's explanation on tokens it
    # does not claim to explain.
    record = explain(ExplainRequest(CASE, target="recommend surgery",
                                    options=(("span", "1:1"),)), loaded)
    with pytest.raises(InvalidSettingsError, match="explains answer tokens 1:1 only"):
        check_reliability(loaded.model, loaded.tokenizer, record)


def test_check_cancels(loaded):
    record = explain(ExplainRequest(CASE, steps=2, target="recommend surgery"), loaded)

    class Stop(TaskState):
        def progressed(self, stage, done, total):
            self.cancel()

    with pytest.raises(Cancelled):
        check_reliability(loaded.model, loaded.tokenizer, record, state=Stop())


def test_the_check_averages_the_levels_it_is_given_and_records_them(loaded):
    record = explain(ExplainRequest(CASE, target="recommend endocrine therapy"), loaded)
    every = check_reliability(loaded.model, loaded.tokenizer, record, close_pairs=0,
                              precision="model", percents=(1, 5, 10, 20, 50))
    ends = check_reliability(loaded.model, loaded.tokenizer, record, close_pairs=0,
                             precision="model", percents=(1, 50))
    assert (every.percents, ends.percents) == ((1, 5, 10, 20, 50), (1, 50))
    assert ends.comprehensiveness != pytest.approx(every.comprehensiveness, rel=1e-3)
    baseline = parse_baseline("pad", loaded.tokenizer, len(loaded.tokenizer))
    ours = faithfulness(loaded.model, problem_of(record, "cpu"),
                        torch.tensor(record.attribution.sequence), baseline,
                        MetricSettings(soft=False, percents=(1, 50)))
    # Within float rounding (batches padded to other lengths), as above.
    assert ends.comprehensiveness == pytest.approx(ours.values["comprehensiveness"], abs=1e-8)
    for wrong in ((), (50, 1), (1, 1), (3,), (1.0, 5, 50)):
        with pytest.raises(ValueError, match="levels"):
            check_reliability(loaded.model, loaded.tokenizer, record, percents=wrong)


@pytest.fixture(scope="module")
def checked_file(loaded) -> dict:

    record = explain(ExplainRequest(CASE, target="recommend surgery"), loaded)
    check = check_reliability(loaded.model, loaded.tokenizer, record, close_pairs=0)
    return replace(record, reliability=check).to_dict()


def test_a_file_keeps_the_check_s_levels(checked_file):
    data = copy.deepcopy(checked_file)
    assert Explanation.from_dict(data).reliability.percents == CHECK_PERCENTS
    del data["reliability"]["percents"]  # saved before the levels were recorded: all five
    assert Explanation.from_dict(data).reliability.percents == (1, 5, 10, 20, 50)


@pytest.mark.parametrize("percents", [[], [50, 1], [0, 5], [5, 100], [1, 1], [3], [2, 99],
                                      [1, 5, 10, 20, 50, 50], ["1"], [True], [1.0], [[1]],
                                      None, 5, "1,5"])
def test_a_file_with_levels_no_check_takes_is_refused(checked_file, percents):
    from engine.errors import InvalidInputError

    data = copy.deepcopy(checked_file)
    data["reliability"]["percents"] = percents
    with pytest.raises(InvalidInputError, match="not a valid explanation file"):
        Explanation.from_dict(data)
