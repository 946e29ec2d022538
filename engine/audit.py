"""A local, append-only audit log, switched on by a hospital (``TOKENTRACE_AUDIT_LOG=PATH``).

One JSON line per event: the time (UTC), the user, what happened (``explain``, ``export``), the
case's sha256 (never its text), the model's weights, tokenizer and chat-template sha256s, the
method and its settings, and for an export the file written. Lines are only ever appended (the
file is opened in append mode and each line is flushed to disk); nothing in TokenTrace reads,
rewrites or rotates it. Off when the variable is unset.
"""

from __future__ import annotations

import getpass
import json
import os
import stat
from datetime import UTC, datetime
from typing import Any

from engine.errors import TokenTraceError
from engine.files import AUDIT_LOG, audit_path
from engine.record import Explanation

ENVIRONMENT = AUDIT_LOG


def audited(event: str, record: Explanation, **extra: Any) -> None:
    """Append ``event`` about ``record`` to the audit log, if one is switched on. A log that
    cannot be written is an error: an audited site must not run unaudited."""
    path = audit_path()
    if path is None:
        return
    try:
        user = getpass.getuser()
    except Exception:  # no user name in this environment
        user = ""
    model = record.model
    line = {
        "time": datetime.now(UTC).isoformat(timespec="seconds"), "user": user, "event": event,
        "case_sha256": record.prompt.case_sha256, "model": model.name,
        "model_sha256": model.sha256, "tokenizer_sha256": model.tokenizer_sha256,
        "template_sha256": model.template_sha256, "method": record.method.name,
        "settings": record.method.params, "explanation": record.created_at, **extra}
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        # Non-blocking: a pipe in its place would wait for a reader for ever.
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NONBLOCK, 0o600)
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            os.close(fd)
            raise TokenTraceError(f"the audit log {path} ({ENVIRONMENT}) is not a regular file "
                                  "(a pipe, socket or device); point it at a file")
        os.set_blocking(fd, True)
        with os.fdopen(fd, "a", encoding="utf-8") as handle:
            handle.write(json.dumps(line, ensure_ascii=False, default=str) + "\n")
            handle.flush()
            os.fsync(handle.fileno())
    except OSError as exc:
        raise TokenTraceError(f"cannot append to the audit log {path} ({ENVIRONMENT}): "
                              f"{exc.strerror or exc}") from None
