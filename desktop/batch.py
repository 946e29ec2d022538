"""``tokentrace batch``: explain every case of a JSONL or CSV file, resumably.

Writes, under the output folder: ``records/<id>.json`` per case (and ``reports/<id>.pdf`` with
``--pdf``), ``failures.json`` for cases that could not be explained, ``summary.csv`` and
``summary.pdf``. A rerun of the same command skips cases whose record already exists, so an
interrupted batch (Ctrl-C) resumes where it stopped.
"""

from __future__ import annotations

import csv
import io
import json
import re
import sys
from dataclasses import replace
from pathlib import Path

from engine.cases import Case, load_cases
from engine.errors import Cancelled, TokenTraceError
from engine.explain import ExplainRequest, explain
from engine.fields import field_shares, render_fields
from engine.grouping import top_spans, word_scores
from engine.models import LoadedModel
from engine.record import Explanation, write_text_atomic
from engine.task import TaskState

SUMMARY_COLUMNS = ["case", "answer", "top_words", "top_fields", "completeness_error", "load_s",
                   "generate_s", "attribute_s", "peak_rss_mb", "peak_accelerator_mb", "device"]


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


def run_batch(cases_file: Path, out: Path, template: ExplainRequest, loaded: LoadedModel,
              state: TaskState, pdf: bool = False, log=print, from_fields: bool = False
              ) -> tuple[int, int, int]:
    """Explain every case not yet done. Returns (explained now, resumed, failed)."""
    cases = load_cases(cases_file)
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
                record = explain(request_for(case, template, from_fields), loaded, state)
            except Cancelled:
                raise
            except TokenTraceError as exc:
                failures[case.id] = str(exc)
                log(f"case {case.id}: skipped: {exc}")
                continue
            record.save(record_path(out, case))
            if pdf:
                from desktop.report import write_pdf

                write_pdf(record, out / "reports" / f"{safe_name(case.id)}.pdf")
            done_now += 1
            log(f"case {case.id}: done in {record.timings.attribute_s:.1f} s")
        state.progressed("cases", len(cases), len(cases))
    finally:
        write_text_atomic(out / "failures.json", json.dumps(failures, indent=1))
        write_summaries(cases, out)
    return done_now, resumed, len(failures)


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


def write_summaries(cases: list[Case], out: Path) -> None:
    rows = summary_rows(cases, out)
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=SUMMARY_COLUMNS)
    writer.writeheader()
    writer.writerows(rows)
    write_text_atomic(out / "summary.csv", buffer.getvalue())
    if rows:
        write_summary_pdf(rows, out / "summary.pdf")


def write_summary_pdf(rows: list[dict[str, object]], path: Path) -> None:
    """One table of every case with its time and memory: the hardware profile across cases."""
    import html

    from desktop.report import NOTICE, ensure_gui_application

    ensure_gui_application()
    from PySide6.QtGui import QPageLayout, QPageSize, QPdfWriter, QTextDocument

    from desktop.report import _font_family

    def mean(key: str) -> float:
        return sum(float(r[key]) for r in rows) / len(rows)

    body = "".join(
        f"<tr><td>{html.escape(str(r['case']))}</td><td>{html.escape(str(r['answer'])[:80])}"
        f"</td><td align='right'>{float(r['attribute_s']):.1f}</td>"
        f"<td align='right'>{float(r['peak_rss_mb']):,.0f}</td>"
        f"<td align='right'>{'' if r['completeness_error'] is None else format(100 * float(r['completeness_error']), '.1f')}</td></tr>"  # noqa: E501
        for r in rows)
    document = QTextDocument()
    from PySide6.QtGui import QFont

    document.setDefaultFont(QFont(_font_family(), 9))
    document.setHtml(f"""
<h1>TokenTrace batch summary</h1>
<p><b>{html.escape(NOTICE)}</b></p>
<p>{len(rows)} cases on {html.escape(str(rows[0]['device']))}. Mean attribution time
{mean('attribute_s'):.1f} s (max {max(float(r['attribute_s']) for r in rows):.1f} s); mean peak
RSS {mean('peak_rss_mb'):,.0f} MiB (max {max(float(r['peak_rss_mb']) for r in rows):,.0f} MiB).</p>
<table border="1" cellspacing="0" cellpadding="3">
<tr><th>case</th><th>answer</th><th>attribute s</th><th>peak RSS MiB</th>
<th>completeness %</th></tr>{body}</table>""")
    writer = QPdfWriter(str(path))
    writer.setPageSize(QPageSize(QPageSize.PageSizeId.A4))
    writer.setPageOrientation(QPageLayout.Orientation.Landscape)
    writer.setTitle("TokenTrace batch summary")
    writer.setCreator("TokenTrace")
    document.print_(writer)
    del writer


def main_batch(args, state: TaskState) -> int:
    from engine.models import ModelRequest, load_model

    template = ExplainRequest(case_text="placeholder", method=args.method, steps=args.steps,
                              max_new_tokens=args.max_new_tokens, target=args.target,
                              baseline=args.baseline, raw_prompt=args.raw_prompt,
                              system_prompt=args.system_prompt, matrix=not args.no_matrix,
                              batch_size=args.batch_size, options=tuple(
                                  (k.replace("-", "_"), v) for k, v in args.option))
    template.validate()
    load_cases(args.cases)  # a broken case file fails before the model loads
    loaded = load_model(ModelRequest(args.model, args.device, args.dtype), state)

    def log(line: str) -> None:
        print(line, file=sys.stderr)

    try:
        done, resumed, failed = run_batch(args.cases, args.out, template, loaded, state,
                                          pdf=args.pdf, log=log, from_fields=args.from_fields)
    except (KeyboardInterrupt, Cancelled):
        print(f"tokentrace: batch stopped; what finished is in {args.out}. Run the same command "
              "again to resume.", file=sys.stderr)
        return 130
    print(f"{done} cases explained, {resumed} already done, {failed} skipped; summary in "
          f"{args.out / 'summary.csv'}")
    return 0
