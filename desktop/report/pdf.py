"""The PDF report: built from the explanation record with QTextDocument, printed by QPdfWriter.

No web engine. A bundled font (DejaVu Sans, resources/fonts) makes it render the same headless.
Built from the record's presentation model (desktop.present), like the terminal and the window.
The report holds: title, date and the decision-support notice; the case coloured by attribution
with a legend; the answer; a chart of the most influential words; the top words as a table; the
method, its parameters and the completeness error; model provenance and software versions; the
hardware profile.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

from desktop.present import (
    DIFF_HTML,
    UNCOLOURED_BELOW,
    ExplanationView,
    claim_views,
    evidence_words,
    flagged_first,
    html_text,
    levels_note,
    precision_note,
    printable,
    whatif_view,
)
from desktop.report.charts import chart_image
from desktop.report.qt import ensure_gui_application, font_family
from engine.audit import audited
from engine.errors import OutputError
from engine.record import Explanation, check_writable, scratch_beside

NOTICE = ("Decision support, not a diagnosis. The colours show what the language model's answer "
          "rested on, not whether the answer is right.")


def _css(colour: tuple[int, int, int]) -> str:
    return "rgb({},{},{})".format(*colour)


def _finish(written: Path, target: Path) -> None:
    """Put the complete ``written`` file in ``target``'s place (OutputError, one line, if it
    cannot be: a folder made read-only meanwhile, a name taken by a folder)."""
    _check_complete(written, target)
    try:
        os.replace(written, target)
    except OSError as exc:
        written.unlink(missing_ok=True)
        raise OutputError(f"cannot write the report {target}: {exc.strerror or exc}") from None


@contextlib.contextmanager
def _written_beside(target: Path) -> Iterator[Path]:
    """A scratch file beside ``target`` to print into, put in ``target``'s place when the block
    ends and the file is complete, removed when it fails (no half-written file is left)."""
    try:
        tmp = scratch_beside(target, ".pdf.partial")
    except OSError as exc:
        raise OutputError(f"cannot write {target}: {exc.strerror or exc}") from None
    try:
        yield tmp
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _finish(tmp, target)


def _check_complete(written: Path, target: Path) -> None:
    """QPdfWriter reports no errors: a full disk or a vanished folder leaves a short file. A
    complete PDF ends with its %%EOF marker."""
    try:
        size = written.stat().st_size
        with written.open("rb") as handle:
            handle.seek(max(0, size - 1024))
            tail = handle.read()
    except OSError as exc:
        raise OutputError(f"cannot write the report {target}: {exc.strerror or exc}") from None
    if size == 0 or b"%%EOF" not in tail:
        written.unlink(missing_ok=True)
        raise OutputError(f"the report {target} was not written completely (is the disk full?)")


MAX_UNSHOWN_LISTED = 12


def unshown_characters(document: Any) -> str:
    """The characters of the laid-out QTextDocument that no font here can draw: those Qt
    found no glyph for in the report's font or any font it falls back on, which print as empty
    boxes (Chinese or Japanese, or emoji, on a machine without such fonts). Format characters
    and variation selectors, which draw nothing anyway, are left out."""
    import unicodedata

    from PySide6.QtGui import QTextLayout

    flags = (QTextLayout.GlyphRunRetrievalFlag.RetrieveGlyphIndexes
             | QTextLayout.GlyphRunRetrievalFlag.RetrieveStringIndexes)
    missing: dict[str, None] = {}
    block = document.begin()
    while block.isValid():
        document.documentLayout().blockBoundingRect(block)  # lays the block out
        # Qt counts UTF-16 units: a character beyond U+FFFF (an emoji) takes two.
        units = [c for c in block.text() for _ in range(2 if ord(c) > 0xFFFF else 1)]
        layout = block.layout()
        for line in range(layout.lineCount()):
            for run in layout.lineAt(line).glyphRuns(-1, -1, flags):
                for glyph, at in zip(run.glyphIndexes(), run.stringIndexes(), strict=False):
                    if glyph == 0 and at < len(units) and not units[at].isspace() \
                            and unicodedata.category(units[at]) != "Cf" \
                            and not "\ufe00" <= units[at] <= "\ufe0f":
                        missing[units[at]] = None
        block = block.next()
    return "".join(missing)


def _unshown_html(unshown: str) -> str:
    if not unshown:
        return ""
    # By code point: the characters themselves would print as the same empty boxes.
    listed = ", ".join(f"U+{ord(c):04X}" for c in unshown[:MAX_UNSHOWN_LISTED]) + (
        ", …" if len(unshown) > MAX_UNSHOWN_LISTED else "")
    return ("<p style='background-color:#fde0dd; padding:6px;'><b>Some characters cannot be "
            f"shown here.</b> {len(unshown)} different characters of this report "
            f"({html_text(listed)}) have no glyph in the report's font or any font installed "
            "on this machine, and print as empty boxes. The explanation record (--json, or "
            "Save in the window) holds the text exactly.</p>")


def report_html(record: Explanation, created: datetime | None = None,
                what_ifs: Sequence[Any] = (), unshown: str = "") -> str:
    """The report as Qt rich text. Images are referenced as ``chart`` (see :func:`write_pdf`);
    ``unshown``: characters no font here can draw, said in a note at the top."""
    created = created or datetime.now()
    esc = html_text
    view = ExplanationView.from_record(record, top=15)
    case_html = "".join(
        esc(piece.text) if piece.background is None else
        f'<span style="background-color:{_css(piece.background)}; color:{piece.ink};">'
        f"{esc(piece.text)}</span>" for piece in view.pieces).replace("\n", "<br/>")
    legend = "".join(
        f'<td style="background-color:{_css(step.background)}; color:{step.ink};">'
        f"&nbsp;{step.value:+.3g}&nbsp;</td>" for step in view.legend)
    rows = "".join(
        f"<tr><td>{w.rank}</td><td>{esc(w.text)}</td><td align='right'>{w.score:+.4f}</td>"
        f"<td align='right'>{100 * w.share:.1f}%</td></tr>" for w in view.top_words)
    fields_html = ""
    if view.fields:
        field_rows = "".join(
            f"<tr><td>{esc(f.label)}</td><td align='right'>{f.score:+.4f}</td>"
            f"<td align='right'>{100 * f.share:.0f}%</td></tr>" for f in view.fields)
        fields_html = ("<h2>Attribution per clinical field</h2><table border='1' "
                       "cellspacing='0' cellpadding='3'><tr><th>field</th><th>attribution</th>"
                       f"<th>share</th></tr>{field_rows}</table>")
    model, versions = record.model, record.versions

    def table(items: list[tuple[str, str]]) -> str:
        return ("<table cellspacing='0' cellpadding='3'>" + "".join(
            f"<tr><td width='28%'><b>{esc(k)}</b></td><td>{esc(v)}</td></tr>"
            for k, v in items) + "</table>")

    return f"""
