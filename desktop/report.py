"""The PDF report: built from the explanation record with QTextDocument, printed by QPdfWriter.

No web engine. A bundled font (DejaVu Sans, resources/fonts) makes it render the same headless.
The report holds: title, date and the decision-support notice; the case coloured by attribution
with a legend; the answer; a chart of the most influential words; the top words as a table; the
method, its parameters and the completeness error; model provenance and software versions; the
hardware profile.
"""

from __future__ import annotations

import html
import os
import sys
from datetime import datetime
from pathlib import Path

from desktop.palette import (
    NEGATIVE,
    POSITIVE,
    blend,
    completeness_hint,
    legend_words,
    text_colour,
)
from engine.fields import field_shares
from engine.grouping import top_spans, word_scores
from engine.record import Explanation

FONTS = Path(__file__).resolve().parent.parent / "resources" / "fonts"
NOTICE = ("Decision support, not a diagnosis. The colours show what the language model's answer "
          "rested on, not whether the answer is right.")


def ensure_gui_application():
    """The Qt application fonts and painting need; offscreen when there is no display.

    A QApplication (not only a QGuiApplication): the same process may later open windows, and
    Qt allows one application object per process.
    """
    from PySide6.QtWidgets import QApplication

    app = QApplication.instance()
    if app is None:
        if sys.platform == "linux" and not (os.environ.get("DISPLAY")
                                            or os.environ.get("WAYLAND_DISPLAY")):
            os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
        app = QApplication(sys.argv[:1])
    return app


def _font_family() -> str:
    from PySide6.QtGui import QFontDatabase

    family = "DejaVu Sans"
    for name in ("DejaVuSans.ttf", "DejaVuSans-Bold.ttf"):
        font_id = QFontDatabase.addApplicationFont(str(FONTS / name))
        if font_id >= 0:
            family = QFontDatabase.applicationFontFamilies(font_id)[0]
    return family


def _words(record: Explanation):
    prompt = record.prompt
    return word_scores(prompt.text, prompt.offsets, record.attribution.sequence,
                       prompt.attributable)


