"""The window's one rule for results: the current request only, and only while the
explanation it is about is on screen."""

from __future__ import annotations

import logging

from desktop.qt.errors import message_for
from desktop.qt.requests import Kind, Request, Requests
from engine.errors import ModelLoadError


def test_only_the_current_request_applies():
    requests = Requests()
    requests.issued(Request(1, Kind.EXPLAIN))
    requests.issued(Request(2, Kind.LOAD))  # supersedes 1
    assert requests.applies(1) is None and requests.settle(1) is None
    assert requests.is_running(Kind.LOAD)
    assert requests.applies(2) == Request(2, Kind.LOAD)
    assert requests.settle(2) == Request(2, Kind.LOAD)
    assert requests.running is None and requests.settle(2) is None  # settled once


def test_a_result_about_another_explanation_is_dropped_but_ends_its_request():
    requests = Requests()
    requests.issued(Request(3, Kind.RELIABILITY, explanation="2026-11-29T10:00:00"))
    assert requests.applies(3, on_screen="2026-11-29T10:00:00") is not None
    # File > Open explanation put another record on screen while the check ran.
    assert requests.applies(3, on_screen="2026-11-29T11:00:00") is None
    settled = requests.settle(3)
    assert settled is not None and not settled.about("2026-11-29T11:00:00")
    assert requests.running is None


def test_messages_name_the_error_and_log_the_unexpected(tmp_path, caplog):
    assert message_for(ModelLoadError("model not found: x")) == \
        "The model cannot be loaded: model not found: x"
    with caplog.at_level(logging.ERROR, logger="tokentrace"):
        try:
            raise KeyError("boom")
        except KeyError as exc:
            text = message_for(exc)
    assert text.startswith("Unexpected error: KeyError")
    assert caplog.records and caplog.records[0].exc_info is not None  # the traceback
