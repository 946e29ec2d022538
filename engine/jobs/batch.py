"""Explain every case of a JSONL or CSV file, resumably.

Writes, under the output folder: ``records/<name>.json`` per case (and ``reports/<name>.pdf``
with ``pdf``), where ``<name>`` is a readable prefix of the case id plus a hash of the exact id;
``records.json``, which settings each record was made with; ``failures.json`` for cases that
could not be explained; ``summary.csv`` and (with a report writer) ``summary.pdf``.

A rerun resumes: a record is reused only if it was made with this run's settings, for this
case's text, with this model, precision and tokenizer; otherwise the case is explained again
and the log says why. A missing report of a reused record is made.

``run_batch`` is the driver: it decides what to explain, and writes every record, report and
summary. The explaining is a pool's (``engine.jobs.pool``): this process, or Ray workers that
hand back the same records in the order they finish.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import os
import re
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Protocol

from engine.audit import audited
from engine.cases import Case, load_cases
from engine.errors import InvalidSettingsError, OutputError, TokenTraceError
from engine.explain import ExplainRequest
from engine.fields import field_shares, render_fields
from engine.files import check_distinct, parse_json
from engine.grouping import top_spans, word_scores
from engine.jobs.pool import CasePool, as_pool
from engine.models import LoadedModel
from engine.record import Explanation, ModelInfo, check_writable, write_text_atomic
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
        check_distinct({"case list": self.cases_file},
                       {f"batch output {name}": self.out / name for name in OUTPUT_FILES},
                       inside={"records folder": self.out / "records",
                               "reports folder": self.out / "reports"})
        load_cases(self.cases_file)  # a broken case file fails before the model loads
        check_writable(self.out / "summary.csv", "batch output")  # and an unwritable folder
        check_batch_folder(self.out)


@dataclass(frozen=True)
class BatchResult:
    explained: int  # now
    resumed: int  # already done before this run
    failed: int


def safe_name(case_id: str) -> str:
    """A file name unique to ``case_id`` on every OS: a readable prefix plus a hash of the exact
    id, so ids that sanitise alike (``a/b`` and ``a_b``), long ids sharing a prefix, non-ASCII
    ids and ids differing only in case (on case-insensitive file systems) never share a file."""
    readable = re.sub(r"[^A-Za-z0-9._-]", "_", case_id)[:60].strip("._") or "case"
    return f"{readable}-{hashlib.sha256(case_id.encode('utf-8')).hexdigest()[:12]}"


def record_path(out: Path, case: Case) -> Path:
    return out / "records" / f"{safe_name(case.id)}.json"


def report_path(out: Path, case: Case) -> Path:
    return out / "reports" / f"{safe_name(case.id)}.pdf"


def existing_record(out: Path, case: Case,
                    log: Callable[[str], None] = lambda line: None) -> Explanation | None:
    """The case's record in ``out``, or None; one that cannot be read (edited, cut short) is
    None too, and ``log`` hears why."""
    path = record_path(out, case)
    if not path.is_file():
        return None
    try:
        return Explanation.load(path)
    except TokenTraceError as exc:
        log(f"case {case.id}: explained again: its record cannot be read ({exc})")
        return None


INDEX = "records.json"  # which settings each record was made with
OUTPUT_FILES = (INDEX, "failures.json", "summary.csv", "summary.pdf")  # beside the folders


def check_batch_folder(out: Path) -> None:
    """``out`` is new, empty, or a batch's own folder (it has the index every run writes first),
    and its outputs can be written: a user's folder holding a ``summary.csv`` of their own is
    never overwritten, and a folder where a file goes fails now, not case by case."""
    if not out.is_dir():
        return
    ours = [name for name in OUTPUT_FILES[1:] if os.path.lexists(out / name)]
    if ours and not (out / INDEX).is_file():
        raise OutputError(f"{out} holds {ours[0]} but no {INDEX}: it is not a TokenTrace batch "
                          "folder, and its files would be replaced; choose a new or empty folder")
    if (out / INDEX).is_file() and not _is_index(out / INDEX):
        raise OutputError(f"{out / INDEX} is not a TokenTrace batch index (a file name -> "
                          "settings digest list), and the batch would replace it; choose a new "
                          "or empty folder")
    for name in OUTPUT_FILES:
        if (out / name).is_dir():
            raise OutputError(f"{out / name} is a folder; the batch writes a file there")
        if os.path.exists(out / name) and not (out / name).is_file():
            raise OutputError(f"{out / name} is a device, pipe or socket, not a file; the "
                              "batch writes a file there")
    for name in ("records", "reports"):
        if os.path.lexists(out / name) and not (out / name).is_dir():
            raise OutputError(f"{out / name} is a file; the batch writes a folder there")


MAX_INDEX_BYTES = 100 * 2**20  # a million cases' entries


def _is_index(path: Path) -> bool:
    """Whether ``path`` reads as a batch's index: a JSON object of record names (without their
    ``.json``) to settings digests (64 hexadecimal digits)."""
    try:
        if path.stat().st_size > MAX_INDEX_BYTES:
            return False
        data = parse_json(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(data, dict) and all(
        isinstance(name, str) and isinstance(digest, str)
        and re.fullmatch(r"[0-9a-f]{64}", digest) is not None for name, digest in data.items())


def _read_index(out: Path) -> dict[str, str]:
    try:
        data = parse_json((out / INDEX).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return {k: v for k, v in data.items() if isinstance(k, str) and isinstance(v, str)} \
        if isinstance(data, dict) else {}


def settings_fingerprint(template: ExplainRequest, from_fields: bool) -> dict[str, object]:
    """What every record of a batch depends on besides its case and the model."""
    return {"method": template.method, "params": template.method_params(),
            "max_new_tokens": template.max_new_tokens, "target": template.target,
            "raw_prompt": template.raw_prompt, "system_prompt": template.system_prompt,
            "from_fields": from_fields}


def stale_reason(record: Explanation, request: ExplainRequest, info: ModelInfo) -> str | None:
    """Why an existing record cannot stand for this run's case (None: it can)."""
    if record.prompt.case_text != request.case_text:
        return "its case text differs"
    if record.method.name != request.method:
        return "it was made with another method"
    if (record.model.sha256, record.model.dtype) != (info.sha256, info.dtype):
        return "it was made with another model or precision"
    if record.model.tokenizer_sha256 and record.model.tokenizer_sha256 != info.tokenizer_sha256:
        return "it was made with another tokenizer"
    if record.model.template_sha256 and record.model.template_sha256 != info.template_sha256:
        return "it was made with another chat template"
    return None


