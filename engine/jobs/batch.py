"""Explain every case of a JSONL or CSV file, resumably.

Writes, under the output folder: ``records/<id>.json`` per case (and ``reports/<id>.pdf`` with
``pdf``), ``failures.json`` for cases that could not be explained, ``summary.csv`` and (with a
report writer) ``summary.pdf``. A rerun skips cases whose record already exists, so an
interrupted batch resumes where it stopped.
"""

from __future__ import annotations

import csv
import io
import json
import re
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Protocol

from engine.cases import Case, load_cases
from engine.errors import Cancelled, InvalidSettingsError, TokenTraceError
from engine.explain import ExplainRequest, explain
from engine.fields import field_shares, render_fields
from engine.grouping import top_spans, word_scores
from engine.models import LoadedModel
from engine.record import Explanation, write_text_atomic
from engine.task import TaskState

SUMMARY_COLUMNS = ["case", "answer", "top_words", "top_fields", "completeness_error", "load_s",
                   "generate_s", "attribute_s", "peak_rss_mb", "peak_accelerator_mb", "device"]


class Reports(Protocol):
    """What draws the PDFs (the desktop's report package, which needs Qt)."""

    def case_pdf(self, record: Explanation, path: Path) -> None: ...

    def summary_pdf(self, rows: list[dict[str, object]], path: Path) -> None: ...


@dataclass(frozen=True)
class BatchSettings:
    cases_file: Path
    out: Path
    template: ExplainRequest  # every setting but the case text
    from_fields: bool = False  # explain each case's clinical fields rendered as text
    pdf: bool = False  # a report per case (needs ``reports``)

    def validate(self) -> None:
        self.template.validate()
        load_cases(self.cases_file)  # a broken case file fails before the model loads


@dataclass(frozen=True)
class BatchResult:
    explained: int  # now
    resumed: int  # already done before this run
    failed: int


def safe_name(case_id: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]", "_", case_id)[:120] or "case"


def record_path(out: Path, case: Case) -> Path:
    return out / "records" / f"{safe_name(case.id)}.json"


def existing_record(out: Path, case: Case) -> Explanation | None:
    path = record_path(out, case)
    if not path.is_file():
        return None
    try:
        return Explanation.load(path)
    except TokenTraceError:
        return None  # unreadable: explain the case again


def request_for(case: Case, template: ExplainRequest, from_fields: bool) -> ExplainRequest:
    """The template with this case's text, or its clinical fields rendered as text."""
    if from_fields:
        text, spans = render_fields(case.fields)
        return replace(template, case_text=text, fields=spans)
    return replace(template, case_text=case.text)


def run_batch(settings: BatchSettings, loaded: LoadedModel, state: TaskState | None = None,
              reports: Reports | None = None, log: Callable[[str], None] = lambda line: None
              ) -> BatchResult:
    """Explain every case not yet done; ``Cancelled`` (or Ctrl-C) keeps what finished."""
    state = state or TaskState()
    if settings.pdf and reports is None:
        raise InvalidSettingsError("PDF reports need a report writer (the desktop's)")
    cases = load_cases(settings.cases_file)
    out = settings.out
    out.mkdir(parents=True, exist_ok=True)
    failures: dict[str, str] = {}
    done_now = resumed = 0
    try:
        for number, case in enumerate(cases, 1):
            state.progressed("cases", number - 1, len(cases))
            if existing_record(out, case) is not None:
                resumed += 1
                continue
            try:
                record = explain(request_for(case, settings.template, settings.from_fields),
                                 loaded, state)
            except Cancelled:
                raise
            except TokenTraceError as exc:
                failures[case.id] = str(exc)
                log(f"case {case.id}: skipped: {exc}")
                continue
            record.save(record_path(out, case))
            if settings.pdf and reports is not None:
                reports.case_pdf(record, out / "reports" / f"{safe_name(case.id)}.pdf")
            done_now += 1
            log(f"case {case.id}: done in {record.timings.attribute_s:.1f} s")
        state.progressed("cases", len(cases), len(cases))
    finally:
        write_text_atomic(out / "failures.json", json.dumps(failures, indent=1))
        write_summaries(cases, out, reports)
    return BatchResult(done_now, resumed, len(failures))


def summary_rows(cases: list[Case], out: Path) -> list[dict[str, object]]:
    rows = []
    for case in cases:
        record = existing_record(out, case)
        if record is None:
            continue
        prompt = record.prompt
        words = [w for w in word_scores(prompt.text, prompt.offsets,
                                        record.attribution.sequence, prompt.attributable)
                 if any(c.isalnum() for c in w.text)]
        t, hw = record.timings, record.hardware
        rows.append({
            "case": case.id, "answer": record.answer.text,
            "top_words": "; ".join(f"{w.text} ({w.score:+.3f})" for w in top_spans(words, 5)),
            "top_fields": "; ".join(f"{label} {100 * share:.0f}%" for label, _, share
                                    in field_shares(record.attribution.per_field)[:3]),
            "completeness_error": record.attribution.completeness_error,
            "load_s": round(t.load_s, 3), "generate_s": round(t.generate_s, 3),
            "attribute_s": round(t.attribute_s, 3), "peak_rss_mb": round(hw.peak_rss_mb, 1),
            "peak_accelerator_mb": hw.peak_accelerator_mb, "device": hw.device_name,
        })
    return rows


def write_summaries(cases: list[Case], out: Path, reports: Reports | None) -> None:
    rows = summary_rows(cases, out)
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=SUMMARY_COLUMNS)
    writer.writeheader()
    writer.writerows(rows)
    write_text_atomic(out / "summary.csv", buffer.getvalue())
    if rows and reports is not None:
        reports.summary_pdf(rows, out / "summary.pdf")
