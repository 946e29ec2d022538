"""The field editor: a case made of clinical fields, each with the values it usually takes.

Open a fields case (JSON, File > Open fields case) and each field gets an editable list of its
known values (engine.fields.KNOWN_VALUES; any other value can be typed). Apply renders the fields
into the case editor through the same template the command line uses, so an explanation sums its
attribution per field, and a changed value followed by What if asks what the answer would be.
"""

from __future__ import annotations

from typing import Any

from PySide6.QtCore import Signal
from PySide6.QtWidgets import QComboBox, QFormLayout, QLabel, QPushButton, QVBoxLayout, QWidget

from engine.fields import KNOWN_VALUES, label_of, render_fields


class FieldsPanel(QWidget):
    """Edits one case's fields; ``applied`` carries the rendered text and the field spans."""

    applied = Signal(str, object)  # case text, ((name, start, end), ...)

    def __init__(self) -> None:
        super().__init__()
        self.hint = QLabel("Open a case made of clinical fields (File > Open fields case) to "
                           "edit it field by field.")
        self.hint.setWordWrap(True)
        self.form = QFormLayout()
        self.apply_button = QPushButton("Apply to the case")
        self.apply_button.setObjectName("applyFields")
        self.apply_button.clicked.connect(self.apply)
        self.apply_button.setEnabled(False)
        layout = QVBoxLayout(self)
        layout.addWidget(self.hint)
        layout.addLayout(self.form)
        layout.addWidget(self.apply_button)
        layout.addStretch(1)
        self.editors: dict[str, QComboBox] = {}

    def set_fields(self, fields: dict[str, Any]) -> None:
        """Show ``fields`` (name -> value) for editing, and put them into the case editor."""
        while self.form.rowCount():
            self.form.removeRow(0)
        self.editors = {}
        for name, value in fields.items():
            editor = QComboBox()
            editor.setEditable(True)
            editor.setObjectName(f"field_{name}")
            known = [str(v) for v in KNOWN_VALUES.get(name, ())]
            current = "" if value is None else str(value)
            editor.addItems(known if current in known else [current, *known])
            editor.setCurrentText(current)
            self.form.addRow(label_of(name), editor)
            self.editors[name] = editor
        self.apply_button.setEnabled(bool(self.editors))
        self.hint.setText("Change a value, Apply, then Explain, or What if to compare with the "
                          "explanation on screen.")
        self.apply()

    def values(self) -> dict[str, str]:
        return {name: editor.currentText().strip() for name, editor in self.editors.items()}

    def apply(self) -> None:
        text, spans = render_fields(self.values())
        self.applied.emit(text, spans)
