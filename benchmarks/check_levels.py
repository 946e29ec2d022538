"""How many deletion levels the reliability check needs.

The check's AOPC is the mean of the answer's probability drop over five levels, the top 1, 5,
10, 20 and 50% of the case deleted or kept alone (METHODS.md). Every level is one perturbed
prompt per ranking and kind, and each prompt runs the whole answer again, so the levels are
most of the check's cost. For each demo case (the window's defaults) this scores every level
for the explanation, 8 independent random rankings and the reverses of the first 4 (as
``benchmarks.reliability_draws`` does, level by level), counts the tokens each prompt runs,
and asks, for every subset of the levels, how often the check's rule (one antithetic pair, a
second for a figure it leaves close) gives the verdict that all five levels and all 12
rankings give, and what it costs.

    python -m benchmarks.check_levels --out docs/evaluation.md
    python -m benchmarks.check_levels --held-out --out docs/evaluation.md

``--held-out`` scores the 16 cases of benchmarks/data/heldout_cases.jsonl instead, written
after the check's levels were chosen on the demo cases, so they test that choice.
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
from engine.defaults import PERCENTS

ROOT = Path(__file__).resolve().parent.parent
HEADING = "## Reliability check: how many deletion levels"
HELD_OUT_HEADING = "## Reliability check: the levels on held-out cases"
INDEPENDENT, REVERSED = 8, 4
DATA = ROOT / "docs/evaluation/check-levels.json"
Draw = tuple[list[int], list[int]]  # rankings behind chance's comprehensiveness, sufficiency
DEMO_CASES = ROOT / "resources/cases/breast_cancer_cases.jsonl"
HELD_OUT = ROOT / "benchmarks/data/heldout_cases.jsonl"
HELD_OUT_DATA = ROOT / "docs/evaluation/check-levels-held-out.json"


def collect(limit: int | None, cases_file: Path = DEMO_CASES) -> list[dict]:
    from engine.cases import load_cases
    from engine.explain import ExplainRequest, explain
    from engine.methods import METHODS, get_method, second_opinion
    from engine.metrics import deletion_drops, perturbed_prompts, random_scores, tokens_to_run
    from engine.models import ModelRequest, load_model
    from engine.reliability import comparable, problem_of, spearman
    from engine.task import TaskState

    loaded = load_model(ModelRequest("embedded", device="cpu"))
    cases = load_cases(cases_file)[:limit]
    found = []
    for number, case in enumerate(cases, 1):
        start = time.perf_counter()
        record = explain(ExplainRequest(case.text, matrix=False), loaded)
        problem = problem_of(record, "cpu")
        scores = torch.tensor(record.attribution.sequence, dtype=torch.float64)
        drawn = [random_scores(scores.shape, seed=seed) for seed in range(INDEPENDENT)]
        rankings = [scores, *drawn, *(1 - ranking for ranking in drawn[:REVERSED])]
        drops = deletion_drops(loaded.model, problem, rankings)  # [R, K, 2]
        tokens = torch.tensor(tokens_to_run(problem, perturbed_prompts(problem, rankings)))
        second = get_method(second_opinion(record.method.name))
        params = {**second.defaults(), "matrix": False} if "matrix" in second.defaults() \
            else second.defaults()
        other = second.attribute(loaded.model, loaded.tokenizer, problem, state=TaskState(),
                                 **params)
        on_case = problem.attributable.cpu()
        rho = spearman(*comparable(scores[on_case], METHODS[record.method.name].signed,
                                   other.sequence[on_case], second.signed))
        found.append({"case": case.id, "method": record.method.name, "rho": rho,
                      "answer_tokens": len(record.answer.token_ids),
                      "case_tokens": int(problem.attributable.sum()),
                      "drops": drops.tolist(),  # [13, 5, 2]: explanation, 8 drawn, 4 reversed
                      "reference_tokens": int(tokens[0]),
                      "tokens": tokens[1:].view(len(rankings), len(PERCENTS), 2).tolist()})
        print(f"{number}/{len(cases)} {case.id}: {time.perf_counter() - start:.1f} s",
              flush=True)
    return found


def _aopc(drops: list, levels: Sequence[int]) -> tuple[float, float]:
    """(comprehensiveness, sufficiency) of one ranking over the levels (indices into
    PERCENTS)."""
    return (statistics.mean(drops[k][0] for k in levels),
            statistics.mean(drops[k][1] for k in levels))


def _verdict(case: dict, levels: Sequence[int], draw: Draw) -> str:
    from engine.verdict import verdict_of

    comp, suff = _aopc(case["drops"][0], levels)
    chance_comp = statistics.mean(_aopc(case["drops"][1 + r], levels)[0] for r in draw[0])
    chance_suff = statistics.mean(_aopc(case["drops"][1 + r], levels)[1] for r in draw[1])
    return verdict_of(comp, chance_comp, suff, chance_suff, case["rho"])


def _pair(i: int) -> list[int]:
    """Rankings (indices among the 12 random ones) of the i-th antithetic pair."""
    return [i, INDEPENDENT + i]


def _all(rankings: Sequence[int]) -> Draw:
    """Chance's two figures from the same rankings."""
    return list(rankings), list(rankings)


