"""The file dialogs the window asks through: one table of what each reads or writes."""

from __future__ import annotations

from pathlib import Path

from PySide6.QtWidgets import QFileDialog, QWidget

from engine.cases import DEMO_CASES

# kind: (title, starting folder or file name, filter)
OPEN = {
    "case": ("Open case", str(DEMO_CASES), "Text (*.txt);;All files (*)"),
    "fields": ("Open fields case", str(DEMO_CASES), "Fields (*.json);;All files (*)"),
    "gguf": ("Open GGUF model", "", "GGUF (*.gguf)"),
    "explanation": ("Open explanation", "", "TokenTrace explanation (*.json)"),
}
SAVE = {
    "explanation": ("Save explanation", "explanation.json", "TokenTrace explanation (*.json)"),
    "pdf": ("Export PDF report", "tokentrace-report.pdf", "PDF (*.pdf)"),
}


def ask_open(parent: QWidget, kind: str) -> Path | None:
    """The file the user picked to open, or None when they cancelled."""
    title, start, filters = OPEN[kind]
    path, _ = QFileDialog.getOpenFileName(parent, title, start, filters)
    return Path(path) if path else None


def ask_save(parent: QWidget, kind: str) -> Path | None:
    """The file the user picked to write, or None when they cancelled."""
    title, start, filters = SAVE[kind]
    path, _ = QFileDialog.getSaveFileName(parent, title, start, filters)
    return Path(path) if path else None


def ask_folder(parent: QWidget, title: str) -> Path | None:
    """The folder the user picked, or None when they cancelled."""
    folder = QFileDialog.getExistingDirectory(parent, title)
    return Path(folder) if folder else None