def report_html(record: Explanation, created: datetime | None = None) -> str:
    """The report as Qt rich text. Images are referenced as ``chart`` (see :func:`write_pdf`)."""
    created = created or datetime.now()
    esc = html.escape
    words = _words(record)
    scale = max((abs(w.score) for w in words), default=0.0)
    prompt = record.prompt
    case_start = max(prompt.text.rfind(prompt.case_text), 0)
    case_end = case_start + len(prompt.case_text)
    parts, cursor = [], case_start
    for word in words:
        parts.append(esc(prompt.text[cursor:word.start]))
        r, g, b = blend(word.score, scale)
        parts.append(f'<span style="background-color:rgb({r},{g},{b}); '
                     f'color:{text_colour(word.score, scale)};">{esc(word.text)}</span>')
        cursor = word.end
    parts.append(esc(prompt.text[cursor:case_end]))
    case_html = "".join(parts).replace("\n", "<br/>")

    legend = "".join(
        f'<td style="background-color:rgb{blend(w * scale, scale)}; '
        f'color:{text_colour(w * scale, scale)};">&nbsp;{w * scale:+.3g}&nbsp;</td>'
        for w in (-1.0, -0.5, 0.0, 0.5, 1.0))
    listed = [w for w in words if any(c.isalnum() for c in w.text)]
    total = sum(abs(w.score) for w in listed) or 1.0
    rows = "".join(
        f"<tr><td>{rank}</td><td>{esc(w.text)}</td><td align='right'>{w.score:+.4f}</td>"
        f"<td align='right'>{100 * abs(w.score) / total:.1f}%</td></tr>"
        for rank, w in enumerate(top_spans(listed, 15), 1))

    method = record.method
    params = ", ".join(f"{k} = {v}" for k, v in method.params.items())
    error = record.attribution.completeness_error
    error_text = ("not defined for this method" if error is None else f"{100 * error:.2f}%")
    if error is not None:
        error_text += completeness_hint(method.params, error)
    model, versions, t, hw = record.model, record.versions, record.timings, record.hardware
    peak = f"{hw.peak_rss_mb:,.0f} MiB RSS"
    if hw.peak_accelerator_mb is not None:
        peak += f", {hw.peak_accelerator_mb:,.0f} MiB accelerator"
    generate = "answer forced" if record.answer.forced else f"{t.generate_s:.1f} s"

    fields_html = ""
    if record.attribution.per_field:
        field_rows = "".join(
            f"<tr><td>{esc(label)}</td><td align='right'>{score:+.4f}</td>"
            f"<td align='right'>{100 * share:.0f}%</td></tr>"
            for label, score, share in field_shares(record.attribution.per_field))
        fields_html = ("<h2>Attribution per clinical field</h2><table border='1' "
                       "cellspacing='0' cellpadding='3'><tr><th>field</th><th>attribution</th>"
                       f"<th>share</th></tr>{field_rows}</table>")

    reliability_html = _reliability_html(record)

    def table(items: list[tuple[str, str]]) -> str:
        return ("<table cellspacing='0' cellpadding='3'>" + "".join(
            f"<tr><td width='28%'><b>{esc(k)}</b></td><td>{esc(v)}</td></tr>"
            for k, v in items) + "</table>")

    return f"""
<h1>TokenTrace explanation report</h1>
<p>{esc(created.strftime('%Y-%m-%d %H:%M'))} · explanation recorded {esc(record.created_at)}</p>
<p style="background-color:#fff4d6; padding:6px;"><b>{esc(NOTICE)}</b></p>
<h2>Case, coloured by attribution to the whole answer</h2>
<p style="line-height:160%;">{case_html}</p>
<table cellspacing="0" cellpadding="2"><tr>{legend}</tr></table>
<p>{esc(legend_words(record.method.name).capitalize())}. Scores are summed per word.</p>
<h2>Answer{' (forced)' if record.answer.forced else ''}</h2>
<p>{esc(record.answer.text)}</p>
{reliability_html}
<h2>Most influential words</h2>
<p><img src="chart" width="620"/></p>
<table border="1" cellspacing="0" cellpadding="3">
<tr><th>#</th><th>word</th><th>attribution</th><th>share</th></tr>{rows}</table>
{fields_html}
<h2>Method</h2>
{table([("Method", method.name), ("Parameters", params), ("Completeness error", error_text),
        ("Prompt", f"{sum(prompt.attributable)} case tokens of {len(prompt.token_ids)} prompt "
                   f"tokens ({prompt.format}); {len(record.answer.token_ids)} answer tokens")])}
<h2>Model and software</h2>
{table([("Model", model.name), ("Source", model.source), ("sha256", model.sha256),
        ("Precision and device", f"{model.dtype} on {model.device}"),
        ("Parameters", f"{model.parameters:,}"),
        ("Software", f"TokenTrace {versions.tokentrace}, torch {versions.torch}, "
                     f"transformers {versions.transformers}, captum {versions.captum}")])}
<h2>Hardware profile</h2>
{table([("Device", hw.device_name), ("Peak memory", peak),
        ("Time", f"load {t.load_s:.1f} s · generate {generate} · attribute {t.attribute_s:.1f} s"),
        ("Network", "none: TokenTrace runs offline")])}
"""


VERDICT_COLOURS = {"strong": ("#1a9850", "white"), "fair": ("#fee08b", "#3a2c00"),
                   "weak": ("#d73027", "white")}


