"""Claim by claim: which sentences of the case each statement of the answer rests on.

The answer is split into claims (sentences, and clauses joined by ";"; engine/sentences.py) and
the case into sentences. For each claim:

1. **Evidence.** Each case sentence's share of what the claim rests on. Up to
   ``LEAVE_ONE_OUT_SENTENCES`` sentences (every demo case, most clinical notes' summaries) it is
   measured directly: each sentence is removed in turn and its share is its part of the total
   fall of the claim's log-probability (one batched pass, a removal costing the forward of what
   follows the sentence). Above, an attribution pass per claim ranks the sentences instead: the
   claim's span of answer tokens (the sum of their log-probabilities) is attributed to the case
   by IFR (its ``span`` option explains a span of answer tokens as one sink) and token scores are
   summed per sentence. On the 20 demo cases IFR's top sentence is leave-one-out's for 68% of
   claims, ContextCite's for 97% at seven times IFR's cost (docs/evaluation.md).
2. **Support, checked causally.** The claim's ``candidates`` top sentences are removed, each
   on its own and all together, and so is the whole case; the fall of the claim's
   log-probability is measured each time, and when only the top sentence is kept. The support
   is the fall without the whole case, per token of the claim (nats per token: the mean fall of
   each word's log-probability). Not the fall without the top sentences: those were chosen
   because removing them lowers the claim (with leave-one-out evidence), so their fall is biased
   upward by chance; the whole case is chosen by no one. Every removal reuses the unchanged
   prefix's keys and values and the removals are batched (``engine.metrics.answer_log_probs``),
   so a removal costs the forward of what follows the removed sentence.
3. **Flag.** A claim whose support is below ``THRESHOLD`` = ln 1.25 is "not grounded in this
   case": without the case, each of its words becomes on average less than 1.25 times less
   likely. Per token, because removing text shifts every later word a little. On the embedded
   model a statement copied from a case sentence falls by 6.8 nats per token without the case,
   while a statement the case says nothing about ("Paris is the capital of France.") becomes
   more likely (-0.3 nats per token); removing single unrelated sentences moves it by up to
   0.2 per token (tests/e2e/test_embedded.py).

Leave-one-sentence-out over every sentence (``leave_one_out``) is the reference the evidence is
measured against (docs/evaluation.md); it costs one removal per sentence, which an 8,000-token
note with hundreds of sentences cannot pay in the window.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from engine.errors import InvalidInputError
from engine.methods import AttributionInput, get_method
from engine.metrics import answer_log_probs
from engine.record import Claim, Claims, Explanation
from engine.reliability import check_usable, problem_of
from engine.sentences import split_claims, split_sentences
from engine.task import TaskState

EVIDENCE_METHOD = "ifr"  # the attribution that ranks sentences when there are many
LEAVE_ONE_OUT = "leave-one-out"
# Up to this many case sentences the evidence is leave-one-out itself: on the 20 demo cases
# (6 to 9 sentences) it costs 1.4 s a case against 2.9 s for IFR per claim and the checks, and
# IFR's top sentence is leave-one-out's for only 68% of claims (docs/evaluation.md). Above, a
# removal per sentence (about half a forward each) is more than the window can pay.
LEAVE_ONE_OUT_SENTENCES = 64
CANDIDATES = 3
THRESHOLD = math.log(1.25)  # nats per claim token


@dataclass(frozen=True)
class Segments:
    """Where the case's sentences and the answer's claims lie in the record's tokens."""

    sentences: tuple[tuple[int, int], ...]  # character spans in the case text
    sentence_tokens: tuple[tuple[int, int], ...]  # prompt tokens [start, stop) of each
    claims: tuple[tuple[int, int], ...]  # answer tokens [start, end) of each claim
    claim_texts: tuple[str, ...]


