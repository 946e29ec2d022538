"""A quick check of the explanation on screen: how far to trust it, in plain language.

Three questions, each answered against chance:

1. Comprehensiveness: does deleting the case words this explanation ranks highest lower the
   answer's probability more than deleting random words? (AOPC over the top 1, 5, 10, 20 and
   50%, the evaluation's levels: see "Levels" below; against the mean over random rankings
   drawn in antithetic pairs: see "Chance" below.)
2. Sufficiency: does keeping only those words preserve the answer better than keeping random
   ones?
3. Agreement: does a second, cheap method of another family (IFR; input x gradient when
   the explanation is FlashTrace's or IFR's) rank the case tokens alike (Spearman rank
   correlation)? When one of the two gives shares with no direction (IFR, FlashTrace, HETA),
   the other's magnitudes are compared: on the 20 demo cases IFR against signed input x
   gradient averages rho = -0.04, against its magnitude 0.33.

The verdict (strong, fair or weak) and its sentence follow from these figures by the rule in
engine/verdict.py. An explanation that scores every case word alike ranks nothing: its figures
are chance's (its deletions would otherwise follow the order of the text), so it is weak. An
explanation of a span of the answer is not checked (the check watches the whole answer).

Chance: each pair is a seeded uniformly random ranking and its reverse. The reverse is itself
a uniformly random ranking, so the pair's mean estimates the same chance level as two
independent draws; but the two delete disjoint words (the same words' complement at 50%), so
when one happens to delete a word the answer rests on, the other does not. On a close call
(:func:`close_call`: the explanation within about one pair's spread of a threshold that
decides the verdict) a second pair is drawn for the figure that is close (engine/verdict.py,
:func:`close_figures`), and its chance is the mean of all four rankings; the other keeps the
first pair's (its next pair could move it across no threshold that decides the verdict:
sufficiency decides nothing while strong is out of reach). The record says how many rankings
each figure averages.

Measured on the 20 demo cases (64-token answers, IFR; ``python -m benchmarks.reliability_draws``,
docs/evaluation.md "Reliability check: random rankings"), against the verdict from 12
rankings: a pair's chance AOPC varied 0.81 times as much as two independent draws'
(comprehensiveness; sufficiency 0.61); one pair gave the same verdict in 89% of draws, one
pair and a second on a close call in 94% (a second pair on 30% of checks), three independent
rankings, the check's design before, in 82%. The design was chosen on those cases; on 16
held-out cases written later (benchmarks/data/heldout_cases.jsonl) one pair and a second on a
close call matched in 84% (``python -m benchmarks.check_levels --held-out``). Drawing the
second pair for the close figure alone gave the same verdicts on both sets as drawing it for
both, with 5% fewer tokens per check on average (11 prompts fewer on the demo case).

Levels: the check averages the evaluation's five levels. Fewer would be cheaper, but the
three that best matched the verdict of five levels and 12 rankings on the 20 demo cases (1, 5
and 50%: 78 of 80 checks against 75, with 0.59x the perturbed prompts' tokens) matched it less
often on 16 held-out cases (47 of 64 against 54; ``python -m benchmarks.check_levels``,
docs/evaluation.md "Reliability check: how many deletion levels"). ``percents`` takes some of
them, and a record keeps the levels its figures were taken at.

Cost: 1 + 2 x levels x (1 + 2 x pairs) perturbed prompts, each with the whole answer (31 by
default; on a close call 10 more for one figure, 20 for both, in a pass with its own reference
forward; a pair's "delete half" and "keep half" coincide on a case of even length and run once
when both run). Every one runs only from its first changed token on, on the
unperturbed prompt's keys and values (one forward over the prompt), and they are batched by
the length left to run. Then the second method (one forward for IFR; one forward and one
backward for input x gradient). The answer's tokens in each prompt are about half of the
work. In float32 the matrix products already run at a 2-core CPU's peak; on a CPU that
multiplies bfloat16 natively the prompts run in a bfloat16 twin of the model by default
(engine/precision.py, about twice as fast; docs/evaluation.md, "Reliability check: float32
or a bfloat16 twin", for what the rounding does to the verdicts). docs/benchmarks.md, "Time
goals", has the seconds.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from typing import Any

import torch

from engine.defaults import CHECK_PERCENTS, PERCENTS
from engine.errors import InvalidInputError, InvalidSettingsError, TokenTraceError
from engine.methods import METHODS, AttributionInput, get_method, second_opinion
from engine.metrics import DELETIONS, deletion_aopc, random_scores
from engine.precision import scoring_model
from engine.record import Explanation, Reliability, is_check_levels
from engine.task import Silent, TaskState
from engine.verdict import close_figures, not_checkable, summary_of, verdict_of


def check_usable(record: Explanation, model: Any) -> None:
    """An opened record is untrusted: before its ids meet ``model`` they must be ids of its
    vocabulary, and its method one this TokenTrace knows (one clear error, never an index
    error deep in the model)."""
    get_method(record.method.name)
    rows = model.get_input_embeddings().num_embeddings
    ids = (*record.prompt.token_ids, *record.answer.token_ids)
    if ids and max(ids) >= rows:
        raise InvalidInputError(f"the explanation holds token id {max(ids)}, outside this "
                                f"model's vocabulary of {rows}: it was not made with this model")
    if record.model.vocab_size and record.model.vocab_size != rows:
        raise InvalidInputError(f"the explanation was made with a vocabulary of "
                                f"{record.model.vocab_size}, this model has {rows}")


def check_tokenized(record: Explanation, tokenizer: Any) -> None:
    """An opened record's prompt text must be what its token ids say, for this tokenizer: the
    stored text is tokenized again as it was explained (the template is not rendered again: one
    that prints today's date would differ tomorrow), and its ids, spans and case tokens must
    all match. ``case_sha256`` only catches an edit that forgot it: an edited "HER2 negative" ->
    "positive" with its hash recomputed would otherwise be shown, coloured by scores computed
    for the ids of "negative", and a what-if on it would run on those ids."""
    from engine.prompting import tokenize

    prompt = record.prompt
    encoded = tokenize(tokenizer, prompt.text, "case", add_special_tokens=prompt.format == "raw",
                       return_offsets_mapping=True)
    ids = tuple(int(i) for i in encoded["input_ids"])
    offsets = tuple((int(s), int(e)) for s, e in encoded["offset_mapping"])
    special = set(getattr(tokenizer, "all_special_ids", ()))
    start = prompt.case_start
    end = start + len(prompt.case_text)
    case = tuple(e > s and s < end and e > start and i not in special
                 for i, (s, e) in zip(ids, offsets, strict=True))
    if start < 0 or (ids, offsets, case) != (prompt.token_ids, prompt.offsets,
                                             prompt.attributable):
        raise InvalidInputError("the explanation's case text is not what its token ids say "
                                "with this model's tokenizer: the file was altered, or made "
                                "with another tokenizer")


def problem_of(record: Explanation, device: torch.device | str) -> AttributionInput:
    return AttributionInput(torch.tensor(record.prompt.token_ids, device=device),
                            torch.tensor(record.prompt.attributable, device=device),
                            torch.tensor(record.answer.token_ids, device=device))


def _ranks(x: torch.Tensor) -> torch.Tensor:
    """1-based ranks; tied values share the average of their ranks."""
    _, inverse, counts = torch.unique(x, return_inverse=True, return_counts=True)
    last = counts.cumsum(0).double()
    return (last - (counts.double() - 1) / 2)[inverse]


def comparable(a: torch.Tensor, a_signed: bool, b: torch.Tensor, b_signed: bool
               ) -> tuple[torch.Tensor, torch.Tensor]:
    """Two methods' scores made comparable: when one of them gives shares with no direction, a
    signed score's magnitude is what ranks alike (a word that pushes hard against the answer
    carries a large share too)."""
    if a_signed == b_signed:
        return a, b
    return a.abs(), b.abs()


def spearman(a: torch.Tensor, b: torch.Tensor) -> float:
    """Spearman rank correlation of two score vectors (0 when either is constant)."""
    ra, rb = _ranks(a), _ranks(b)
    ra, rb = ra - ra.mean(), rb - rb.mean()
    denominator = float(ra.norm() * rb.norm())
    if denominator <= 0:
        return 0.0
    return min(1.0, max(-1.0, float((ra * rb).sum()) / denominator))  # within rounding


def antithetic_rankings(shape: Sequence[int], pairs: int, first_seed: int = 0
                        ) -> list[torch.Tensor]:
    """``2 x pairs`` random rankings: for each seed, uniform random scores and their reverse."""
    rankings = []
    for seed in range(first_seed, first_seed + pairs):
        scores = random_scores(shape, seed=seed)
        rankings += [scores, 1 - scores]
    return rankings


def check_reliability(model: Any, tokenizer: Any, record: Explanation, *, pairs: int = 1,
                      close_pairs: int = 1, precision: str = "auto",
                      percents: Sequence[int] = CHECK_PERCENTS,
                      state: TaskState | None = None) -> Reliability:
    """The three checks on ``record`` (an explanation made with this model), against
    ``pairs`` antithetic pairs of random rankings, and ``close_pairs`` more on a close call;
    AOPC over ``percents`` (some of the evaluation's levels).

    ``precision``: "auto" runs the perturbed prompts in a bfloat16 twin of a float32 model on a
    CPU that multiplies bfloat16 natively (engine/precision.py), "model" in the model's own
    precision. The second method always runs on the model itself."""
    if pairs < 1 or close_pairs < 0:
        raise ValueError(f"the reliability check needs pairs >= 1 and close_pairs >= 0 (got "
                         f"{pairs} and {close_pairs})")
    percents = tuple(percents)
    if not is_check_levels(percents):
        raise ValueError(f"the reliability check's levels must be some of {PERCENTS} in order, "
                         f"as integers (got {percents})")
    state = state or TaskState()
    start = time.perf_counter()
    reason = not_checkable(record.method.params)
    if reason:
        raise InvalidSettingsError(reason)
    check_usable(record, model)
    device = next(model.parameters()).device
    problem = problem_of(record, device)
    scores = torch.tensor(record.attribution.sequence, dtype=torch.float64)
    # Three parts: the explanation's and one pair's perturbed prompts (one batched pass, one
    # reference forward), the second method, and on a close call more pairs.
    state.progressed("reliability", 0, 3)
    scorer, precision_used = scoring_model(model, precision)  # the twin: made at a first check
    state.check()
    (comp, suff), *first = deletion_aopc(
        scorer, problem, [scores, *antithetic_rankings(scores.shape, pairs)], percents,
        state=Silent(state))
    # Chance's comprehensiveness and sufficiency, one figure per random ranking each.
    chance = {kind: [figures[index] for figures in first] for index, kind in enumerate(DELETIONS)}
    state.progressed("reliability", 1, 3)

    second = second_opinion(record.method.name)
    spec = get_method(second)
    params = {**spec.defaults(), **({"matrix": False} if "matrix" in spec.defaults() else {})}
    other = spec.attribute(model, tokenizer, problem, state=Silent(state), **params)
    case = problem.attributable.cpu()
    rho = spearman(*comparable(scores[case], METHODS[record.method.name].signed,
                               other.sequence[case], spec.signed))
    state.progressed("reliability", 2, 3)

    def mean(kind: str) -> float:
        return sum(chance[kind]) / len(chance[kind])

    close = close_figures(comp, mean("delete"), suff, mean("keep"), rho) if close_pairs \
        else (False, False)
    kinds = [kind for kind, again in zip(DELETIONS, close, strict=True) if again]
    if kinds:  # only the figure that is close: the other's next pair could change nothing
        more = antithetic_rankings(scores.shape, close_pairs, first_seed=pairs)
        for figures in deletion_aopc(scorer, problem, more, percents, state=Silent(state),
                                     kinds=kinds):
            for kind, value in zip(kinds, figures, strict=True):
                chance[kind].append(value)
    state.progressed("reliability", 3, 3)
    case_scores = scores[case]
    if bool((case_scores == case_scores[0]).all()):
        # Every case word scored alike ranks nothing: its deletions would follow the text's
        # order (age and sex come first in a note, and can beat chance). Any order of equal
        # words is a random ranking, so what it is worth is chance's own figures.
        comp, suff = mean("delete"), mean("keep")

    figures = (comp, mean("delete"), suff, mean("keep"), rho)
    if not all(math.isfinite(value) for value in figures):
        raise TokenTraceError("the reliability check gave a figure that is not a number (an "
                              "overflow at this precision?): no verdict; float32 avoids it")
    return Reliability(
        verdict=verdict_of(*figures), summary=summary_of(*figures, second),
        comprehensiveness=comp, random_comprehensiveness=mean("delete"), sufficiency=suff,
        random_sufficiency=mean("keep"), second_method=second, rank_correlation=rho,
        random_draws=len(chance["delete"]), sufficiency_draws=len(chance["keep"]),
        seconds=time.perf_counter() - start, precision=precision_used, percents=percents)
