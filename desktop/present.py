"""What an explanation shows, decided once: the presentation model of a record.

The terminal (rich), the window (Qt) and the PDF report render an :class:`ExplanationView`;
none of them decides a colour, a legend, a ranking, a share or a sentence on its own, so a
display feature is added here once. No Qt and no rich in this module.

The colour scale is diverging and colour-blind-safe (the ends of ColorBrewer's RdBu): red pushed
the answer's probability up, blue pushed it down, near-white is neutral. For methods whose
scores are shares with no direction (information flow, HETA) red means "drawn on".
"""

from __future__ import annotations

import html
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from engine.fields import field_shares
from engine.grouping import GROUPINGS, Span, top_spans
from engine.methods import METHODS
from engine.record import Explanation, Reliability

# Text from a user's files, shown: a case, an answer, a model folder's name or an error message
# naming a path can hold control characters. Printed as they are, an escape sequence could
# retitle a terminal, clear it or colour text to mislead; a bidirectional override makes a
# page show "HER2 negative" where the model read "HER2 evitagen"; an invisible character hides
# a difference. Each control character (C0 and C1, but tab, line feed and the carriage return
# of a CRLF line end), bidirectional override, isolate or mark, and invisible space becomes
# U+FFFD, one character for one, so no position shifts. Joiners (U+200C, U+200D) stay: some
# scripts need them.
_UNPRINTABLE = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f\u061c\u200b\u200e"
                          "\u200f\u202a-\u202e\u2060\u2066-\u2069\ufeff]|\r(?!\n)")


def printable(text: str) -> str:
    """``text`` with every control, bidirectional or invisible character replaced by U+FFFD."""
    return _UNPRINTABLE.sub("\ufffd", text)


def html_text(text: str) -> str:
    """``text`` for Qt rich text and the PDF: :func:`printable`, then HTML-escaped."""
    return html.escape(printable(text))

NEGATIVE = (33, 102, 172)
POSITIVE = (178, 24, 43)
NEUTRAL = (247, 247, 247)
UNCOLOURED_BELOW = 0.05  # fraction of the scale under which a unit is left uncoloured
HIGH_COMPLETENESS_ERROR = 0.10  # above this, views suggest more integration steps
LEGEND_STEPS = (-1.0, -0.5, 0.0, 0.5, 1.0)
SHARE_STEPS = (0.0, 0.25, 0.5, 0.75, 1.0)
# Record parameters that describe how a run went rather than what was asked.
RUN_DETAILS = ("batch_size", "integration", "points", "converged")

Colour = tuple[int, int, int]


def blend(score: float, scale: float) -> Colour:
    """Background colour for ``score`` on a symmetric scale of +/- ``scale``."""
    if scale <= 0:
        return NEUTRAL
    weight = max(-1.0, min(1.0, score / scale))
    end = POSITIVE if weight > 0 else NEGATIVE
    w = abs(weight)
    r, g, b = (round(n + (e - n) * w) for n, e in zip(NEUTRAL, end, strict=True))
    return r, g, b


def text_colour(score: float, scale: float) -> str:
    """Black on light backgrounds, white on dark ones."""
    return "white" if scale > 0 and abs(score) > 0.55 * scale else "black"


def legend_words(method: str) -> str:
    """What the colours mean for ``method``'s scores, in one line."""
    if not signed(method):
        return ("red: what the answer drew on (darker: more) · shares of information flow, "
                "with no direction")
    return "red: pushed toward the answer · blue: pushed against it"


def _count(value: object) -> int | None:
    """A positive whole number from a record's parameters, else None."""
    return value if type(value) is int and 0 < value < 10**9 else None


def completeness_hint(params: dict, error: float, steps_flag: str | None = None) -> str:
    """What to do about a completeness error, in words ("" when nothing is needed).

    Converged methods say how many points they used and whether the budget ran out; a fixed
    rule with a high error suggests twice the points (``steps_flag``, e.g. ``--steps``, names
    the setting where the view has one).
    """
    # An opened record's parameters are untrusted: only plain numbers are shown.
    points, steps = _count(params.get("points")), _count(params.get("steps"))
    target = params.get("target_error")
    if params.get("integration") == "adaptive-simpson":
        used = f" after {points} points" if points else ""
        if params.get("converged") is True:
            return f" (converged{used})"
        goal = (f"the {100 * target:.0f}% target" if type(target) in (int, float)
                and 0 < target < 1 else "its target")
        return f" (the budget ran out{used} before {goal}; raise max_steps)"
    if error > HIGH_COMPLETENESS_ERROR and steps:
        more = f"{steps_flag} {2 * steps}" if steps_flag else f"{2 * steps} steps"
        return f" (high: the path integral has not converged; try {more})"
    if error > HIGH_COMPLETENESS_ERROR:
        return " (high: more integration steps would make the attribution more faithful)"
    return ""


