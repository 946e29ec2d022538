"""How many random rankings the reliability check needs, and how to draw them.

The check's verdict compares the explanation's comprehensiveness and sufficiency with chance's,
and chance is estimated from random rankings: too few, and the verdict on a case near a
threshold depends on the seed. For each demo case (the window's defaults: the default method,
up to 64 answer tokens) this computes the explanation's AOPC, 8 independent random rankings'
and the reverses of the first 4 (one batched pass per case), then asks how often each way of
drawing chance gives the verdict that all 12 rankings give, and how much a pair's mean varies
when its two rankings are independent or each other's reverse.

    python -m benchmarks.reliability_draws --out docs/evaluation.md
"""

from __future__ import annotations

import argparse
import itertools
import json
import platform
import statistics
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path

import torch

import engine  # noqa: F401  (offline before transformers)
from benchmarks.report import replace_section

ROOT = Path(__file__).resolve().parent.parent
HEADING = "## Reliability check: random rankings"
INDEPENDENT, REVERSED = 8, 4
THREE = "3 independent rankings (the check until now)"
DEFAULT = "1 antithetic pair, a second for a figure it leaves close (the check's default)"
DATA = ROOT / "docs/evaluation/reliability-draws.json"
# (comprehensiveness, sufficiency) AOPC of one random ranking; None where it was not scored
Chance = tuple[float | None, float | None]


def collect(limit: int | None) -> list[dict]:
    from engine.cases import load_cases
    from engine.explain import ExplainRequest, explain
    from engine.methods import METHODS, get_method, second_opinion
    from engine.metrics import deletion_aopc, random_scores
    from engine.models import ModelRequest, load_model
    from engine.reliability import comparable, problem_of, spearman
    from engine.task import TaskState

    loaded = load_model(ModelRequest("embedded", device="cpu"))
    cases = load_cases(ROOT / "resources/cases/breast_cancer_cases.jsonl")[:limit]
    found = []
    for number, case in enumerate(cases, 1):
        start = time.perf_counter()
        record = explain(ExplainRequest(case.text, matrix=False), loaded)
        problem = problem_of(record, "cpu")
        scores = torch.tensor(record.attribution.sequence, dtype=torch.float64)
        drawn = [random_scores(scores.shape, seed=seed) for seed in range(INDEPENDENT)]
        reverses = [1 - ranking for ranking in drawn[:REVERSED]]
        (comp, suff), *chance = deletion_aopc(loaded.model, problem,
                                              [scores, *drawn, *reverses])
        second = get_method(second_opinion(record.method.name))
        params = {**second.defaults(), "matrix": False} if "matrix" in second.defaults() \
            else second.defaults()
        other = second.attribute(loaded.model, loaded.tokenizer, problem, state=TaskState(),
                                 **params)
        on_case = problem.attributable.cpu()
        rho = spearman(*comparable(scores[on_case], METHODS[record.method.name].signed,
                                   other.sequence[on_case], second.signed))
        found.append({"case": case.id, "method": record.method.name, "comp": comp,
                      "suff": suff, "rho": rho, "independent": chance[:INDEPENDENT],
                      "reversed": chance[INDEPENDENT:]})
        print(f"{number}/{len(cases)} {case.id}: {time.perf_counter() - start:.1f} s",
              flush=True)
    return found


def _verdict(case: dict, chance: Sequence[Chance]) -> str:
    from engine.verdict import verdict_of

    comps, suffs = _figures(chance)
    return verdict_of(case["comp"], statistics.mean(comps), case["suff"],
                      statistics.mean(suffs), case["rho"])


def _figures(chance: Sequence[Chance]) -> tuple[list[float], list[float]]:
    """Chance's comprehensiveness and sufficiency figures, each from the rankings scored for
    it (None: a ranking drawn for the other figure alone)."""
    return ([c for c, _ in chance if c is not None], [s for _, s in chance if s is not None])


def designs(case: dict) -> dict[str, list[list[Chance]]]:
    """For each design compared, every way of drawing its chance from this case's rankings."""
    from engine.verdict import close_figures

    drawn, reverses = case["independent"], case["reversed"]
    pairs = [[drawn[i], reverses[i]] for i in range(REVERSED)]

    def adaptive(first: int) -> list[Chance]:
        chance = pairs[first]
        comp = statistics.mean(c for c, _ in chance)
        suff = statistics.mean(s for _, s in chance)
        more_comp, more_suff = close_figures(case["comp"], comp, case["suff"], suff,
                                             case["rho"])
        return chance + [(c if more_comp else None, s if more_suff else None)
                         for c, s in pairs[(first + 1) % REVERSED] if more_comp or more_suff]

    return {
        "1 random ranking": [[c] for c in drawn],
        "2 independent rankings": [list(s) for s in itertools.combinations(drawn, 2)],
        THREE: [list(s) for s in itertools.combinations(drawn, 3)],
        "4 independent rankings": [list(s) for s in itertools.combinations(drawn, 4)],
        "1 antithetic pair": pairs,
        DEFAULT: [adaptive(first) for first in range(REVERSED)],
        "2 antithetic pairs": [a + b for a, b in itertools.combinations(pairs, 2)],
    }


