"""Case files: one case per JSONL line or CSV row, with an id, the text and optional fields.

JSONL: ``{"id": ..., "text": ..., "title": ..., "fields": {...}}``.
CSV: columns ``id`` and ``text`` (``title`` optional); every other column is a field.
"""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from engine.errors import InvalidInputError


@dataclass(frozen=True)
class Case:
    id: str
    text: str
    title: str = ""
    fields: dict[str, Any] = field(default_factory=dict)


def load_cases(path: str | Path) -> list[Case]:
    """Read every case in ``path``; raise one clear error naming the line or row at fault."""
    path = Path(path)
    try:
        raw = path.read_text(encoding="utf-8-sig")
    except FileNotFoundError:
        raise InvalidInputError(f"case file not found: {path}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise InvalidInputError(f"cannot read {path} as UTF-8 text: {exc}") from None
    if path.suffix.lower() == ".csv":
        rows = list(csv.DictReader(raw.splitlines()))
        entries = [(k + 2, _from_csv_row(row)) for k, row in enumerate(rows)]
        where = "row"
    elif path.suffix.lower() in (".jsonl", ".ndjson"):
        entries = []
        for k, line in enumerate(raw.splitlines(), 1):
            if not line.strip():
                continue
            try:
                entries.append((k, json.loads(line)))
            except json.JSONDecodeError as exc:
                raise InvalidInputError(f"{path}, line {k}: not valid JSON ({exc.msg})") from None
        where = "line"
    else:
        raise InvalidInputError(f"{path}: case files are .jsonl or .csv")
    cases: list[Case] = []
    seen: set[str] = set()
    for number, entry in entries:
        if not isinstance(entry, dict):
            raise InvalidInputError(f"{path}, {where} {number}: expected an object")
        case_id, text = str(entry.get("id", "")).strip(), entry.get("text")
        if not case_id or not isinstance(text, str) or not text.strip():
            raise InvalidInputError(f"{path}, {where} {number}: each case needs an id and text")
        if case_id in seen:
            raise InvalidInputError(f"{path}, {where} {number}: duplicate case id {case_id!r}")
        seen.add(case_id)
        cases.append(Case(case_id, text.strip(), str(entry.get("title") or ""),
                          dict(entry.get("fields") or {})))
    if not cases:
        raise InvalidInputError(f"{path} holds no cases")
    return cases


def _from_csv_row(row: dict[str, str]) -> dict[str, Any]:
    known = {"id", "text", "title"}
    return {"id": row.get("id"), "text": row.get("text"), "title": row.get("title"),
            "fields": {k: v for k, v in row.items() if k not in known and k}}
