"""Opening files a user chose: each must be a plain file, checked before the first read.

A FIFO or a device (``/dev/zero``, a named pipe in a model folder) would block the read forever
or never end; a folder or a huge file would fail late and unclearly. Every file TokenTrace
opens on a user's say (cases, fields, saved explanations, model files) goes through here.
"""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path
from typing import Any

from engine.errors import InvalidInputError

AUDIT_LOG = "TOKENTRACE_AUDIT_LOG"  # the hospital's audit log, when one is switched on


def audit_path() -> Path | None:
    """The audit log (engine/audit.py), or None when it is off."""
    value = os.environ.get(AUDIT_LOG, "").strip()
    return Path(value).expanduser() if value else None


def file_identity(path: Path) -> tuple:
    """What makes two names one file: device and inode for a file that exists (hard links,
    names differing only in case), else the resolved path (relative names, ``..``, links)."""
    try:
        found = os.stat(path)
    except (OSError, ValueError):  # not there yet (or not a name the system takes)
        return ("path", os.path.normcase(os.path.realpath(path)))
    return ("file", found.st_dev, found.st_ino)


def is_audit_log(path: Path) -> bool:
    """Whether writing ``path`` would replace the audit log."""
    log = audit_path()
    return log is not None and file_identity(path) == file_identity(log)


def check_regular_file(path: Path, what: str, limit: int | None = None) -> None:
    """Raise :class:`InvalidInputError` (one line) unless ``path`` is a regular file (links are
    followed) of at most ``limit`` bytes."""
    try:
        info = path.stat()
    except FileNotFoundError:
        raise InvalidInputError(f"{what} not found: {path}") from None
    except OSError as exc:
        raise InvalidInputError(f"cannot read {path}: {exc.strerror}") from None
    if stat.S_ISDIR(info.st_mode):
        raise InvalidInputError(f"{path} is a folder, not a {what}")
    if not stat.S_ISREG(info.st_mode):
        raise InvalidInputError(f"{path} is not a regular file (a pipe, socket or device); "
                                f"give a {what} saved on disk")
    if limit is not None and info.st_size > limit:
        raise InvalidInputError(f"{path} is {info.st_size / 1e6:.1f} MB; a {what} may be at "
                                f"most {limit / 1e6:.0f} MB")


def parse_json(text: str) -> Any:
    """:func:`json.loads` for text from a file a user chose: every way it can fail is a
    ``ValueError`` (bad syntax, an integer of more digits than Python converts, and nesting
    deeper than its stack, which is a ``RecursionError`` from the parser)."""
    try:
        return json.loads(text, object_pairs_hook=_once_each)
    except RecursionError:
        raise ValueError("JSON nested too deeply") from None


def _once_each(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """A JSON object whose every key occurs once (``{"her2": "negative", "her2": "positive"}``
    would otherwise read as positive, silently)."""
    found = dict(pairs)
    if len(found) < len(pairs):
        seen: set[str] = set()
        twice = next(key for key, _ in pairs if key in seen or seen.add(key))
        raise ValueError(f"the key {twice[:40]!r} occurs more than once in one object")
    return found


def check_distinct(inputs: dict[str, Path | None], outputs: dict[str, Path | None],
                   inside: dict[str, Path] | None = None) -> None:
    """Refuse, before any work, an output that would overwrite one of the run's inputs or
    another of its outputs (``--json case.txt``, ``--json x --pdf x``), or an input that lies
    in a folder the run writes (``inside``: what -> folder). Paths are compared resolved
    (relative names, ``..`` and symbolic links) and, for files that exist, by the file itself
    (device and inode), so that two names of one file are one file: hard links, and names
    that differ only in case on a file system that ignores case."""
    from engine.errors import InvalidSettingsError

    def resolved(path: Path) -> str:
        return os.path.normcase(os.path.realpath(path))

    identity = file_identity
    # The audit log is an input of every run: an output over it would erase the trail.
    inputs = {**inputs, f"audit log ({AUDIT_LOG})": audit_path()}
    seen: dict[tuple, str] = {}
    for what, path in inputs.items():
        if path is not None:
            seen.setdefault(identity(path), what)
    for what, path in outputs.items():
        if path is None:
            continue
        key = identity(path)
        if key in seen:
            raise InvalidSettingsError(f"the {what} {path} is also the {seen[key]}: writing it "
                                       "would replace that; choose another name")
        seen[key] = what
    for what, folder in (inside or {}).items():
        root = resolved(folder)
        for name, path in inputs.items():
            if path is not None and resolved(path).startswith(root + os.sep):
                raise InvalidSettingsError(f"the {name} {path} lies in the {what} {folder}, "
                                           "which this run writes; move it out first")
