"""Markdown reports that several benchmarks share: each benchmark owns its own ``## `` sections."""

from __future__ import annotations

from pathlib import Path


def split_sections(text: str) -> tuple[str, dict[str, str]]:
    """(what comes before the first ``## `` heading, {heading line: section text})."""
    head, found, heading = "", {}, None
    for line in text.splitlines(keepends=True):
        if line.startswith("## "):
            heading = line.rstrip("\n")
            found[heading] = ""
        if heading is None:
            head += line
        else:
            found[heading] += line
    return head, found


def join_sections(head: str, found: dict[str, str]) -> str:
    parts = [part.strip("\n") for part in (head, *found.values()) if part.strip()]
    return "\n\n".join(parts) + "\n"


def replace_section(path: Path, heading: str, text: str) -> None:
    """Put ``text`` (starting with ``heading``) in place of that section of ``path``, or at
    its end; every other part of the file stays as it is."""
    head, found = split_sections(path.read_text() if path.exists() else "")
    found[heading] = text
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(join_sections(head, found))


def keep_others(path: Path, text: str) -> str:
    """``text`` (a whole new report) with the sections of ``path`` it does not have appended:
    those another benchmark wrote."""
    if not path.exists():
        return text
    head, found = split_sections(text)
    for heading, section in split_sections(path.read_text())[1].items():
        found.setdefault(heading, section)
    return join_sections(head, found)
