"""Saved sessions: an explanation record plus how it was being viewed, reopened without
recomputing. Written atomically; files from another format version get a clear message."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

from engine.errors import InvalidInputError
from engine.files import check_regular_file
from engine.record import MAX_RECORD_BYTES, Explanation, write_text_atomic

SESSION_VERSION = 1


@dataclass(frozen=True)
class ViewState:
    selected_row: int | None = None  # answer token shown, None for the whole answer
    granularity: str = "word"
    sorted_chart: bool = False
    top_k: int = 20


def save_session(path: str | Path, record: Explanation, view: ViewState) -> None:
    data = {"tokentrace_session": SESSION_VERSION, "view": asdict(view),
            "record": record.to_dict()}
    write_text_atomic(Path(path), json.dumps(data, indent=1, ensure_ascii=False))


def load_session(path: str | Path) -> tuple[Explanation, ViewState]:
    check_regular_file(Path(path), "session file", MAX_RECORD_BYTES)
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InvalidInputError(f"{path} is not a TokenTrace session ({exc})") from None
    if not isinstance(data, dict):
        raise InvalidInputError(f"{path} is not a TokenTrace session")
    if "tokentrace_session" not in data and "schema_version" in data:
        return Explanation.from_dict(data), ViewState()  # a bare record opens too
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
    return record, _sane(view, len(record.answer.token_ids))


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
