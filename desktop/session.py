"""Saved sessions: an explanation record plus how it was being viewed, reopened without
recomputing. Written atomically; files from another format version get a clear message."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

from engine.errors import InvalidInputError
from engine.record import Explanation, write_text_atomic

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
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise InvalidInputError(f"session file not found: {path}") from None
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
    if view.granularity not in ("token", "word", "sentence"):
        view = ViewState(view.selected_row, "word", view.sorted_chart, view.top_k)
    return record, view
