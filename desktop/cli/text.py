"""Text from a user's files made safe to print on a terminal: :func:`desktop.present.printable`
(the window and the PDF use it too)."""

from __future__ import annotations

from desktop.present import printable

__all__ = ["printable"]
