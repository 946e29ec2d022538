"""Reports drawn with Qt (no window): the explanation PDF, the batch summary PDF, charts."""

from __future__ import annotations

from pathlib import Path

from desktop.report.pdf import NOTICE, report_html, write_pdf, write_summary_pdf
from desktop.report.qt import ensure_gui_application
from engine.record import Explanation

__all__ = ["NOTICE", "PdfReports", "ensure_gui_application", "report_html", "write_pdf",
           "write_summary_pdf"]


class PdfReports:
    """The batch job's report writer (engine.jobs.batch.Reports)."""

    def case_pdf(self, record: Explanation, path: Path) -> None:
        write_pdf(record, path)

    def summary_pdf(self, rows: list[dict[str, object]], path: Path) -> None:
        write_summary_pdf(rows, path)