@dataclass(frozen=True)
class Piece:
    """A stretch of the case text: a scored unit (``index`` into the units) or the plain text
    between units (``index`` -1). ``background`` is None for text left uncoloured."""

    text: str
    index: int = -1
    score: float = 0.0
    background: Colour | None = None
    ink: str = "black"


@dataclass(frozen=True)
class LegendStep:
    value: float
    background: Colour
    ink: str


@dataclass(frozen=True)
class TopWord:
    rank: int
    text: str
    score: float
    share: float  # of the summed magnitude of all listed words


@dataclass(frozen=True)
class FieldShare:
    label: str
    score: float
    share: float


@dataclass(frozen=True)
class VerdictView:
    verdict: str  # strong, fair or weak
    name: str  # Strong, Fair, Weak
    summary: str
    background: str  # CSS colour
    ink: str
    details: tuple[str, ...]  # one figure per line
    seconds: float


VERDICT_NAMES = {"strong": "Strong", "fair": "Fair", "weak": "Weak"}
VERDICT_COLOURS = {"strong": ("#1a9850", "white"), "fair": ("#fee08b", "#3a2c00"),
                   "weak": ("#d73027", "white")}


def verdict_view(check: Reliability) -> VerdictView:
    back, ink = VERDICT_COLOURS.get(check.verdict, ("#e0e0e0", "black"))
    details = (
        f"Comprehensiveness (AOPC) {check.comprehensiveness:+.4f} vs random "
        f"{check.random_comprehensiveness:+.4f} (higher is better)",
        f"Sufficiency (AOPC) {check.sufficiency:+.4f} vs random "
        f"{check.random_sufficiency:+.4f} (lower is better)",
        levels_note(check),
        f"Rank correlation with {check.second_method}: {check.rank_correlation:.2f}",
        f"Random: {draws_note(check)}, in pairs of a ranking and its reverse; "
        f"checked in {check.seconds:.1f} s",
        *((note,) if (note := precision_note(check)) else ()))
    return VerdictView(check.verdict, VERDICT_NAMES.get(check.verdict, check.verdict),
                       check.summary, back, ink, details, check.seconds)


def draws_note(check: Reliability) -> str:
    """How many random rankings chance's figures average, in words: a close call draws a second
    pair for the figure near a threshold alone."""
    comp, suff = check.draws
    if comp == suff:
        return f"{comp} rankings"
    return f"{comp} rankings for comprehensiveness, {suff} for sufficiency"


def levels_note(check: Reliability) -> str:
    """What the check's AOPC averages, in a sentence."""
    words = [str(n) for n in check.percents]
    listed = words[0] if len(words) == 1 else f"{', '.join(words[:-1])} and {words[-1]}"
    return (f"AOPC: the drop of the answer's probability, averaged over the top {listed}% of "
            "the case words deleted or kept alone")


def precision_note(check: Reliability) -> str:
    """Which precision the check's word deletions ran in, in a sentence ("" if not recorded)."""
    if check.precision == "bfloat16-twin":
        return ("Word deletions scored with the weights rounded to bfloat16, for speed: this "
                "moves the figures by about 1%, which can tip a verdict near a threshold")
    if check.precision:
        return f"Word deletions scored in {check.precision}, the model's own precision"
    return ""


def units_of(record: Explanation, scores: Sequence[float] | None = None,
             granularity: str = "word") -> list[Span]:
    """Scored units of the case: one answer token's row ``scores``, or (None) the attribution
    to the whole answer, grouped by ``granularity`` (token, word or sentence)."""
    prompt = record.prompt
    if scores is None:
        scores = record.attribution.sequence
    return GROUPINGS[granularity](prompt.text, prompt.offsets, scores, prompt.attributable)


def scale_of(units: Sequence[Span]) -> float:
    return max((abs(u.score) for u in units), default=0.0)


def case_bounds(record: Explanation) -> tuple[int, int]:
    """Where the case text sits in the prompt text."""
    prompt = record.prompt
    start = max(prompt.case_start, 0)
    return start, start + len(prompt.case_text)


