"""The case text coloured by attribution, at token, word or sentence granularity."""

from __future__ import annotations

import re

from PySide6.QtCore import QUrl, Signal
from PySide6.QtGui import QColor, QCursor, QFont, QTextCursor
from PySide6.QtWidgets import QLabel, QTextBrowser, QTextEdit, QToolTip

from desktop.present import case_bounds, case_pieces, html_text, legend, legend_words
from desktop.qt import plain_tooltip
from engine.grouping import Span
from engine.record import Explanation
from engine.sentences import split_sentences


class TokenOverlay(QTextBrowser):
    """Read-only case view; each unit is a link so hovering shows its value and rank."""

    hovered = Signal(int)  # unit index, or -1 when the pointer leaves a unit
    strike_requested = Signal(int, int)  # (start, end) in the case: ask what if it were gone

    def __init__(self) -> None:
        super().__init__()
        self.setOpenLinks(False)
        self.setObjectName("overlay")
        self._record: Explanation | None = None
        self._units: list[Span] = []
        self._ranks: dict[int, int] = {}
        self._highlighted = -1
        self._case_start = 0
        self.highlighted.connect(self._on_link_hovered)

    @property
    def units(self) -> list[Span]:
        return self._units

    def strike_actions(self, position: int) -> list[tuple[str, tuple[int, int]]]:
        """What can be struck out at ``position`` (a character of the case): the word there and
        its sentence, each with its (start, end) in the case."""
        if self._record is None:
            return []
        case = self._record.prompt.case_text
        actions = []
        for match in re.finditer(r"\S+", case):
            if match.start() <= position < match.end():
                word = match.group().strip(".,;:!?()")
                start = match.start() + match.group().index(word) if word else match.start()
                if word:
                    actions.append((f"What if “{word}” were struck out",
                                    (start, start + len(word))))
                break
        for start, end in split_sentences(case):
            if start <= position < end:
                actions.append(("What if this sentence were struck out", (start, end)))
        return actions

    def contextMenuEvent(self, event) -> None:
        menu = self.createStandardContextMenu()
        position = self.cursorForPosition(event.pos()).position()
        actions = self.strike_actions(position)
        if actions:
            menu.addSeparator()
        for label, (start, end) in actions:
            menu.addAction(label).triggered.connect(
                lambda checked=False, s=start, e=end: self.strike_requested.emit(s, e))
        menu.exec(event.globalPos())

    def show_units(self, record: Explanation, units: list[Span]) -> None:
        """Render ``units`` (spans of ``record.prompt.text`` inside the case), coloured."""
        self._record, self._units = record, units
        order = sorted(range(len(units)), key=lambda i: abs(units[i].score), reverse=True)
        self._ranks = {index: rank for rank, index in enumerate(order, 1)}
        self._render()

    def highlight(self, index: int) -> None:
        """Outline one unit without rebuilding the document (cheap on long cases)."""
        if index == self._highlighted:
            return
        self._highlighted = index
        selections = []
        if 0 <= index < len(self._units):
            unit = self._units[index]
            cursor = QTextCursor(self.document())
            cursor.setPosition(unit.start - self._case_start)
            cursor.setPosition(unit.end - self._case_start, QTextCursor.MoveMode.KeepAnchor)
            selection = QTextEdit.ExtraSelection()
            selection.cursor = cursor
            selection.format.setFontUnderline(True)
            selection.format.setFontWeight(QFont.Weight.Bold)
            selection.format.setUnderlineColor(QColor("black"))
            selections.append(selection)
            self.setTextCursor(QTextCursor(cursor.block()))
            self.ensureCursorVisible()
        self.setExtraSelections(selections)

    def _render(self) -> None:
        record = self._record
        if record is None:
            self.clear()
            return
        self._case_start = case_bounds(record)[0]
        parts = ['<div style="line-height:150%; white-space:pre-wrap;">']
        for piece in case_pieces(record, self._units):
            text = html_text(piece.text)
            if piece.index < 0:
                parts.append(text)
                continue
            style = "text-decoration:none; color:black;"
            if piece.background is not None:
                r, g, b = piece.background
                style = (f"text-decoration:none; background-color:rgb({r},{g},{b}); "
                         f"color:{piece.ink};")
            parts.append(f'<a href="unit:{piece.index}" style="{style}">{text}</a>')
        parts.append("</div>")
        scroll = self.verticalScrollBar().value()
        self.setHtml("".join(parts))
        self.verticalScrollBar().setValue(scroll)
        self._highlighted = -1
        self.setExtraSelections([])

    def _on_link_hovered(self, url: QUrl) -> None:
        text = url.toString()
        if not text.startswith("unit:"):
            QToolTip.hideText()
            self.hovered.emit(-1)
            return
        index = int(text.removeprefix("unit:"))
        unit = self._units[index]
        QToolTip.showText(QCursor.pos(), plain_tooltip(
            f"{unit.text!r}: {unit.score:+.4f}  (rank {self._ranks[index]} of "
            f"{len(self._units)})"), self)
        self.hovered.emit(index)


class Legend(QLabel):
    """The colour scale with its numbers."""

    def set_scale(self, scale: float, method: str = "ig") -> None:
        cells = []
        for step in legend(scale, method):
            r, g, b = step.background
            cells.append(f'<td style="background-color:rgb({r},{g},{b}); '
                         f'color:{step.ink}; padding:2px 8px;">{step.value:+.3g}</td>')
        self.setText('<table cellspacing="0"><tr>' + "".join(cells) + "</tr></table>"
                     f"&nbsp;{html_text(legend_words(method))}")
