"""Reading cases: one case from text or a file, a fields file, case files of many cases, and
the bundled demo cases.

Case files hold one case per JSONL line or CSV row, with an id, the text and optional fields.
JSONL: ``{"id": ..., "text": ..., "title": ..., "fields": {...}}``.
CSV: columns ``id`` and ``text`` (``title`` optional); every other column is a field.
"""

from __future__ import annotations

import csv
import io
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from engine.errors import InvalidInputError
from engine.files import check_regular_file, parse_json
from engine.prompting import validate_case_text

MAX_CASE_FILE_BYTES = 1_000_000  # one case as text
MAX_CASES_FILE_BYTES = 200_000_000  # a JSONL or CSV file of many cases


DEMO_CASES = Path(__file__).resolve().parent.parent / "resources" / "cases"


@dataclass(frozen=True)
class Case:
    id: str
    text: str
    title: str = ""
    fields: dict[str, Any] = field(default_factory=dict)


def load_cases(path: str | Path) -> list[Case]:
    """Read every case in ``path``; raise one clear error naming the line or row at fault."""
    path = Path(path)
    check_regular_file(path, "case file", MAX_CASES_FILE_BYTES)
    try:
        raw = path.read_text(encoding="utf-8-sig")
    except FileNotFoundError:
        raise InvalidInputError(f"case file not found: {path}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise InvalidInputError(f"cannot read {path} as UTF-8 text: {exc}") from None
    if path.suffix.lower() == ".csv":
        entries = _csv_entries(path, raw)
        where = "row"
    elif path.suffix.lower() in (".jsonl", ".ndjson"):
        entries = []
        # Lines end at "\n" only: U+2028 and friends may sit inside a JSON string.
        for k, line in enumerate(raw.split("\n"), 1):
            if not line.strip():
                continue
            try:
                entries.append((k, parse_json(line)))
            except ValueError as exc:
                reason = exc.msg if isinstance(exc, json.JSONDecodeError) else str(exc)
                raise InvalidInputError(f"{path}, line {k}: not valid JSON ({reason})") from None
        where = "line"
    else:
        raise InvalidInputError(f"{path}: case files are .jsonl or .csv")
    cases: list[Case] = []
    seen: set[str] = set()
    for number, entry in entries:
        if not isinstance(entry, dict):
            raise InvalidInputError(f"{path}, {where} {number}: expected an object")
        raw_id, text = entry.get("id", ""), entry.get("text")
        if isinstance(raw_id, bool) or not isinstance(raw_id, (str, int)):
            raise InvalidInputError(f"{path}, {where} {number}: a case id is text or a whole "
                                    f"number, not {type(raw_id).__name__}")
        case_id = str(raw_id).strip()
        if not case_id or not isinstance(text, str) or not text.strip():
            raise InvalidInputError(f"{path}, {where} {number}: each case needs an id and text")
        if not case_id.isprintable():  # a line break in an id forges a line of the run's log
            raise InvalidInputError(f"{path}, {where} {number}: a case id must be printable "
                                    "text on one line (no line breaks or control characters)")
        if case_id in seen:
            raise InvalidInputError(f"{path}, {where} {number}: duplicate case id {case_id!r}")
        if len(text) > MAX_CASE_FILE_BYTES:
            raise InvalidInputError(f"{path}, {where} {number}: the case text is "
                                    f"{len(text):,} characters; at most "
                                    f"{MAX_CASE_FILE_BYTES:,} are allowed")
        fields = entry.get("fields")
        fields = {} if fields is None else fields
        if not isinstance(fields, dict) or not all(_plain_value(v) for v in fields.values()) \
                or not all(_field_name(k) for k in fields):
            raise InvalidInputError(f"{path}, {where} {number}: \"fields\" must be an object "
                                    "of names (text on one line) to plain values (text, "
                                    "finite numbers, true/false)")
        title = entry.get("title")
        if title is not None and not isinstance(title, str):
            raise InvalidInputError(f"{path}, {where} {number}: a case title is text, not "
                                    f"{type(title).__name__}")
        seen.add(case_id)
        cases.append(Case(case_id, text.strip(), title or "", dict(fields)))
    if not cases:
        raise InvalidInputError(f"{path} holds no cases")
    return cases


def _csv_entries(path: Path, raw: str) -> list[tuple[int, dict[str, Any]]]:
    """(row number, entry) for each CSV row; quoted fields may hold new lines."""
    csv.field_size_limit(max(csv.field_size_limit(), MAX_CASE_FILE_BYTES + 1))
    reader = csv.DictReader(io.StringIO(raw, newline=""))
    try:
        columns = reader.fieldnames or []
        missing = [c for c in ("id", "text") if c not in columns]
        if missing:
            raise InvalidInputError(
                f"{path}: the header has no {' or '.join(repr(c) for c in missing)} column "
                f"(columns: {', '.join(repr(c) for c in columns[:10]) or 'none'})")
        twice = sorted({c for c in columns if columns.count(c) > 1})
        if twice:  # the last would win, silently
            raise InvalidInputError(f"{path}: the header names {', '.join(map(repr, twice))} "
                                    "more than once")
        entries = []
        for row in reader:
            nameless = [k for k, v in row.items() if k is not None and not k.strip()
                        and (v or "").strip() and not _row_number(columns, k, v)]
            if nameless:  # its values would be dropped, silently
                raise InvalidInputError(
                    f"{path}, line {reader.line_num}: a value in a column with no name in the "
                    f"header (column {columns.index(nameless[0]) + 1}); name the column")
            if None in row:  # an unquoted comma in the text: the case would be cut there
                raise InvalidInputError(
                    f"{path}, line {reader.line_num}: {len(columns) + len(row[None])} values "
                    f"for {len(columns)} columns; quote a text that holds commas (\"...\")")
            entries.append((reader.line_num, _from_csv_row(row)))
        return entries
    except csv.Error as exc:
        if "field larger than field limit" in str(exc):
            raise InvalidInputError(
                f"{path}, after line {reader.line_num}: a field is longer than a case may be "
                f"(at most {MAX_CASE_FILE_BYTES:,} characters)") from None
        raise InvalidInputError(f"{path}, line {reader.line_num}: not valid CSV ({exc})") from None


def _row_number(columns: list[str], name: str, value: str) -> bool:
    """A nameless first column of whole numbers: the row index pandas (``to_csv()``) and R
    (``write.csv``) write by default, dropped as before."""
    text = value.strip()
    return columns.index(name) == 0 and text.isascii() and text.isdigit()


def _from_csv_row(row: dict[str, str]) -> dict[str, Any]:
    known = {"id", "text", "title"}
    return {"id": row.get("id"), "text": row.get("text"), "title": row.get("title"),
            "fields": {k: v for k, v in row.items() if k not in known and k}}


def read_case(text: str | None, case_file: Path | None) -> str:
    """The case text from the argument or the file, checked for emptiness and binary content."""
    if text is not None and case_file is not None:
        raise InvalidInputError("give the case either as TEXT or with --case-file, not both")
    if case_file is not None:
        check_regular_file(case_file, "case file", MAX_CASE_FILE_BYTES)
        try:
            data = case_file.read_bytes()
        except FileNotFoundError:
            raise InvalidInputError(f"case file not found: {case_file}") from None
        except OSError as exc:
            raise InvalidInputError(f"cannot read {case_file}: {exc.strerror}") from None
        if data.startswith((b"\xff\xfe", b"\xfe\xff")):
            raise InvalidInputError(f"{case_file} is UTF-16 text (as some Windows editors save "
                                    "it); save the case as UTF-8 plain text")
        if b"\x00" in data:
            raise InvalidInputError(f"{case_file} looks binary (it contains NUL bytes); give a "
                                    "plain-text case")
        try:
            text = data.decode("utf-8-sig")
        except UnicodeDecodeError:
            raise InvalidInputError(f"{case_file} is not UTF-8 text (is it a binary or a Word "
                                    "file?); save the case as plain text") from None
    if text is None:
        raise InvalidInputError("no case given: pass the case TEXT or --case-file FILE")
    return validate_case_text(text)


def read_fields(path: Path) -> dict[str, Any]:
    """A JSON object of clinical fields (name -> value)."""
    check_regular_file(path, "fields file", MAX_CASE_FILE_BYTES)
    try:
        data = parse_json(path.read_text(encoding="utf-8-sig"))
    except FileNotFoundError:
        raise InvalidInputError(f"fields file not found: {path}") from None
    except (OSError, ValueError) as exc:  # UnicodeDecodeError is a ValueError
        raise InvalidInputError(f"{path} is not a JSON object of fields ({exc})") from None
    if not isinstance(data, dict):
        raise InvalidInputError(f"{path} must hold a JSON object of fields")
    if not all(_plain_value(v) for v in data.values()):
        raise InvalidInputError(f"{path}: each field's value must be text, a finite number, "
                                "true/false or null")
    if not all(_field_name(k) for k in data):
        raise InvalidInputError(f"{path}: each field's name must be text on one line, not "
                                "empty")
    return data


def _field_name(name: str) -> bool:
    """A field's name is shown as a line's label ("HER2: negative"): text on one line."""
    return bool(name.strip()) and name.isprintable()


def _plain_value(value: Any) -> bool:
    return (value is None or isinstance(value, (str, int, bool))
            or (isinstance(value, float) and math.isfinite(value)))


def demo_cases(folder: Path = DEMO_CASES) -> list[tuple[str, str]]:
    """(menu title, case text) for the bundled synthetic cases."""
    entries = [(p.stem.replace("_", " ").capitalize(), p.read_text(encoding="utf-8").strip())
               for p in sorted(folder.glob("*.txt"))]
    for path in sorted(folder.glob("*.jsonl")):
        entries += [(case.title or case.id, case.text) for case in load_cases(path)]
    return entries


def read_any_case(text: str | None, case_file: Path | None, fields_file: Path | None
                  ) -> tuple[str, tuple[tuple[str, int, int], ...]]:
    """The case given as TEXT, a case file or a fields file (exactly one), and its fields'
    (name, start, end) spans (none for plain text)."""
    if fields_file is not None:
        if text is not None or case_file is not None:
            raise InvalidInputError("give the case as TEXT, --case-file or --fields-file, "
                                    "not several")
        from engine.fields import render_fields

        return render_fields(read_fields(fields_file))
    return read_case(text, case_file), ()