def case_pieces(record: Explanation, units: Sequence[Span]) -> list[Piece]:
    """The case text cut into plain stretches and coloured units, in reading order. Units
    under ``UNCOLOURED_BELOW`` of the scale stay plain, so the words that matter stand out."""
    text = record.prompt.text
    scale = scale_of(units)
    start, end = case_bounds(record)
    pieces, cursor = [], start
    for index, unit in enumerate(units):
        if unit.start > cursor:
            pieces.append(Piece(text[cursor:unit.start]))
        coloured = scale > 0 and abs(unit.score) >= UNCOLOURED_BELOW * scale
        pieces.append(Piece(unit.text, index, unit.score,
                            blend(unit.score, scale) if coloured else None,
                            text_colour(unit.score, scale) if coloured else "black"))
        cursor = unit.end
    if end > cursor:
        pieces.append(Piece(text[cursor:end]))
    return pieces


def signed(method: str) -> bool:
    """Whether ``method``'s scores have a direction (toward or against the answer)."""
    spec = METHODS.get(method)
    return spec is None or spec.signed


def legend(scale: float, method: str = "") -> tuple[LegendStep, ...]:
    """The colour scale's steps: -scale to +scale, or 0 to +scale for shares (a blue end that
    no score can reach would mislead)."""
    steps = LEGEND_STEPS if signed(method) else SHARE_STEPS
    return tuple(LegendStep(w * scale, blend(w * scale, scale), text_colour(w * scale, scale))
                 for w in steps)


def listed_words(units: Sequence[Span]) -> list[Span]:
    """The units worth listing: punctuation is coloured, not listed."""
    return [u for u in units if any(c.isalnum() for c in u.text)]


def top_words(units: Sequence[Span], k: int) -> tuple[TopWord, ...]:
    words = listed_words(units)
    total = sum(abs(w.score) for w in words) or 1.0
    return tuple(TopWord(rank, w.text, w.score, abs(w.score) / total)
                 for rank, w in enumerate(top_spans(words, k), 1))


def completeness_text(record: Explanation, steps_flag: str | None = None) -> str:
    error = record.attribution.completeness_error
    if error is None:
        return "not defined for this method"
    return f"{100 * error:.2f}%{completeness_hint(record.method.params, error, steps_flag)}"


def method_summary(record: Explanation) -> str:
    """The method, its settings and (for path methods) the completeness error, in one line."""
    shown = {k: v for k, v in record.method.params.items()
             if k not in RUN_DETAILS and v is not None}
    text = f"Method {record.method.name} (" + ", ".join(
        f"{k}={v}" for k, v in shown.items()) + ")"
    error = record.attribution.completeness_error
    if error is not None:
        text += (f" · completeness error {100 * error:.1f}%"
                 f"{completeness_hint(record.method.params, error)}")
    return text


@dataclass(frozen=True)
class EvidenceView:
    sentence: int  # index into the record's case sentences
    text: str  # the sentence, as in the case
    share: float  # of the claim's attribution
    drop: float | None  # fall of the claim's log-probability with it removed (when tested)


@dataclass(frozen=True)
class ClaimView:
    """One statement of the answer as every view shows it."""

    index: int  # in answer order
    text: str
    grounded: bool
    marker: str  # "✓" or "!"
    verdict: str  # "rests on the case" / "not grounded in this case"
    support: str  # the causal check in one sentence
    evidence: tuple[EvidenceView, ...]  # the top sentences, largest share first


UNGROUNDED = ("not grounded in this case: the model's general knowledge or a guess")


def claim_views(record: Explanation, top: int = 3) -> tuple[ClaimView, ...]:
    """The record's claims with their top evidence sentences, in answer order."""
    claims = record.claims
    if claims is None:
        return ()
    case = record.prompt.case_text
    views = []
    for index, claim in enumerate(claims.claims):
        drops = dict(claim.drops)
        ranked = sorted(range(len(claim.evidence)), key=lambda i: -claim.evidence[i])[:top]
        evidence = tuple(EvidenceView(i, case[slice(*claims.sentences[i])], claim.evidence[i],
                                      drops.get(i)) for i in ranked if claim.evidence[i] > 0)
        tested = len(claim.drops)
        words = claim.tokens[1] - claim.tokens[0]
        support = (f"without the case, each of its words is on average {_fold(claim.support)} "
                   "less likely")
        if not claim.grounded:
            support += f" (under {_fold(claims.threshold)}: it rests on nothing in the case)"
        elif tested:
            support += (f"; without its top {tested} sentence{'s' if tested != 1 else ''} "
                        f"alone, {_fold(claim.joint_drop / words)}")
        views.append(ClaimView(index, claim.text, claim.grounded,
                               "✓" if claim.grounded else "!",
                               "rests on the case" if claim.grounded else UNGROUNDED,
                               support, evidence))
    return tuple(views)


