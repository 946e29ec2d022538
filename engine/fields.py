"""Clinical fields: a case given as structured fields, rendered as text through a template,
so that attribution can also be summed per field ("HER2: 31% of the attribution").

Each field becomes one line, ``Label: value``; a field's attribution is the sum over the tokens
of its whole line (label and value), because the label is what gives the value its meaning.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

LABELS = {
    "age": "Age", "sex": "Sex", "menopausal_status": "Menopausal status",
    "tumour_size_cm": "Tumour size (cm)", "grade": "Grade", "er": "ER", "pr": "PR",
    "her2": "HER2", "ki67_pct": "Ki-67 (%)", "nodes": "Nodes",
}
DEFAULT_QUESTION = "What is the recommended next step in management?"
# The values a field usually takes in breast-cancer reports, offered by the window's field editor
# (any other value can still be typed).
KNOWN_VALUES = {
    "sex": ("female", "male"),
    "menopausal_status": ("premenopausal", "perimenopausal", "postmenopausal"),
    "grade": ("1", "2", "3"),
    "er": ("positive", "negative", "low (1-10%)"),
    "pr": ("positive", "negative", "low (1-10%)"),
    "her2": ("negative (IHC 0)", "low (IHC 1+)", "low (IHC 2+, ISH negative)",
             "positive (IHC 2+, ISH positive)", "positive (IHC 3+)"),
    "nodes": ("negative", "positive", "1-3 positive", "4 or more positive"),
}


def label_of(name: str) -> str:
    """A field's label as the model reads it: the known fields' own ("her2" -> "HER2"), else
    the name as written, with "_" as a space and only an all lower-case name capitalised
    ("tumour_site" -> "Tumour site"; "ER", "pT" and "ECOG PS" stay as they are)."""
    if name in LABELS:
        return LABELS[name]
    spaced = name.replace("_", " ")
    return spaced.capitalize() if spaced.islower() else spaced


def render_fields(fields: Mapping[str, object], question: str = DEFAULT_QUESTION
                  ) -> tuple[str, tuple[tuple[str, int, int], ...]]:
    """The case text and, per field, its (name, start, end) character span in that text.

    Fields whose value is None or empty are left out; the question ends the case.
    """
    from engine.errors import InvalidInputError

    lines: list[str] = []
    spans: list[tuple[str, int, int]] = []
    labels: dict[str, str] = {}
    cursor = 0
    for name, value in fields.items():
        if value is None or str(value).strip() == "":
            continue
        line = f"{name}: {value}"
        if line.splitlines() != [line]:  # any line break, a trailing one too
            # A line break would make a line of its own, read (and scored) as another field:
            # "positive\nHER2: positive" under ER.
            raise InvalidInputError(f"field {name[:40]!r}: its name and value must be on one "
                                    "line")
        label = label_of(name)
        if label in labels:  # "er" and "ER": two lines the model reads as one field, twice
            raise InvalidInputError(f"fields {labels[label][:40]!r} and {name[:40]!r} are both "
                                    f"shown as {label[:40]!r}; keep one of them")
        labels[label] = name
        line = f"{label}: {value}"
        spans.append((name, cursor, cursor + len(line)))
        lines.append(line)
        cursor += len(line) + 1
    if not lines:
        raise InvalidInputError("the case has no fields with a value")
    lines.append(question)
    return "\n".join(lines), tuple(spans)


def field_scores(offsets: Sequence[tuple[int, int]], scores: Sequence[float],
                 attributable: Sequence[bool], spans: Sequence[tuple[str, int, int]],
                 shift: int) -> dict[str, float]:
    """Sum token scores per field. ``spans`` are in case coordinates; the case starts at
    ``shift`` in the prompt text the ``offsets`` refer to. A token belongs to the field that
    holds its last character."""
    totals = {name: 0.0 for name, _, _ in spans}
    for (s, e), score, keep in zip(offsets, scores, attributable, strict=True):
        if not keep or e <= s:
            continue
        last = e - 1 - shift
        for name, start, end in spans:
            if start <= last < end:
                totals[name] += float(score)
                break
    return totals


def field_shares(per_field: Mapping[str, float]) -> list[tuple[str, float, float]]:
    """(label, score, share of the summed absolute attribution), largest share first."""
    total = sum(abs(v) for v in per_field.values()) or 1.0
    rows = [(label_of(name), score, abs(score) / total) for name, score in per_field.items()]
    return sorted(rows, key=lambda row: row[2], reverse=True)