def analyse(found: list[dict]) -> dict:
    """Per design: [same verdict as the reference's, stronger, weaker, draws, prompts, draws
    with a second pass (a close call)]."""
    order = ("weak", "fair", "strong")
    tallies: dict[str, list[int]] = {}
    ratios: dict[str, list[tuple[float, float]]] = {"comprehensiveness": [], "sufficiency": []}
    verdicts: dict[str, int] = {}
    for case in found:
        reference = _verdict(case, case["independent"] + case["reversed"])
        verdicts[reference] = verdicts.get(reference, 0) + 1
        for name, draws in designs(case).items():
            tally = tallies.setdefault(name, [0, 0, 0, 0, 0, 0])
            for chance in draws:
                got = order.index(_verdict(case, chance)) - order.index(reference)
                tally[0 if got == 0 else 1 if got > 0 else 2] += 1
                tally[3] += 1
                again = name == DEFAULT and len(chance) > 2  # its own reference forward again
                # The explanation's 10 prompts and 5 per figure scored for each ranking.
                tally[4] += 1 + 10 + 5 * sum(map(len, _figures(chance))) + again
                tally[5] += again
        drawn, reverses = case["independent"], case["reversed"]
        for index, name in enumerate(ratios):
            independent = [(drawn[2 * i][index] + drawn[2 * i + 1][index]) / 2
                           for i in range(REVERSED)]
            antithetic = [(drawn[i][index] + reverses[i][index]) / 2 for i in range(REVERSED)]
            ratios[name].append((statistics.pvariance(antithetic),
                                 statistics.pvariance(independent)))
    variance = {name: sum(a for a, _ in pairs) / sum(b for _, b in pairs)
                for name, pairs in ratios.items()}
    return {"tallies": tallies, "variance": variance, "verdicts": verdicts}


def report(found: list[dict], summary: dict, when: str) -> str:
    tallies, variance = summary["tallies"], summary["variance"]
    verdicts = ", ".join(f"{count} {name}" for name, count in sorted(summary["verdicts"].items()))
    lines = [
        HEADING, "",
        f"Run {datetime.now(UTC):%Y-%m-%d} with `python -m benchmarks.reliability_draws` "
        f"({when}; the rankings' scores are kept in {DATA.relative_to(ROOT)}, "
        "and `--reuse` analyses them again); "
        f"torch {torch.__version__}, {platform.machine()} CPU. {len(found)} demo cases, the "
        f"window's defaults ({found[0]['method']}, up to 64 answer tokens). For each case: "
        f"{INDEPENDENT} independent seeded random rankings and the reverses of the first "
        f"{REVERSED}, every one scored as the reliability check scores it. Reference: the "
        f"verdict with chance from all {INDEPENDENT + REVERSED} rankings ({verdicts}); every "
        "design's rankings are among those 12, which favours the designs with more rankings a "
        "little. A close call (engine/verdict.py, `close_figures`): the explanation's "
        "comprehensiveness within 10% of a threshold that decides the verdict, or, when strong "
        "is within reach, its sufficiency within 2.5%; the check's second pair is scored for "
        "the figure that is close alone.", "",
        "| chance drawn from | prompts per check (mean) | verdict as the reference's | "
        "stronger | weaker |", "|---|---|---|---|---|",
    ]
    for name, (same, stronger, weaker, total, prompts, _) in tallies.items():
        lines.append(f"| {name} | {prompts / total:.0f} | {same} of {total} "
                     f"({100 * same / total:.1f}%) | {stronger} | {weaker} |")
    default, three = tallies[DEFAULT], tallies[THREE]
    lines += [
        "",
        f"A pair's mean varies {variance['comprehensiveness']:.2f} times as much "
        f"(comprehensiveness) and {variance['sufficiency']:.2f} times as much (sufficiency) "
        f"when its second ranking is the first's reverse as when the two are independent "
        f"(variance over {REVERSED} pairs per case, summed over cases). A reversed random "
        "ranking is itself uniformly random, so the pair estimates the same chance level; its "
        "top words are disjoint from the first ranking's up to half of the case, so the two "
        "cannot both happen to delete a word the answer rests on.",
        "",
        f"The check now draws one antithetic pair and a second for a figure it leaves close: "
        f"{default[4] / default[3]:.0f} prompts on average (a second pair in "
        f"{_share(default[5], default[3])} of checks) instead of three "
        f"independent rankings' 41, and its verdict matched the reference's in "
        f"{_share(default[0], default[3])} of draws against {_share(three[0], three[3])}. "
        "The 10% band is about one pair's spread, but it was chosen on these same 20 cases, "
        "so for new cases that share is an optimistic estimate. Where a verdict differs it is "
        "mostly stronger than the reference's: a few rankings, of a quantity that now and then "
        "jumps (a random ranking that deletes a word the answer rests on), more often miss the "
        "jump than catch it, so chance tends to come out low. The badge's tooltip gives the "
        "numbers.",
    ]
    return "\n".join(lines) + "\n"


def _share(part: int, whole: int) -> str:
    return f"{100 * part / whole:.0f}%"


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=ROOT / "docs/evaluation.md")
    parser.add_argument("--cases", type=int, default=None, help="only the first N demo cases")
    parser.add_argument("--data", type=Path, default=DATA,
                        help="where the rankings' scores are kept")
    parser.add_argument("--reuse", action="store_true",
                        help="analyse the scores kept in --data instead of computing them")
    args = parser.parse_args(argv)
    start = time.perf_counter()
    if args.reuse:
        found = json.loads(args.data.read_text())
    else:
        found = collect(args.cases)
        args.data.parent.mkdir(parents=True, exist_ok=True)
        args.data.write_text(json.dumps(found, indent=1) + "\n")
    summary = analyse(found)
    when = ("analysed again from the kept scores" if args.reuse
            else f"{(time.perf_counter() - start) / 60:.0f} min")
    text = report(found, summary, when)
    print(text)
    replace_section(args.out, HEADING, text)


if __name__ == "__main__":
    main()
