"""The desktop window (Qt): layout and wiring, the engine thread, the views."""

from __future__ import annotations

from desktop.present import html_text


def plain_tooltip(text: str) -> str:
    """``text`` as a tooltip that shows exactly these characters: Qt renders a tooltip that
    looks like HTML as HTML, and record and model fields come from files a user opened."""
    return "<p style='white-space:pre-wrap'>" + html_text(text) + "</p>"