def segment(record: Explanation) -> Segments:
    """Split the record's case into sentences and its answer into claims, in token terms.

    A case token belongs to the sentence holding its first visible character; a sentence's
    tokens run to the next sentence's first token (the blank space between goes with it, so
    that removing a sentence leaves no double space). An answer token belongs to the claim
    holding its first visible character; blank tokens go with the claim before them.
    """
    prompt = record.prompt
    case = prompt.case_text
    shift = prompt.case_start if prompt.offsets else -1
    if shift < 0:
        raise InvalidInputError("this explanation has no character offsets for its case; "
                                "explain the case again to find its claims")
    sentences = split_sentences(case)
    firsts: list[int | None] = [None] * len(sentences)
    for index, ((start, end), keep) in enumerate(zip(prompt.offsets, prompt.attributable,
                                                     strict=True)):
        if not keep or end <= start:
            continue
        piece = prompt.text[start:end]
        visible = start + (len(piece) - len(piece.lstrip())) - shift
        which = _containing(sentences, visible)
        if which is not None and firsts[which] is None:
            firsts[which] = index
    kept = [(span, first) for span, first in zip(sentences, firsts, strict=True)
            if first is not None]
    if not kept:
        raise InvalidInputError("no sentence of the case could be located in the prompt")
    last_case_token = max(i for i, keep in enumerate(prompt.attributable) if keep) + 1
    stops = [first for _, first in kept[1:]] + [last_case_token]
    tokens = tuple((first, stop) for (_, first), stop in zip(kept, stops, strict=True))

    answer = record.answer
    ends, position = [], 0
    for piece in answer.tokens:
        position += len(piece)
        ends.append(position)
    spans = split_claims(answer.text)
    owner: list[int] = []
    for piece, end in zip(answer.tokens, ends, strict=True):
        visible = end - len(piece) + (len(piece) - len(piece.lstrip()))
        which = _containing(spans, visible) if piece.strip() else None
        owner.append(which if which is not None else (owner[-1] if owner else 0))
    claims, texts = [], []
    for which, (start, end) in enumerate(spans):
        members = [t for t, o in enumerate(owner) if o == which]
        if members:
            claims.append((members[0], members[-1] + 1))
            texts.append(answer.text[start:end])
    if not claims:
        claims, texts = [(0, len(answer.tokens))], [answer.text.strip()]
    return Segments(tuple(span for span, _ in kept), tokens, tuple(claims), tuple(texts))


def _containing(spans: Sequence[tuple[int, int]], position: int) -> int | None:
    for index, (start, end) in enumerate(spans):
        if start <= position < end:
            return index
    return None


def find_claims(model: Any, tokenizer: Any, record: Explanation, *,
                method: str = "auto", candidates: int = CANDIDATES,
                state: TaskState | None = None, batch_size: int | None = None) -> Claims:
    """The claims of ``record``'s answer with their evidence and support (module docstring).
    ``model`` must be the one that made the record.

    ``method``: ``leave-one-out`` (evidence = each sentence's share of the falls when it alone
    is removed), an attribution method (one pass per claim), or ``auto``: leave-one-out up to
    ``LEAVE_ONE_OUT_SENTENCES`` sentences, IFR above.
    """
    state = state or TaskState()
    started = time.perf_counter()
    check_usable(record, model)
    parts = segment(record)
    if method == "auto":
        method = (LEAVE_ONE_OUT if len(parts.sentences) <= LEAVE_ONE_OUT_SENTENCES
                  else EVIDENCE_METHOD)
    device = next(model.parameters()).device
    problem = problem_of(record, device)
    prompt = problem.prompt_ids.cpu()
    everything = frozenset(range(len(parts.sentences)))
    falls: dict[frozenset[int], torch.Tensor] = {}  # removed sentences -> log p [T]

    # Progress (stage "claims"): one unit per claim's evidence, then one for the checks.
    steps = len(parts.claims) + 1

    def measure(removals: list[frozenset[int]], done: int) -> None:
        """The answer's log-probabilities without each removal set, in one batched pass; then
        ``done`` units of progress are done."""
        todo = [r for r in dict.fromkeys(removals) if r not in falls]
        prompts = [prompt, *(without_sentences(prompt, parts.sentence_tokens, r) for r in todo)]
        logp = answer_log_probs(model, problem, prompts, batch_size=batch_size, state=state)
        state.progressed("claims", done, steps)
        falls[frozenset()] = logp[0]
        falls.update(zip(todo, logp[1:], strict=True))

    if method == LEAVE_ONE_OUT:
        measure([frozenset({s}) for s in everything], len(parts.claims))
        evidence = [_shares([float(falls[frozenset()][a:b].sum() - falls[frozenset({s})][a:b]
                                   .sum()) for s in range(len(parts.sentences))])
                    for a, b in parts.claims]
    else:
        evidence = claim_evidence(model, tokenizer, problem, parts, method, state)
    # The checks: the whole case, each claim's top sentences one by one, all of them together,
    # and all but the top one (the singles are already measured with leave-one-out).
    tops = [_top(shares, candidates) for shares in evidence]
    checks: list[frozenset[int]] = [everything]
    for top in tops:
        checks += [frozenset({s}) for s in top]
        if len(top) > 1:
            checks.append(frozenset(top))
        if top and len(everything) > 1:
            checks.append(everything - {top[0]})
    measure(checks, steps)

    claims = []
    for (first, end), text, shares, top in zip(parts.claims, parts.claim_texts, evidence, tops,
                                               strict=True):
        full = float(falls[frozenset()][first:end].sum())

        def fall(removed: frozenset[int], first: int = first, end: int = end,
                 full: float = full) -> float:
            return full - float(falls[removed][first:end].sum())

        drops = tuple((s, fall(frozenset({s}))) for s in top)
        joint = fall(frozenset(top)) if len(top) > 1 else (drops[0][1] if drops else 0.0)
        kept = fall(everything - {top[0]}) if top and len(everything) > 1 else 0.0
        support = fall(everything) / (end - first)
        claims.append(Claim(text=text, tokens=(first, end), evidence=tuple(shares),
                            log_prob=full, drops=drops, joint_drop=joint, kept_drop=kept,
                            support=support, grounded=support >= THRESHOLD))
    return Claims(sentences=parts.sentences, claims=tuple(claims), evidence_method=method,
                  candidates=candidates, threshold=THRESHOLD,
                  seconds=time.perf_counter() - started)


