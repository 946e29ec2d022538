"""Which engine request runs, and whether its result still applies: decided in one place.

The window issues one request at a time to the engine thread (a new one supersedes the running
one). Every result names its request id; a result applies only if its request is the current
one and, for results about an explanation (the reliability check, an answer token's row), only
if that explanation is still the one on screen. No Qt here, so the rule is tested on its own.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum


class Kind(Enum):
    LOAD = "load"
    EXPLAIN = "explain"
    RELIABILITY = "reliability"
    CLAIMS = "claims"
    WHATIF = "whatif"
    WHATIF_EXPLAIN = "whatif-explain"  # a what-if's new answer explained, not put on screen
    SENSITIVITY = "sensitivity"
    ROW = "row"


@dataclass(frozen=True)
class Request:
    id: int
    kind: Kind
    explanation: str | None = None  # created_at of the explanation it is about
    row: int | None = None  # the answer token (Kind.ROW) or the what-if (Kind.WHATIF_EXPLAIN)

    def about(self, on_screen: str | None) -> bool:
        """False when this request is about an explanation that is no longer on screen."""
        return self.explanation is None or self.explanation == on_screen


class Requests:
    """The ledger of the window's engine requests."""

    def __init__(self) -> None:
        self.current: Request | None = None

    def issued(self, request: Request) -> None:
        self.current = request

    @property
    def running(self) -> Kind | None:
        return self.current.kind if self.current else None

    def is_running(self, kind: Kind) -> bool:
        return self.current is not None and self.current.kind is kind

    def applies(self, request_id: int, on_screen: str | None = None) -> Request | None:
        """The current request if ``request_id`` is it (and, for a request about an
        explanation, that explanation is ``on_screen``); None for a result to drop. The
        request stays current (progress and streamed tokens keep coming)."""
        request = self.current
        if request is None or request.id != request_id or not request.about(on_screen):
            return None
        return request

    def settle(self, request_id: int) -> Request | None:
        """The current request if ``request_id`` is it, now over (no longer running); None for
        a stale result. Whether its result is still about the explanation on screen is
        :meth:`Request.about`."""
        request = self.current
        if request is None or request.id != request_id:
            return None
        self.current = None
        return request
