"""The statements list under the answer: each claim with its support marker, the count of those
that rest on nothing in the case, and a click that asks to show what a claim rests on."""

from __future__ import annotations

from PySide6.QtCore import QUrl, Signal
from PySide6.QtWidgets import QTextBrowser

from desktop.present import claim_views, html_text
from engine.record import Explanation


def clipped(text: str, limit: int = 60) -> str:
    return text if len(text) <= limit else text[:limit - 1].rstrip() + "…"


class ClaimsView(QTextBrowser):
    claim_clicked = Signal(int)

    def __init__(self) -> None:
        super().__init__()
        self.setObjectName("claimsView")
        self.setOpenLinks(False)
        self.anchorClicked.connect(self._on_anchor)

    def show_claims(self, record: Explanation | None, selected: int | None) -> None:
        views = claim_views(record) if record is not None else ()
        if not views:
            self.setPlainText(
                "" if record is None or record.claims is not None else
                "Not found yet: they follow the explanation when Settings asks for them.")
            return
        flagged = [v for v in views if not v.grounded]
        parts = []
        if flagged:
            parts.append(f"<p style='color:#b2182b;'><b>Not grounded in this case: "
                         f"{len(flagged)} of {len(views)} statements</b> (the model's general "
                         "knowledge or a guess)</p>")
        for view in views:
            colour = "#1b7837" if view.grounded else "#b2182b"
            weight = "bold" if view.index == selected else "normal"
            best = (f" · top: {100 * view.evidence[0].share:.0f}% "
                    f"“{html_text(clipped(view.evidence[0].text))}”" if view.evidence else "")
            parts.append(
                f"<p><span style='color:{colour}; font-weight:bold;'>{view.marker}</span> "
                f"<a href='claim:{view.index}' style='color:black; text-decoration:none; "
                f"font-weight:{weight};'>{html_text(view.text)}</a><br/>"
                f"<small style='color:#555555;'>{html_text(view.verdict)}; "
                f"{html_text(view.support)}{best}</small></p>")
        self.setHtml("".join(parts))

    def _on_anchor(self, url: QUrl) -> None:
        text = url.toString()
        if text.startswith("claim:"):
            self.claim_clicked.emit(int(text.removeprefix("claim:")))