class _Quiet(TaskState):
    """Cancels with ``parent`` but keeps a method's own progress (its blocks) to itself: the
    claims report theirs in claims."""

    def __init__(self, parent: TaskState) -> None:
        super().__init__()
        self._parent = parent

    def cancel(self) -> None:
        self._parent.cancel()

    @property
    def cancelled(self) -> bool:
        return self._parent.cancelled

    def check(self) -> None:
        self._parent.check()


def _shares(scores: Sequence[float]) -> list[float]:
    """Positive parts of ``scores`` as shares of their total (all 0 when none is positive)."""
    positive = [max(0.0, score) for score in scores]
    total = sum(positive)
    return [score / total if total > 0 else 0.0 for score in positive]


def claim_evidence(model: Any, tokenizer: Any, problem: AttributionInput, parts: Segments,
                   method: str, state: TaskState) -> list[list[float]]:
    """Per claim, each case sentence's share of the claim's positive attribution; progress in
    stage ``claims``, one unit per claim out of claims + 1.

    A method with a ``span`` option explains each claim's tokens as one target in its own pass;
    any other method runs once with its per-token matrix and a claim's scores are its rows
    summed (for gradient methods the attribution of a sum of log-probabilities is the sum of the
    rows, exactly).
    """
    spec = get_method(method)
    defaults = spec.defaults()
    rows: list[torch.Tensor] = []
    if "span" in defaults:
        for index, (first, end) in enumerate(parts.claims):
            params = {**defaults, "span": f"{first}:{end - 1}"}
            if "matrix" in params:
                params["matrix"] = False
            rows.append(spec.attribute(model, tokenizer, problem, state=_Quiet(state),
                                       **params).sequence)
            state.progressed("claims", index + 1, len(parts.claims) + 1)
    else:
        params = {**defaults, **({"matrix": True} if "matrix" in defaults else {})}
        matrix = spec.attribute(model, tokenizer, problem, state=_Quiet(state),
                                **params).per_token
        state.progressed("claims", len(parts.claims), len(parts.claims) + 1)
        if matrix is None:
            raise InvalidInputError(f"{method} gives no per-token matrix to find claims with")
        rows = [matrix[first:end].sum(0) for first, end in parts.claims]
    evidence = []
    for scores in rows:
        scores = scores.double().cpu().clamp(min=0)
        evidence.append(_shares([float(scores[a:b].sum()) for a, b in parts.sentence_tokens]))
    return evidence


def leave_one_out(model: Any, record: Explanation, *, state: TaskState | None = None,
                  batch_size: int | None = None) -> tuple[Segments, torch.Tensor]:
    """The reference: for every claim and every case sentence, the fall of the claim's
    log-probability when that sentence alone is removed. Returns the segments and the falls
    [claims, sentences]."""
    state = state or TaskState()
    check_usable(record, model)
    parts = segment(record)
    device = next(model.parameters()).device
    problem = problem_of(record, device)
    prompt = problem.prompt_ids.cpu()
    prompts = [prompt, *(without_sentences(prompt, parts.sentence_tokens, frozenset({s}))
                         for s in range(len(parts.sentences)))]
    logp = answer_log_probs(model, problem, prompts, state=state, batch_size=batch_size)
    falls = torch.stack([logp[0, a:b].sum() - logp[1:, a:b].sum(-1) for a, b in parts.claims])
    return parts, falls


def _top(shares: Sequence[float], count: int) -> list[int]:
    ranked = sorted(range(len(shares)), key=lambda i: -shares[i])
    return [i for i in ranked[:count] if shares[i] > 0]


def without_sentences(prompt: torch.Tensor, spans: Sequence[tuple[int, int]],
                      removed: frozenset[int]) -> torch.Tensor:
    """``prompt`` without the tokens [start, stop) of the sentences ``removed`` (indices into
    ``spans``)."""
    keep = torch.ones(len(prompt), dtype=torch.bool)
    for index in removed:
        start, stop = spans[index]
        keep[start:stop] = False
    return prompt[keep]
