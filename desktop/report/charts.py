"""Images for reports and evaluations, painted with Qt: the top-words bar chart and the
pi-Soft-NS / pi-Soft-NC curves of an evaluation."""

from __future__ import annotations

import itertools
from pathlib import Path

from desktop.present import NEGATIVE, POSITIVE, ExplanationView
from desktop.report.qt import ensure_gui_application, font_family
from engine.errors import TokenTraceError
from engine.evaluation import RANDOM
from engine.record import Explanation

COLOURS = ["#1b9e77", "#d95f02", "#7570b3", "#e7298a", "#66a61e", "#e6ab02", "#a6761d",
           "#1f78b4", "#b2182b", "#666666"]


def chart_image(record: Explanation, width: int = 1600, bars: int = 15):
    """A horizontal bar chart of the most influential words, as a QImage."""
    from PySide6.QtCore import QRectF, Qt
    from PySide6.QtGui import QColor, QFont, QImage, QPainter

    top = ExplanationView.from_record(record, top=bars).top_words
    row = 44
    image = QImage(width, max(1, len(top)) * row + 20, QImage.Format.Format_RGB32)
    image.fill(QColor("white"))
    painter = QPainter(image)
    painter.setRenderHint(QPainter.RenderHint.Antialiasing)
    painter.setFont(QFont(font_family(), 28))
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


def write_plot(path: Path, curves: dict[str, dict[str, dict]]) -> None:
    """Two panels (pi-Soft-NS, pi-Soft-NC against pi), one line per method, as a PNG
    (``curves[method][metric][pi]``; pi as a number or its text)."""
    from PySide6.QtCore import QPointF, QRectF, Qt
    from PySide6.QtGui import QColor, QFont, QImage, QPainter, QPen

    ensure_gui_application()
    width, height = 1400, 620
    image = QImage(width, height, QImage.Format.Format_ARGB32)
    image.fill(QColor("white"))
    painter = QPainter(image)
    painter.setRenderHint(QPainter.RenderHint.Antialiasing)
    painter.setFont(QFont(font_family(), 11))
    methods = list(curves)
    for panel, (name, title) in enumerate((("pi_soft_ns", "pi-Soft-NS (higher is better)"),
                                           ("pi_soft_nc", "pi-Soft-NC (higher is better)"))):
        left, top = 80 + panel * 680, 50
        box = QRectF(left, top, 560, 460)
        painter.setPen(QPen(QColor("#333333"), 1))
        painter.drawRect(box)
        painter.drawText(QRectF(left, 10, 560, 30), Qt.AlignmentFlag.AlignCenter, title)
        for tick in range(6):
            y = box.bottom() - tick / 5 * box.height()
            painter.drawText(QRectF(left - 60, y - 10, 50, 20), Qt.AlignmentFlag.AlignRight,
                             f"{tick / 5:.1f}")
        for tick in range(1, 10):
            x = box.left() + (tick / 10 - 0.1) / 0.8 * box.width()
            painter.drawText(QRectF(x - 20, box.bottom() + 5, 40, 20),
                             Qt.AlignmentFlag.AlignCenter, f"{tick / 10:.1f}")
        painter.drawText(QRectF(left, box.bottom() + 28, 560, 20), Qt.AlignmentFlag.AlignCenter,
                         "pi (share of the case kept or dropped)")
        for index, method in enumerate(methods):
            points = sorted((float(pi), v) for pi, v in curves[method].get(name, {}).items())
            if not points:
                continue
            colour = QColor(COLOURS[index % len(COLOURS)])
            pen = QPen(colour, 2.5, Qt.PenStyle.DashLine if method == RANDOM
                       else Qt.PenStyle.SolidLine)
            painter.setPen(pen)
            mapped = [QPointF(box.left() + (pi - 0.1) / 0.8 * box.width(),
                              box.bottom() - max(0.0, min(1.0, v)) * box.height())
                      for pi, v in points]
            for a, b in itertools.pairwise(mapped):
                painter.drawLine(a, b)
    x = 80.0
    for index, method in enumerate(methods):  # legend, each entry as wide as its name
        width = painter.fontMetrics().horizontalAdvance(method)
        painter.setPen(QPen(QColor(COLOURS[index % len(COLOURS)]), 4))
        painter.drawLine(QPointF(x, 585), QPointF(x + 30, 585))
        painter.setPen(QColor("#222222"))
        painter.drawText(QRectF(x + 36, 575, width + 4, 20), Qt.AlignmentFlag.AlignLeft, method)
        x += 36 + width + 30
    painter.end()
    path.parent.mkdir(parents=True, exist_ok=True)
    if not image.save(str(path), "PNG"):
        raise TokenTraceError(f"cannot write the plot {path}")