def claim_units(record: Explanation, index: int) -> list[Span]:
    """The case's sentences scored by their share of claim ``index``'s evidence, as spans of
    the prompt text (what the overlay and the chart show for a clicked claim)."""
    claims = record.claims
    if claims is None or not 0 <= index < len(claims.claims):
        return []
    shift, _ = case_bounds(record)
    case = record.prompt.case_text
    evidence = claims.claims[index].evidence
    return [Span(shift + start, shift + end, case[start:end], share)
            for (start, end), share in zip(claims.sentences, evidence, strict=True)]


def evidence_words(claims: Any) -> str:
    """How a record's claims were given their evidence, in one sentence."""
    if claims.evidence_method == "leave-one-out":
        how = ("each case sentence removed in turn; a sentence's share is its part of the fall "
               "of the statement's probability")
    else:
        how = (f"{claims.evidence_method} attribution of each statement's words, summed per "
               "case sentence")
    return (f"Evidence: {how}. Support: how much less likely the statement's words become "
            f"when its top {claims.candidates} sentences are removed together; under "
            f"{math.exp(claims.threshold):.2f} times on average, the statement rests on nothing "
            f"in the case. Found in {claims.seconds:.1f} s.")


def _times(nats: float) -> str:
    """exp(|nats|) as "2.05 times", readable at any size."""
    factor = math.exp(min(abs(nats), 50.0))
    return "over 1,000 times" if factor >= 1000 else f"{factor:.2f} times"


def _fold(nats: float) -> str:
    """A fall in log-probability as "how many times less likely" ("not" for no fall)."""
    return _times(nats) if nats > 0 else "not"


def likelihood_change(fall: float) -> str:
    """What a fall of ``fall`` nats does to an answer: "2.05 times less likely", "1.30 times
    more likely", or "as likely"."""
    if abs(fall) < 1e-9:
        return "as likely"
    return f"{_times(fall)} {'less' if fall > 0 else 'more'} likely"


# How the two answers of a what-if are marked in HTML views (the window, the PDF).
DIFF_HTML = {"same": "{}", "removed": "<s style='color:#b2182b;'>{}</s>",
             "added": "<b style='color:#1b7837;'>{}</b>"}


def flagged_first(views: Sequence[ClaimView]) -> list[ClaimView]:
    """Claims that rest on nothing in the case first, then the rest, each in answer order."""
    return [v for v in views if not v.grounded] + [v for v in views if v.grounded]


@dataclass(frozen=True)
class DiffPiece:
    text: str
    kind: str  # "same", "removed" (only in the original answer) or "added" (only in the new)


@dataclass(frozen=True)
class WhatIfView:
    """One what-if as every view shows it."""

    edits: tuple[str, ...]
    original: str
    new: str
    diff: tuple[DiffPiece, ...]  # the two answers as one text, word by word
    changed: bool
    shift: str  # the original answer's probability under the edit, in one sentence
    still_greedy: bool
    token_changes: tuple[tuple[str, float], ...]  # answer tokens that moved most, nats


def coloured_case_html(record: Explanation) -> str:
    """The case coloured by its attribution to the whole answer, as HTML (what the overlay
    shows), for views that place two cases side by side."""
    import html

    units = units_of(record)
    parts = []
    for piece in case_pieces(record, units):
        text = html.escape(piece.text).replace("\n", "<br/>")
        if piece.background is None:
            parts.append(text)
        else:
            r, g, b = piece.background
            parts.append(f"<span style='background-color:#{r:02x}{g:02x}{b:02x}; "
                         f"color:{piece.ink};'>{text}</span>")
    return "".join(parts)


def answer_diff(original: str, new: str) -> tuple[DiffPiece, ...]:
    """The two answers merged word by word: kept words once, the rest marked."""
    import difflib

    a, b = original.split(), new.split()
    pieces: list[DiffPiece] = []
    for op, i1, i2, j1, j2 in difflib.SequenceMatcher(a=a, b=b, autojunk=False).get_opcodes():
        if op == "equal":
            pieces.append(DiffPiece(" ".join(a[i1:i2]), "same"))
            continue
        if i2 > i1:
            pieces.append(DiffPiece(" ".join(a[i1:i2]), "removed"))
        if j2 > j1:
            pieces.append(DiffPiece(" ".join(b[j1:j2]), "added"))
    return tuple(pieces)