def check_draws(case: dict, levels: Sequence[int]) -> list[Draw]:
    """The rankings the check's rule uses, starting from each of the REVERSED pairs: one pair,
    and the next for each figure that it leaves close (engine/verdict.py, ``close_figures``)."""
    from engine.verdict import close_figures

    draws = []
    for first in range(REVERSED):
        chance = _pair(first)
        comp, suff = _aopc(case["drops"][0], levels)
        found = [_aopc(case["drops"][1 + r], levels) for r in chance]
        close = close_figures(comp, statistics.mean(c for c, _ in found), suff,
                              statistics.mean(s for _, s in found), case["rho"])
        more = _pair((first + 1) % REVERSED)
        comp_draw, suff_draw = (chance + more if again else chance for again in close)
        draws.append((comp_draw, suff_draw))
    return draws


def _tokens(case: dict, levels: Sequence[int], draw: Draw) -> int:
    """Tokens run by a check with the explanation, a first pair (common to both figures) and
    for each figure the rest of its rankings (a second pair, its prompts of that kind alone).
    Within one pass a pair's second ranking deletes at 50% what its first keeps (and the
    reverse) when the case has an even number of tokens: those two prompts run once."""
    first = [r for r in draw[0] if r in draw[1]]
    kinds_of = {r: [kind for kind in (0, 1) if r in draw[kind]] for r in {*draw[0], *draw[1]}}
    tokens = case["reference_tokens"]
    for r in (-1, *first, *(r for r in kinds_of if r not in first)):
        kinds = (0, 1) if r == -1 else kinds_of[r]
        for k in levels:
            repeated = (r >= INDEPENDENT and PERCENTS[k] == 50 and case["case_tokens"] % 2 == 0
                        and len(kinds) == 2)
            tokens += 0 if repeated else sum(case["tokens"][1 + r][k][kind] for kind in kinds)
    return tokens


def analyse(found: list[dict]) -> list[dict]:
    """Per subset of the levels: its verdicts against the reference's and its cost."""
    every = tuple(range(len(PERCENTS)))
    rows = []
    for size in range(len(PERCENTS), 0, -1):
        for levels in itertools.combinations(every, size):
            same = stronger = weaker = total = second = 0
            tokens = []
            for case in found:
                reference = _verdict(case, every, _all(range(INDEPENDENT + REVERSED)))
                for draw in check_draws(case, levels):
                    order = ("weak", "fair", "strong")
                    got = order.index(_verdict(case, levels, draw)) - order.index(reference)
                    same += got == 0
                    stronger += got > 0
                    weaker += got < 0
                    total += 1
                    second += any(len(rankings) > 2 for rankings in draw)
                    tokens.append(_tokens(case, levels, draw))
            rows.append({"levels": [PERCENTS[k] for k in levels], "same": same,
                         "stronger": stronger, "weaker": weaker, "total": total,
                         "second": second, "tokens": statistics.mean(tokens)})
    return rows


TABLE_HEAD = ("| levels (% of the case) | tokens run per check (mean) | against five levels | "
              "verdict as the reference's | stronger | weaker | a second pair |",
              "|---|---|---|---|---|---|---|")


def _table_row(row: dict, full: dict) -> str:
    return (f"| {', '.join(map(str, row['levels']))} | {row['tokens']:,.0f} | "
            f"{row['tokens'] / full['tokens']:.2f}x | {row['same']} of {row['total']} "
            f"({100 * row['same'] / row['total']:.0f}%) | {row['stronger']} | "
            f"{row['weaker']} | {100 * row['second'] / row['total']:.0f}% |")