<h1>TokenTrace explanation report</h1>
<p>{esc(created.strftime('%Y-%m-%d %H:%M'))} · explanation recorded {esc(record.created_at)}</p>
<p style="background-color:#fff4d6; padding:6px;"><b>{esc(NOTICE)}</b></p>
{_unshown_html(unshown)}
<h2>Case, coloured by attribution to the whole answer</h2>
<p style="line-height:160%;">{case_html}</p>
<table cellspacing="0" cellpadding="2"><tr>{legend}</tr></table>
<p>{esc(view.legend_words.capitalize())}. Scores are summed per word; words under
{UNCOLOURED_BELOW:.0%} of the scale are left uncoloured.</p>
<h2>{esc(view.answer_title)}</h2>
<p>{esc(view.answer)}</p>
{_reliability_html(view)}
{_claims_html(record)}
{"".join(_whatif_html(found) for found in what_ifs)}
<h2>Most influential words</h2>
<p><img src="chart" width="620"/></p>
<table border="1" cellspacing="0" cellpadding="3">
<tr><th>#</th><th>word</th><th>attribution</th><th>share</th></tr>{rows}</table>
{fields_html}
<h2>Method</h2>
{table([("Method", record.method.name), ("Parameters", view.parameters.replace("=", " = ")),
        ("Completeness error", view.completeness), ("Prompt", view.tokens)])}
