"""Saved sessions: an explanation record plus how it was being viewed, reopened without
recomputing. Written atomically; files from another format version get a clear message."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from engine.errors import InvalidInputError, TokenTraceError
from engine.files import check_regular_file, parse_json
from engine.record import MAX_RECORD_BYTES, Explanation, from_plain, to_plain, write_text_atomic

SESSION_VERSION = 1


@dataclass(frozen=True)
class ViewState:
    selected_row: int | None = None  # answer token shown, None for the whole answer
    granularity: str = "word"
    sorted_chart: bool = False
    top_k: int = 20


def save_session(path: str | Path, record: Explanation, view: ViewState,
                 whatifs: Sequence[Any] = ()) -> None:
    """Write the session; ``whatifs`` (engine.whatif.WhatIf of this explanation) are kept
    with it."""
    data = {"tokentrace_session": SESSION_VERSION, "view": asdict(view),
            "record": record.to_dict(), "whatifs": [to_plain(w) for w in whatifs]}
    write_text_atomic(Path(path), json.dumps(data, indent=1, ensure_ascii=False))


LOG_PROB_TOLERANCE = 0.02  # relative, past 1 nat: batched scoring against generation's


def _whatifs(path: str | Path, data: dict[str, Any], record: Explanation) -> list[Any]:
    """The what-ifs saved with a session (none in an older one), each checked like a record and
    checked to be about ``record``'s case and model."""
    from engine.whatif import WhatIf

    saved = data.get("whatifs", [])
    if not isinstance(saved, list):
        raise InvalidInputError(f"{path}: its what-ifs are not a list")
    from engine.whatif import apply_edits

    found = [from_plain(WhatIf, item) for item in saved]
    model = record.model
    for whatif in found:
        theirs = whatif.model
        if whatif.original_case_sha256 != record.prompt.case_sha256 or (
                theirs.sha256, theirs.tokenizer_sha256, theirs.template_sha256, theirs.dtype) != (
                model.sha256, model.tokenizer_sha256, model.template_sha256, model.dtype):
            raise InvalidInputError(f"{path}: a what-if belongs to another case or model")
        # The original answer's log-probabilities on the original case are the record's own
        # (up to rounding): a what-if's "before" cannot be made up.
        if record.answer.log_probs and any(
                abs(ours - theirs) > LOG_PROB_TOLERANCE * (1 + abs(ours)) for ours, theirs in zip(
                    record.answer.log_probs, whatif.original_log_probs, strict=True)):
            raise InvalidInputError(f"{path}: a what-if's log-probabilities of the original "
                                    "answer are not the explanation's (the file was altered)")
        # What is shown as the original answer, and as the edited case, must be what they
        # were: the record's own answer, and its case with the what-if's edits.
        if whatif.original.token_ids != record.answer.token_ids:
            raise InvalidInputError(f"{path}: a what-if's original answer is not the "
                                    "explanation's answer (the file was altered)")
        try:
            edited = apply_edits(record.prompt.case_text, whatif.edits)
        except TokenTraceError as exc:
            raise InvalidInputError(f"{path}: a what-if's edits do not apply to the case "
                                    f"({exc})") from None
        if edited != whatif.edited_case:
            raise InvalidInputError(f"{path}: a what-if's edited case is not the case with its "
                                    "edits (the file was altered)")
    return found


def load_session(path: str | Path) -> tuple[Explanation, ViewState, list[Any]]:
    """The record, how it was viewed, and the what-ifs kept with it."""
    check_regular_file(Path(path), "session file", MAX_RECORD_BYTES)
    try:
        data = parse_json(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:  # UnicodeDecodeError is a ValueError
        raise InvalidInputError(f"{path} is not a TokenTrace session ({exc})") from None
    if not isinstance(data, dict):
        raise InvalidInputError(f"{path} is not a TokenTrace session")
    if "tokentrace_session" not in data and "schema_version" in data:
        return Explanation.from_dict(data), ViewState(), []  # a bare record opens too
    version = data.get("tokentrace_session")
    if version != SESSION_VERSION:
        newer = isinstance(version, int) and version > SESSION_VERSION
        raise InvalidInputError(
            f"{path} is a session of format {version!r}, "
            + ("written by a newer TokenTrace; update TokenTrace to open it" if newer
               else f"which this TokenTrace cannot read (it reads format {SESSION_VERSION})"))
    record = Explanation.from_dict(data.get("record"))
    try:
        view = ViewState(**data.get("view", {}))
    except TypeError as exc:
        raise InvalidInputError(f"{path}: unreadable view state ({exc})") from None
    return record, _sane(view, len(record.answer.token_ids)), _whatifs(path, data, record)


def _sane(view: ViewState, answer_tokens: int) -> ViewState:
    """The view with anything out of type or range put back to its default: a view state only
    says how a record was being looked at, so a bad one costs the look, never the record."""
    default = ViewState()
    row = view.selected_row
    if not (isinstance(row, int) and not isinstance(row, bool) and 0 <= row < answer_tokens):
        row = None
    top_k = view.top_k
    if not (isinstance(top_k, int) and not isinstance(top_k, bool) and 3 <= top_k <= 200):
        top_k = default.top_k
    return ViewState(
        row, view.granularity if view.granularity in GRANULARITIES else default.granularity,
        view.sorted_chart if isinstance(view.sorted_chart, bool) else default.sorted_chart,
        top_k)


GRANULARITIES = ("token", "word", "sentence")
