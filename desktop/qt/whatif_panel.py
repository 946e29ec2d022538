"""The What if dock: edit the case, ask what if, compare, revert; sensitivity at a glance.

The clinician edits the case text in the case editor (strikes out a sentence or a word, changes
a value) and presses What if. The panel turns the change into edits a reader can check
(``engine.whatif.edits_between``), keeps every what-if of the case on screen in a list (ticked
ones go into the PDF report), and shows the selected one: both answers with the differences
marked and the original answer's probability shift. Revert puts the explained case back.
Sensitivity ranks the case's sentences by what removing each does to the answer.
"""

from __future__ import annotations

from typing import Any

from PySide6.QtCore import Qt, Signal
from PySide6.QtWidgets import (
    QHBoxLayout,
    QLabel,
    QListWidget,
    QListWidgetItem,
    QPushButton,
    QSplitter,
    QTextBrowser,
    QVBoxLayout,
    QWidget,
)

from desktop.present import DIFF_HTML, coloured_case_html, html_text, likelihood_change, whatif_view


class WhatIfPanel(QWidget):
    """What-ifs of the explanation on screen. Signals ask the window to run things."""

    whatif_requested = Signal()
    sensitivity_requested = Signal()
    revert_requested = Signal()
    explain_requested = Signal(int)  # explain the new answer of what-if N, side by side

    def __init__(self) -> None:
        super().__init__()
        self.whatif_button = QPushButton("What if")
        self.whatif_button.setObjectName("whatIfButton")
        self.whatif_button.setToolTip("Answer the case as edited in the case editor and compare "
                                      "(Ctrl+Shift+W)")
        self.revert_button = QPushButton("Revert")
        self.revert_button.setToolTip("Put the explained case back into the case editor")
        self.sensitivity_button = QPushButton("Sensitivity")
        self.sensitivity_button.setToolTip("Remove each sentence in turn and rank them by what "
                                           "that does to the answer (one forward each)")
        self.explain_button = QPushButton("Explain the new answer")
        self.explain_button.setToolTip("Attribute the edited case's answer to the edited case, "
                                       "next to the original explanation")
        self.explain_button.clicked.connect(
            lambda: self.explain_requested.emit(self.list.currentRow()))
        self.whatif_button.clicked.connect(self.whatif_requested)
        self.revert_button.clicked.connect(self.revert_requested)
        self.sensitivity_button.clicked.connect(self.sensitivity_requested)
        self.hint = QLabel("Explain a case, edit it in the case editor, then press What if.")
        self.hint.setWordWrap(True)
        self.hint.setTextFormat(Qt.TextFormat.PlainText)
        self.list = QListWidget()
        self.list.setObjectName("whatIfList")
        self.list.currentRowChanged.connect(self._show_current)
        self.details = QTextBrowser()
        self.details.setObjectName("whatIfDetails")
        buttons = QHBoxLayout()
        for button in (self.whatif_button, self.revert_button, self.sensitivity_button,
                       self.explain_button):
            buttons.addWidget(button)
        buttons.addStretch(1)
        left = QWidget()
        left_layout = QVBoxLayout(left)
        left_layout.setContentsMargins(0, 0, 0, 0)
        left_layout.addWidget(QLabel("What-ifs of this case (ticked ones go into the PDF)"))
        left_layout.addWidget(self.list)
        split = QSplitter(Qt.Orientation.Horizontal)
        split.addWidget(left)
        split.addWidget(self.details)
        split.setStretchFactor(1, 3)
        layout = QVBoxLayout(self)
        layout.addLayout(buttons)
        layout.addWidget(self.hint)  # its own line: beside the buttons it wrapped a word a line
        layout.addWidget(split, 1)
        self.found: list[Any] = []  # engine.whatif.WhatIf, in the list's order
        self.explained: dict[int, Any] = {}  # what-if index -> the new answer's Explanation
        self._ready = False
        self.set_ready(False)

    def set_ready(self, ready: bool) -> None:
        """Whether an explanation is on screen and the engine is free to run one."""
        for button in (self.whatif_button, self.revert_button, self.sensitivity_button):
            button.setEnabled(ready)
        self.explain_button.setEnabled(ready and 0 <= self.list.currentRow() < len(self.found))
        self._ready = ready

    def reset(self) -> None:
        """A new explanation: its what-ifs start empty."""
        self.found = []
        self.explained = {}
        self.list.clear()
        self.details.clear()

    def add(self, found: Any) -> None:
        view = whatif_view(found)
        self.found.append(found)
        mark = "changed" if view.changed else "same answer"
        item = QListWidgetItem(f"{'; '.join(view.edits)} — {mark}, "
                               f"{found.shift:+.2f} nats")
        item.setFlags(item.flags() | Qt.ItemFlag.ItemIsUserCheckable)
        item.setCheckState(Qt.CheckState.Checked)
        self.list.addItem(item)
        self.list.setCurrentRow(self.list.count() - 1)

    def for_report(self) -> list[Any]:
        """The ticked what-ifs, in the list's order."""
        return [found for index, found in enumerate(self.found)
                if self.list.item(index).checkState() == Qt.CheckState.Checked]

    def show_explained(self, index: int, original: Any, record: Any) -> None:
        """What-if ``index``'s new answer explained: both cases coloured, side by side."""
        self.explained[index] = record
        self._original = original
        self.list.setCurrentRow(index)
        self._show_current(index)

    def _show_current(self, row: int) -> None:
        self.explain_button.setEnabled(self._ready and 0 <= row < len(self.found))
        if not 0 <= row < len(self.found):
            self.details.clear()
            return
        view = whatif_view(self.found[row])
        esc = html_text
        # Side by side: the original answer with what the edit took away struck, the new one
        # with what it added in bold.
        before = " ".join(DIFF_HTML[p.kind].format(esc(p.text)) for p in view.diff
                          if p.kind != "added")
        after = " ".join(DIFF_HTML[p.kind].format(esc(p.text)) for p in view.diff
                         if p.kind != "removed")
        moved = ", ".join(f"“{esc(token)}” {change:+.2f}" for token, change in
                          view.token_changes)
        how = "changed" if view.changed else "the same"
        self.details.setHtml(
            f"<p><b>What if:</b> {esc('; '.join(view.edits))} — the answer is {how}. "
            f"{esc(view.shift)}</p>"
            "<table width='100%' cellspacing='6'><tr><th align='left' width='50%'>Original "
            "answer (struck: gone after the edit)</th><th align='left'>Answer to the edited "
            "case (bold: new)</th></tr>"
            f"<tr><td valign='top'>{before}</td><td valign='top'>{after}</td></tr></table>"
            + (f"<p>Original answer tokens that lost most (nats): {moved}</p>" if moved else "")
            + self._side_by_side(row))

    def _side_by_side(self, row: int) -> str:
        record = self.explained.get(row)
        if record is None:
            return ""
        original = self._original
        return ("<table width='100%' cellspacing='6'><tr><th align='left'>The case, by what the "
                "original answer rests on</th><th align='left'>The edited case, by what the new "
                "answer rests on</th></tr><tr><td valign='top'>"
                f"{coloured_case_html(original)}</td><td valign='top'>"
                f"{coloured_case_html(record)}</td></tr></table>")

    def show_sensitivity(self, case: str, effects: Any) -> None:
        """The case's sentences, ranked by what removing each does to the answer."""
        esc = html_text
        rows = []
        for effect in effects:
            likely = likelihood_change(effect.fall)
            change = (f"<b style='color:#b2182b;'>changes at token {effect.first_change + 1}"
                      "</b>" if effect.answer_changes else "unchanged")
            rows.append(f"<tr><td align='right'>{effect.sentence + 1}</td>"
                        f"<td>{esc(case[effect.start:effect.end])}</td>"
                        f"<td>{likely}</td><td>{change}</td></tr>")
        self.list.setCurrentRow(-1)
        self.details.setHtml(
            "<p><b>Sensitivity:</b> each sentence removed in turn (largest effect first)</p>"
            "<table border='1' cellspacing='0' cellpadding='3'><tr><th>#</th><th>sentence</th>"
            "<th>the answer without it</th><th>greedy answer</th></tr>" + "".join(rows)
            + "</table>")
