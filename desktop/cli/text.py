"""Text from a user's files made safe to print on a terminal.

A case, an answer, a model folder's name or an error message naming a path can hold control
characters; printed as they are, an escape sequence in a case file could retitle the terminal,
clear it, or colour text to mislead. Each control character (C0 and C1, but tab and line
breaks) and each bidirectional override becomes U+FFFD, one character for one, so nothing
shifts.
"""

from __future__ import annotations

import re

_UNPRINTABLE = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069]")


def printable(text: str) -> str:
    """``text`` with every terminal control character replaced by U+FFFD."""
    return _UNPRINTABLE.sub("\ufffd", text)