def request_for(case: Case, template: ExplainRequest, from_fields: bool) -> ExplainRequest:
    """The template with this case's text, or its clinical fields rendered as text."""
    if from_fields:
        text, spans = render_fields(case.fields)
        return replace(template, case_text=text, fields=spans)
    return replace(template, case_text=case.text)


def run_batch(settings: BatchSettings, loaded: LoadedModel | CasePool,
              state: TaskState | None = None, reports: Reports | None = None,
              log: Callable[[str], None] = lambda line: None) -> BatchResult:
    """Explain every case not yet done, with ``loaded`` (a model: in this process) or a
    ``CasePool``; ``Cancelled`` (or Ctrl-C) keeps what finished."""
    state = state or TaskState()
    pool = as_pool(loaded)
    if settings.pdf and reports is None:
        raise InvalidSettingsError("PDF reports need a report writer (the desktop's)")
    cases = load_cases(settings.cases_file)
    out = settings.out
    check_batch_folder(out)
    out.mkdir(parents=True, exist_ok=True)
    if not (out / INDEX).is_file():  # first: it marks the folder as a batch's
        write_text_atomic(out / INDEX, "{}")
    fingerprint = hashlib.sha256(json.dumps(
        settings_fingerprint(settings.template, settings.from_fields), sort_keys=True,
        default=str).encode()).hexdigest()
    index = _read_index(out)  # record file name -> the settings fingerprint it was made with
    failures: dict[str, str] = {}
    current: set[str] = set()  # records that stand for this run: resumed, or made now
    done_now = resumed = 0
    finished = False
    by_id = {case.id: case for case in cases}
    try:
        jobs = []
        for case in cases:
            request = request_for(case, settings.template, settings.from_fields)
            name = safe_name(case.id)
            record = existing_record(out, case, log) if name in index else None
            if record is not None:
                reason = ("it was made with other settings" if index[name] != fingerprint
                          else stale_reason(record, request, pool.info))
                if reason is None:
                    if settings.pdf and reports is not None and not report_path(
                            out, case).is_file():
                        try:  # made on resume
                            reports.case_pdf(record, report_path(out, case))
                        except OutputError as exc:
                            failures[case.id] = str(exc)
                            log(f"case {case.id}: its report not saved: {exc}")
                            continue
                    resumed += 1
                    current.add(name)
                    continue
                log(f"case {case.id}: explained again: {reason}")
            jobs.append((case.id, request))
        state.progressed("cases", resumed, len(cases))
        for case_id, found in pool.explain(jobs, state):
            case = by_id[case_id]
            if isinstance(found, TokenTraceError):
                failures[case.id] = str(found)
                log(f"case {case.id}: skipped: {found}")
            elif _save(found, case, settings, reports, index, fingerprint, failures, log):
                done_now += 1
                current.add(safe_name(case.id))
                log(f"case {case.id}: done in {found.timings.attribute_s:.1f} s")
            state.progressed("cases", resumed + done_now + len(failures), len(cases))
        state.progressed("cases", len(cases), len(cases))
        finished = True
    finally:
        # The summaries never hide an error already on its way out of the loop.
        try:
            write_text_atomic(out / "failures.json", json.dumps(failures, indent=1))
            # Only records that stand for this run: a case explained again that then failed
            # (or was cancelled) keeps its old record on disk, but not in the summary.
            write_summaries(cases, out, reports, current)
        except OutputError as exc:
            if finished:
                raise
            log(f"the summary could not be written either: {exc}")
    return BatchResult(done_now, resumed, len(failures))