def _reliability_html(record: Explanation) -> str:
    esc = html.escape
    check = record.reliability
    if check is None:
        return ("<h2>How far to trust this explanation</h2><p>Not checked. Run "
                "<i>tokentrace explain --reliability</i>, or keep <i>Check reliability</i> on "
                "in the window, to add the check.</p>")
    back, fore = VERDICT_COLOURS.get(check.verdict, ("#e0e0e0", "black"))
    rows = "".join(
        f"<tr><td>{esc(what)}</td><td align='right'>{ours}</td><td align='right'>{chance}</td>"
        f"</tr>" for what, ours, chance in (
            ("Comprehensiveness, AOPC (higher is better)", f"{check.comprehensiveness:+.4f}",
             f"{check.random_comprehensiveness:+.4f}"),
            ("Sufficiency, AOPC (lower is better)", f"{check.sufficiency:+.4f}",
             f"{check.random_sufficiency:+.4f}")))
    return (f"<h2>How far to trust this explanation</h2>"
            f"<p style='background-color:{back}; color:{fore}; padding:6px;'><b>Reliability: "
            f"{esc(check.verdict.capitalize())}</b> — {esc(check.summary)}</p>"
            "<table border='1' cellspacing='0' cellpadding='3'><tr><th>check</th>"
            f"<th>this explanation</th><th>random words (mean of {check.random_draws})</th></tr>"
            f"{rows}</table><p>Rank correlation with {esc(check.second_method)} over the case "
            f"words: {check.rank_correlation:.2f}. Checked in {check.seconds:.1f} s.</p>")


def chart_image(record: Explanation, width: int = 1600, bars: int = 15):
    """A horizontal bar chart of the most influential words, as a QImage."""
    from PySide6.QtCore import QRectF, Qt
    from PySide6.QtGui import QColor, QFont, QImage, QPainter

    words = [w for w in _words(record) if any(c.isalnum() for c in w.text)]
    top = top_spans(words, bars)
    row = 44
    image = QImage(width, max(1, len(top)) * row + 20, QImage.Format.Format_RGB32)
    image.fill(QColor("white"))
    painter = QPainter(image)
    painter.setRenderHint(QPainter.RenderHint.Antialiasing)
    painter.setFont(QFont(_font_family(), 28))
    scale = max((abs(w.score) for w in top), default=1.0) or 1.0
    label_w, mid = 320, 320 + (width - 340) / 2
    half = (width - 360) / 2
    painter.setPen(QColor("#999999"))
    painter.drawLine(int(mid), 0, int(mid), image.height())
    for k, word in enumerate(top):
        y = 10 + k * row
        length = half * abs(word.score) / scale
        colour = QColor(*(POSITIVE if word.score > 0 else NEGATIVE))
        x = mid if word.score > 0 else mid - length
        painter.fillRect(QRectF(x, y + 6, length, row - 12), colour)
        painter.setPen(QColor("black"))
        painter.drawText(QRectF(0, y, label_w - 10, row), Qt.AlignmentFlag.AlignRight
                         | Qt.AlignmentFlag.AlignVCenter, word.text[:24])
    painter.end()
    return image


def write_pdf(record: Explanation, path: str | os.PathLike[str]) -> Path:
    """Write the report as an A4 PDF (atomically) and return its path."""
    ensure_gui_application()
    from PySide6.QtCore import QMarginsF, QUrl
    from PySide6.QtGui import QFont, QPageLayout, QPageSize, QPdfWriter, QTextDocument

    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.partial")
    writer = QPdfWriter(str(tmp))
    writer.setResolution(300)
    writer.setPageLayout(QPageLayout(QPageSize(QPageSize.PageSizeId.A4),
                                     QPageLayout.Orientation.Portrait,
                                     QMarginsF(18, 18, 18, 18), QPageLayout.Unit.Millimeter))
    writer.setTitle(f"TokenTrace report: {record.answer.text[:60]}")
    writer.setCreator(f"TokenTrace {record.versions.tokentrace}")
    document = QTextDocument()
    document.setDefaultFont(QFont(_font_family(), 10))
    chart = chart_image(record)
    document.addResource(QTextDocument.ResourceType.ImageResource, QUrl("chart"),
                         chart.scaledToWidth(900))
    document.setHtml(report_html(record))
    document.print_(writer)  # lays the document out again for the page, and paginates
    del writer  # flushes and closes the file
    os.replace(tmp, target)
    return target
