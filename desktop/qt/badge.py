"""The reliability badge under the coloured case: how far to trust the explanation on screen."""

from __future__ import annotations

from PySide6.QtCore import Qt
from PySide6.QtWidgets import QLabel

from desktop.present import html_text, verdict_view
from desktop.qt import plain_tooltip
from engine.record import Reliability

PENDING = ("#e0e0e0", "#333333")


def badge_style(background: str, ink: str) -> str:
    return f"background:{background}; color:{ink}; border-radius:6px; padding:6px;"


class ReliabilityBadge(QLabel):
    """Hidden until a check runs; grey while it runs; the verdict's colours once done."""

    def __init__(self) -> None:
        super().__init__()
        self.setObjectName("reliabilityBadge")
        self.setWordWrap(True)
        self.setTextFormat(Qt.TextFormat.RichText)
        self.hide()

    def show_pending(self, message: str) -> None:
        """A check running, or one that did not finish (``message`` is plain text)."""
        self.setText(html_text(message))
        self.setToolTip("")
        self.setStyleSheet(badge_style(*PENDING))
        self.show()

    def show_check(self, check: Reliability | None) -> None:
        """A finished check's verdict; None (no check on this explanation) hides the badge."""
        if check is None:
            self.hide()
            return
        view = verdict_view(check)
        self.setText(f"<b>Reliability: {view.name}</b> — {html_text(view.summary)}")
        self.setToolTip(plain_tooltip("\n".join(view.details)))
        self.setStyleSheet(badge_style(view.background, view.ink))
        self.show()