def _save(record: Explanation, case: Case, settings: BatchSettings, reports: Reports | None,
          index: dict[str, str], fingerprint: str, failures: dict[str, str],
          log: Callable[[str], None]) -> bool:
    """Write a case's record (and report), and the index that says what it was made with.
    A file that cannot be written makes the case a failure, not the batch's end."""
    out = settings.out
    try:
        # The old report goes first: a stop between the record and its new report must not
        # leave the new record beside the old record's report (a rerun keeps a report it finds).
        _remove(report_path(out, case))
        record.save(record_path(out, case))
        audited("export", record, file=str(record_path(out, case)), case_id=case.id)
        index[safe_name(case.id)] = fingerprint
        write_text_atomic(out / INDEX, json.dumps(index, indent=1, sort_keys=True))
        if settings.pdf and reports is not None:
            reports.case_pdf(record, report_path(out, case))
    except OutputError as exc:
        failures[case.id] = str(exc)
        log(f"case {case.id}: not saved: {exc}")
        return False
    return True


def summary_rows(cases: list[Case], out: Path, current: set[str] | None = None
                 ) -> list[dict[str, object]]:
    """One row per case with a record (made with this run's settings: ``current`` names)."""
    rows = []
    for case in cases:
        if current is not None and safe_name(case.id) not in current:
            continue
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


def write_summaries(cases: list[Case], out: Path, reports: Reports | None,
                    current: set[str] | None = None) -> None:
    rows = summary_rows(cases, out, current)
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=SUMMARY_COLUMNS)
    writer.writeheader()
    writer.writerows({key: inert(value) for key, value in row.items()} for row in rows)
    write_text_atomic(out / "summary.csv", buffer.getvalue())
    if rows and reports is not None:
        reports.summary_pdf(rows, out / "summary.pdf")
    else:  # an earlier run's would disagree with this summary.csv
        _remove(out / "summary.pdf")


def inert(value: object) -> object:
    """A text cell a spreadsheet will not run as a formula: one starting with = + - @ or a tab
    or carriage return (a case id such as ``=HYPERLINK(...)``) gets a leading apostrophe, as
    OWASP advises for CSV files; numbers stay numbers."""
    if isinstance(value, str) and value[:1] in ("=", "+", "-", "@", "\t", "\r"):
        return "'" + value
    return value


def _remove(path: Path) -> None:
    """Delete the file ``path`` if it is there (OutputError, one line, if it cannot be)."""
    try:
        path.unlink(missing_ok=True)
    except OSError as exc:
        raise OutputError(f"cannot remove the earlier {path}: {exc.strerror or exc}") from None