<h2>Model and software</h2>
{table([("Model", model.name), ("Source", model.source), ("sha256", model.sha256),
        ("Precision and device", f"{model.dtype} on {model.device}"),
        ("Parameters", f"{model.parameters:,}"),
        ("Software", f"TokenTrace {versions.tokentrace}, torch {versions.torch}, "
                     f"transformers {versions.transformers}, captum {versions.captum}")])}
<h2>Hardware profile</h2>
{table([("Device", view.device), ("Peak memory", view.memory),
        ("Time", view.time), ("Network", "none: TokenTrace runs offline")])}
"""


def _reliability_html(view: ExplanationView) -> str:
    esc = html_text
    verdict, check = view.verdict, view.record.reliability
    if verdict is None or check is None:
        return ("<h2>How far to trust this explanation</h2><p>Not checked. Run "
                "<i>tokentrace explain --reliability</i>, or keep <i>Check reliability</i> on "
                "in the window, to add the check.</p>")
    rows = "".join(
        f"<tr><td>{esc(what)}</td><td align='right'>{ours}</td><td align='right'>{chance:+.4f}"
        f" (mean of {draws})</td></tr>" for what, ours, chance, draws in (
            ("Comprehensiveness, AOPC (higher is better)", f"{check.comprehensiveness:+.4f}",
             check.random_comprehensiveness, check.draws[0]),
            ("Sufficiency, AOPC (lower is better)", f"{check.sufficiency:+.4f}",
             check.random_sufficiency, check.draws[1])))
    return (f"<h2>How far to trust this explanation</h2>"
            f"<p style='background-color:{verdict.background}; color:{verdict.ink}; "
            f"padding:6px;'><b>Reliability: {esc(verdict.name)}</b> — {esc(verdict.summary)}</p>"
            "<table border='1' cellspacing='0' cellpadding='3'><tr><th>check</th>"
            "<th>this explanation</th><th>random words</th></tr>"
            f"{rows}</table><p>Rank correlation with {esc(check.second_method)} over the case "
            f"words: {check.rank_correlation:.2f}. {esc(levels_note(check))}. Checked in "
            f"{check.seconds:.1f} s."
            f"{esc(' ' + note + '.') if (note := precision_note(check)) else ''}</p>")


def _claims_html(record: Explanation) -> str:
    """Each statement of the answer with the case sentences it rests on, flagged ones first."""
    claims = record.claims
    if claims is None:
        return ""
    esc = html_text
    parts = ["<h2>What each statement rests on</h2>"]
    for view in flagged_first(claim_views(record)):
        colour = "#1b7837" if view.grounded else "#b2182b"
        parts.append(f"<p><b style='color:{colour};'>{esc(view.marker)}</b> "
                     f"<b>{esc(view.text)}</b><br/><i>{esc(view.verdict)}</i>; "
                     f"{esc(view.support)}.</p>")
        if view.evidence:
            parts.append("<table cellspacing='0' cellpadding='2'>" + "".join(
                f"<tr><td width='10%' align='right'>{100 * e.share:.0f}%</td>"
                f"<td>&ldquo;{esc(e.text)}&rdquo;</td></tr>" for e in view.evidence)
                + "</table>")
    parts.append(f"<p><small>{esc(evidence_words(claims))}</small></p>")
    return "".join(parts)


def _whatif_html(found: Any) -> str:
    """One what-if: the edits, both answers with the differences marked, the shift."""
    esc = html_text
    view = whatif_view(found)
    merged = " ".join(DIFF_HTML[piece.kind].format(esc(piece.text)) for piece in view.diff)
    moved = ", ".join(f"“{esc(token)}” {change:+.2f}" for token, change in view.token_changes)
    return (f"<h2>What if: {esc('; '.join(view.edits))}</h2>"
            f"<p><b>Original answer:</b> {esc(view.original)}</p>"
            f"<p><b>Answer to the edited case</b> "
            f"({'changed' if view.changed else 'the same'}):<br/>{merged}</p>"
            f"<p>{esc(view.shift)}"
            + (f" Answer tokens that lost most (nats): {moved}." if moved else "") + "</p>")


def write_pdf(record: Explanation, path: str | os.PathLike[str],
              what_ifs: Sequence[Any] = ()) -> Path:
    """Write the report as an A4 PDF (atomically) and return its path; ``what_ifs``
    (engine.whatif.WhatIf of this case) each get a section."""
    ensure_gui_application()
    from PySide6.QtCore import QMarginsF, QUrl
    from PySide6.QtGui import QFont, QPageLayout, QPageSize, QPdfWriter, QTextDocument

    target = Path(path)
    check_writable(target, "report")
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OutputError(f"cannot write the report {target}: {exc.strerror or exc}") from None
    with _written_beside(target) as tmp:
        writer = QPdfWriter(str(tmp))
        writer.setResolution(300)
        writer.setPageLayout(QPageLayout(QPageSize(QPageSize.PageSizeId.A4),
                                         QPageLayout.Orientation.Portrait,
                                         QMarginsF(18, 18, 18, 18), QPageLayout.Unit.Millimeter))
        writer.setTitle(f"TokenTrace report: {printable(record.answer.text[:60])}")
        writer.setCreator(f"TokenTrace {record.versions.tokentrace}")
        document = QTextDocument()
        document.setDefaultFont(QFont(font_family(), 10))
        chart = chart_image(record)
        document.addResource(QTextDocument.ResourceType.ImageResource, QUrl("chart"),
                             chart.scaledToWidth(900))
        document.setHtml(report_html(record, what_ifs=what_ifs))
        unshown = unshown_characters(document)
        if unshown:  # said where the reader looks first, not left as empty boxes
            document.setHtml(report_html(record, what_ifs=what_ifs, unshown=unshown))
        document.print_(writer)  # lays the document out again for the page, and paginates
        del writer  # flushes and closes the file
    audited("export", record, file=str(target))
    return target


def write_summary_pdf(rows: list[dict[str, object]], path: Path) -> None:
    """One table of every case with its time and memory: the hardware profile across cases."""
    ensure_gui_application()
    from PySide6.QtGui import QFont, QPageLayout, QPageSize, QPdfWriter, QTextDocument

    def mean(key: str) -> float:
        return sum(float(r[key]) for r in rows) / len(rows)

    body = "".join(
        f"<tr><td>{html_text(str(r['case']))}</td><td>{html_text(str(r['answer'])[:80])}"
        f"</td><td align='right'>{float(r['attribute_s']):.1f}</td>"
        f"<td align='right'>{float(r['peak_rss_mb']):,.0f}</td>"
        f"<td align='right'>{'' if r['completeness_error'] is None else format(100 * float(r['completeness_error']), '.1f')}</td></tr>"  # noqa: E501
        for r in rows)
    document = QTextDocument()
    document.setDefaultFont(QFont(font_family(), 9))
    document.setHtml(f"""
<h1>TokenTrace batch summary</h1>
<p><b>{html_text(NOTICE)}</b></p>
<p>{len(rows)} cases on {html_text(str(rows[0]['device']))}. Mean attribution time
{mean('attribute_s'):.1f} s (max {max(float(r['attribute_s']) for r in rows):.1f} s); mean peak
RSS {mean('peak_rss_mb'):,.0f} MiB (max {max(float(r['peak_rss_mb']) for r in rows):,.0f} MiB).</p>
<table border="1" cellspacing="0" cellpadding="3">
<tr><th>case</th><th>answer</th><th>attribute s</th><th>peak RSS MiB</th>
<th>completeness %</th></tr>{body}</table>""")
    # As the case reports: a device or pipe under the name is refused, and the file is
    # written beside it and renamed only when complete (a full disk leaves the old one).
    target = Path(path)
    check_writable(target, "batch summary")
    with _written_beside(target) as tmp:
        writer = QPdfWriter(str(tmp))
        writer.setPageSize(QPageSize(QPageSize.PageSizeId.A4))
        writer.setPageOrientation(QPageLayout.Orientation.Landscape)
        writer.setTitle("TokenTrace batch summary")
        writer.setCreator("TokenTrace")
        document.print_(writer)
        del writer
