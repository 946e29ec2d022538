"""What the window says about a failure: engine error types have declared messages; anything
else is logged with its traceback and shown as one line that points to the log."""

from __future__ import annotations

import logging
import os
from pathlib import Path

from engine.errors import (
    EXIT_INTERNAL,
    ContextTooLongError,
    InvalidInputError,
    InvalidSettingsError,
    ModelLoadError,
    OutOfMemoryError,
    TokenTraceError,
)

log = logging.getLogger("tokentrace")

# The first words the window puts before an engine error's own message.
LEADS: dict[type[TokenTraceError], str] = {
    InvalidInputError: "The case cannot be used",
    InvalidSettingsError: "Check the settings",
    ModelLoadError: "The model cannot be loaded",
    ContextTooLongError: "The case is too long for this model",
    OutOfMemoryError: "Out of memory",
}


def log_path() -> Path:
    """Where the window's log goes: TOKENTRACE_LOG, else the user's log folder for the OS
    (``~/.local/state/tokentrace/log`` on Linux, ``~/Library/Logs/tokentrace`` on macOS)."""
    explicit = os.environ.get("TOKENTRACE_LOG")
    if explicit:
        return Path(explicit)
    import platformdirs

    return Path(platformdirs.user_log_dir("tokentrace", appauthor=False)) / "tokentrace.log"


def start_logging() -> Path | None:
    """Log warnings and worse (tracebacks included) to :func:`log_path`; None if it cannot be
    written (the window still runs; messages then only say what happened)."""
    path = log_path()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        handler = logging.FileHandler(path, encoding="utf-8")
    except OSError:
        return None
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    log.addHandler(handler)
    log.setLevel(logging.INFO)
    return path


def exit_code_for(exc: BaseException) -> int:
    """The exit code ``tokentrace`` gives for ``exc`` (README, "Bad input"): ``app
    --screenshot`` ends with it."""
    return exc.exit_code if isinstance(exc, TokenTraceError) else EXIT_INTERNAL


def message_for(exc: BaseException) -> str:
    """One readable line for ``exc``; an unexpected error is logged with its traceback."""
    if isinstance(exc, TokenTraceError):
        for kind, lead in LEADS.items():
            if isinstance(exc, kind):
                return f"{lead}: {exc}"
        return str(exc)
    log.error("unexpected error in the engine thread", exc_info=exc)
    where = next((h.baseFilename for h in log.handlers
                  if isinstance(h, logging.FileHandler)), None)
    tail = f"; the details are in {where}" if where else ""
    return f"Unexpected error: {type(exc).__name__}: {exc}{tail}"