def whatif_view(found, moved: int = 5) -> WhatIfView:
    """``found`` (engine.whatif.WhatIf) for the terminal, the PDF and the window."""
    shift = found.shift
    if abs(shift) < 1e-9:
        sentence = "The edit leaves the original answer exactly as likely."
    else:
        sentence = (f"Under the edit the original answer is {likelihood_change(-shift)} "
                    f"(log-probability {sum(found.original_log_probs):.2f} → "
                    f"{sum(found.shifted_log_probs):.2f}).")
    changes = sorted(((token, after - before) for token, before, after in zip(
        found.original.tokens, found.original_log_probs, found.shifted_log_probs, strict=True)),
        key=lambda item: item[1])[:moved]
    return WhatIfView(
        edits=tuple(edit.describe() for edit in found.edits), original=found.original.text,
        new=found.answer.text, diff=answer_diff(found.original.text, found.answer.text),
        changed=found.answer_changed, shift=sentence, still_greedy=found.still_greedy,
        token_changes=tuple((repr(token)[1:-1], change) for token, change in changes
                            if change < 0))


@dataclass(frozen=True)
class ExplanationView:
    """Everything the views show about one record, already decided."""

    record: Explanation
    units: tuple[Span, ...]  # the words of the case, scored for the whole answer
    pieces: tuple[Piece, ...]
    scale: float
    legend: tuple[LegendStep, ...]
    legend_words: str
    top_words: tuple[TopWord, ...]
    fields: tuple[FieldShare, ...]
    answer: str
    answer_title: str
    heading: str  # model, device, precision, method
    method_line: str
    parameters: str
    completeness: str  # the error with its hint, or "not defined for this method"
    completeness_hint: str  # what to do about the error ("" when nothing is needed)
    tokens: str
    time: str
    memory: str
    device: str
    verdict: VerdictView | None

    @classmethod
    def from_record(cls, record: Explanation, top: int = 10,
                    steps_flag: str | None = None) -> ExplanationView:
        units = units_of(record)
        scale = scale_of(units)
        model, t, hw = record.model, record.timings, record.hardware
        prompt = record.prompt
        generate = "answer forced" if record.answer.forced else f"generate {t.generate_s:.1f} s"
        memory = f"peak RSS {hw.peak_rss_mb:,.0f} MiB"
        if hw.peak_accelerator_mb is not None:
            memory += f" · peak accelerator {hw.peak_accelerator_mb:,.0f} MiB"
        return cls(
            record=record, units=tuple(units), pieces=tuple(case_pieces(record, units)),
            scale=scale, legend=legend(scale, record.method.name),
            legend_words=legend_words(record.method.name),
            top_words=top_words(units, top),
            fields=tuple(FieldShare(label, score, share) for label, score, share
                         in field_shares(record.attribution.per_field or {})),
            answer=record.answer.text, answer_title="Answer" + (
                " (forced)" if record.answer.forced else ""),
            heading=f"{model.name} · {model.device} · {model.dtype} · method "
                    f"{record.method.name} · offline",
            method_line=method_summary(record),
            parameters=", ".join(f"{k}={v}" for k, v in record.method.params.items()),
            completeness=completeness_text(record, steps_flag),
            completeness_hint=completeness_hint(
                record.method.params, record.attribution.completeness_error or 0.0, steps_flag)
            if record.attribution.completeness_error is not None else "",
            tokens=f"{sum(prompt.attributable)} case tokens of {len(prompt.token_ids)} prompt "
                   f"tokens ({prompt.format}); {len(record.answer.token_ids)} answer tokens",
            time=f"load {t.load_s:.1f} s · {generate} · attribute {t.attribute_s:.1f} s",
            memory=memory, device=hw.device_name,
            verdict=verdict_view(record.reliability) if record.reliability else None)

    def answer_token_rows(self, rows: int, words: int) -> list[tuple[str, float, str]]:
        """(answer token, log p, its top case words) for the first ``rows`` answer tokens."""
        record = self.record
        matrix = record.attribution.per_token or ()
        log_probs = record.answer.log_probs or (float("nan"),) * len(matrix)
        out = []
        for token, log_p, row in list(zip(record.answer.tokens, log_probs, matrix,
                                          strict=True))[:rows]:
            best = top_words(units_of(record, row), words)
            out.append((repr(token)[1:-1], log_p,
                        ", ".join(f"{w.text} ({w.score:+.2f})" for w in best)))
        return out