def _halves(found: list[dict], levels: Sequence[int]) -> list[int]:
    """A design's (``levels``: percents) matches with the reference on the first and the
    second half of the cases, then on the odd-numbered and the even-numbered ones."""
    parts = (found[:len(found) // 2], found[len(found) // 2:], found[::2], found[1::2])
    found_rows = [next(r for r in analyse(part) if r["levels"] == list(levels))
                  for part in parts]
    return [row["same"] for row in found_rows]


def _summary(found: list[dict], rows: list[dict], levels: Sequence[int]
             ) -> tuple[dict, dict, dict[str, int]]:
    """The row of all five levels, the row of ``levels``, and the reference's verdicts
    counted."""
    verdicts: dict[str, int] = {}
    every = tuple(range(len(PERCENTS)))
    for case in found:
        name = _verdict(case, every, _all(range(INDEPENDENT + REVERSED)))
        verdicts[name] = verdicts.get(name, 0) + 1
    return rows[0], next(row for row in rows if row["levels"] == list(levels)), verdicts


def _by_halves(found: list[dict], levels: Sequence[int]) -> str:
    """``levels`` against all five on each half of the cases, and how they compare."""
    ours, theirs = _halves(found, levels), _halves(found, PERCENTS)
    pairs = list(zip(ours, theirs, strict=True))
    if all(a >= b for a, b in pairs):
        how = "as often or more often in every half"
    elif all(a <= b for a, b in pairs):
        how = "as often or less often in every half"
    else:
        how = "more often in some halves and less in others"
    listed = lambda values: " / ".join(map(str, values))  # noqa: E731
    return f"{listed(ours)} against {listed(theirs)} with all five: {how}"


def _span(rows: list[dict], size: int) -> str:
    """The fewest and the most matches among the designs of ``size`` levels."""
    same = [row["same"] for row in rows if len(row["levels"]) == size]
    return f"{min(same)} to {max(same)}" if min(same) != max(same) else f"{same[0]}"


def _span_count(rows: list[dict], size: int) -> int:
    return sum(len(row["levels"]) == size for row in rows)


def _levels(percents: Sequence[int]) -> str:
    words = [str(k) for k in percents]
    return words[0] if len(words) == 1 else f"{', '.join(words[:-1])} and {words[-1]}"


def _verdicts(verdicts: dict[str, int]) -> str:
    return ", ".join(f"{n} {v}" for v, n in sorted(verdicts.items()))


def _cautious(row: dict) -> str:
    return f"{row['weaker']} more cautious, {row['stronger']} bolder"


def best_three(rows: list[dict]) -> list[int]:
    """The design of three levels that matched the reference most often (the fewest tokens
    among ties)."""
    threes = [row for row in rows if len(row["levels"]) == 3]
    return max(threes, key=lambda row: (row["same"], -row["tokens"]))["levels"]


def report(found: list[dict], rows: list[dict], when: str) -> str:
    from engine.defaults import CHECK_PERCENTS

    best = best_three(rows)
    full, candidate, verdicts = _summary(found, rows, best)
    near = full["total"] // 20
    twos = ([10, 50], [5, 50], [5, 20])
    listed = [row for row in rows if row["same"] >= full["same"] - near
              or len(row["levels"]) >= 4 or row["levels"] in twos]
    lines = [
        HEADING, "",
        f"Run {datetime.now(UTC):%Y-%m-%d} with `python -m benchmarks.check_levels` ({when}; "
        f"the drops are kept in {DATA.relative_to(ROOT)}, and `--reuse` analyses them again); "
        f"torch {torch.__version__}, {platform.machine()} CPU, float32. {len(found)} demo "
        f"cases, the window's defaults ({found[0]['method']}, up to 64 answer tokens). For "
        f"each case the explanation, {INDEPENDENT} independent seeded random rankings and the "
        f"reverses of the first {REVERSED} are scored at each level. Reference: the verdict "
        f"from all five levels and all {INDEPENDENT + REVERSED} rankings "
        f"({_verdicts(verdicts)}). Each design runs the check's rule (one antithetic pair, a "
        f"second for a figure it leaves close) from each of the {REVERSED} pairs; tokens: "
        "those its perturbed prompts run (the answer's included), the mean over its checks. "
        "The shared prompt's forward and the second method cost the same in every design, so "
        "a whole check saves less than its tokens.", "",
        *TABLE_HEAD,
    ]
    lines += [_table_row(row, full) for row in listed]
    lines += [
        "", f"Listed: every design of four or five levels, every other design within {near} "
        f"matches of all five, and {len(twos)} of two levels. Designs of three levels matched "
        f"in {_span(rows, 3)} checks, of four in {_span(rows, 4)}, of two in {_span(rows, 2)}.",
        "",
        f"The best design of three levels here, the top {_levels(best)}%, matched the "
        f"reference in {candidate['same']} of {candidate['total']} checks ("
        f"{_cautious(candidate)}) against {full['same']} with all five levels "
        f"({_cautious(full)}), with {candidate['tokens'] / full['tokens']:.2f}x the perturbed "
        f"prompts' tokens; by halves of these cases (first and last, odd and even) "
        f"{_by_halves(found, best)}. But it is the best of {_span_count(rows, 3)} designs on "
        f"the cases that picked it, and the {full['total']} checks are "
        f"{full['total'] // len(found)} per case and not independent, so the held-out cases "
        f"below test it. **The check takes the top {_levels(CHECK_PERCENTS)}%** "
        "(engine/defaults.py, `CHECK_PERCENTS`). A record keeps the levels its figures were "
        "taken at (`reliability.percents`), and the badge's hover text and the PDF name them.",
    ]
    return "\n".join(lines) + "\n"


# The demo cases' best design of three levels (best_three; the demo report says which it is).
CANDIDATE = (1, 5, 50)


def held_out_report(found: list[dict], rows: list[dict], when: str) -> str:
    """The demo cases' best design of three levels against all five and every other design of
    three or more, on cases that played no part in choosing it."""
    from engine.defaults import CHECK_PERCENTS

    full, candidate, verdicts = _summary(found, rows, CANDIDATE)
    others = [row for row in rows if len(row["levels"]) >= 3 and row is not candidate]
    better = sum(row["same"] > candidate["same"] for row in others)
    tied = sum(row["same"] == candidate["same"] for row in others)
    held = candidate["same"] >= full["same"]
    lines = [
        HELD_OUT_HEADING, "",
        f"Run {datetime.now(UTC):%Y-%m-%d} with `python -m benchmarks.check_levels --held-out` "
        f"({when}; kept in {HELD_OUT_DATA.relative_to(ROOT)}); torch {torch.__version__}, "
        f"{platform.machine()} CPU, float32. {len(found)} cases of "
        f"{HELD_OUT.relative_to(ROOT)}, written after the top {_levels(CANDIDATE)}% came out "
        "best of three levels on the demo cases (above), and not used to choose them; "
        f"otherwise as above. Reference: all five levels and all {INDEPENDENT + REVERSED} "
        f"rankings ({_verdicts(verdicts)}).", "",
        *TABLE_HEAD,
    ]
    lines += [_table_row(row, full) for row in [candidate, *others]]
    lines += [
        "", f"On these cases the top {_levels(CANDIDATE)}% matched the reference in "
        f"{candidate['same']} of {candidate['total']} checks ({_cautious(candidate)}), all "
        f"five levels with the check's own rankings in {full['same']} ({_cautious(full)}); of "
        f"the other {len(others)} designs of three or more levels, {better} did better here "
        f"and {tied} as well. The {candidate['total']} checks are "
        f"{candidate['total'] // len(found)} per case and not independent. "
        + ("The demo cases' choice holds up here. " if held else
           "The demo cases' choice does not hold up: the levels that matched best there were "
           "picked partly by chance, and no fewer levels have shown they can stand in for "
           "five. ")
        + f"**The check takes the top {_levels(CHECK_PERCENTS)}%.**",
    ]
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, help="put the table in this markdown file")
    parser.add_argument("--cases", type=int, default=None, help="only the first N demo cases")
    parser.add_argument("--held-out", action="store_true",
                        help="the held-out cases (benchmarks/data/heldout_cases.jsonl)")
    parser.add_argument("--data", type=Path, help="where the drops are kept")
    parser.add_argument("--reuse", action="store_true",
                        help="analyse the drops kept in --data instead of scoring again")
    args = parser.parse_args(argv)
    args.data = args.data or (HELD_OUT_DATA if args.held_out else DATA)
    if args.reuse:
        found = json.loads(args.data.read_text())
        when = "the drops from an earlier run"
    else:
        found = collect(args.cases, HELD_OUT if args.held_out else DEMO_CASES)
        args.data.parent.mkdir(parents=True, exist_ok=True)
        args.data.write_text(json.dumps(found))
        when = "scored in this run"
    text = (held_out_report if args.held_out else report)(found, analyse(found), when)
    print(text)
    if args.out:
        replace_section(args.out, HELD_OUT_HEADING if args.held_out else HEADING, text)


if __name__ == "__main__":
    main()
