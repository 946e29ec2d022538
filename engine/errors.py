"""Typed engine errors. Each message names the offending value and, where there is one, the fix.

The command line prints ``str(error)`` on one line; the GUI shows it in a dialog. ``Cancelled`` is
not an error to report: callers treat it as the user's choice.
"""

from __future__ import annotations

EXIT_INTERNAL = 70  # an error no one raised on purpose: a bug


class TokenTraceError(Exception):
    """Base of every error the engine raises on purpose. ``exit_code`` is used by the CLI."""

    exit_code = 1


class InvalidInputError(TokenTraceError):
    """The case text or file cannot be used (empty, binary, too large, missing)."""

    exit_code = 2


class InvalidSettingsError(TokenTraceError):
    """A setting is out of range or unknown (steps < 1, unknown method, bad baseline...)."""

    exit_code = 2


class ModelLoadError(TokenTraceError):
    """The model folder or file is missing, incomplete, unsupported or corrupt."""

    exit_code = 3


BROKEN_MODEL = ("the model computes values that are not numbers (NaN) for this "
                "case: its weights or settings (a NaN weight, rms_norm_eps, rope_theta) are "
                "broken; nothing is shown or saved")


class ContextTooLongError(TokenTraceError):
    """Prompt plus answer do not fit in the model's context window."""

    exit_code = 4


class OutOfMemoryError(TokenTraceError):
    """The device ran out of memory during generation or attribution."""

    exit_code = 5


class OutputError(TokenTraceError):
    """An output cannot be written: a read-only or missing folder, a full disk, a file in the
    way. Nothing computed is lost silently: the message names the file."""

    exit_code = 6


class WindowUnavailableError(TokenTraceError):
    """The window cannot open here: no display, or the system lacks libraries Qt needs. The
    command line still works (``make run`` falls back to the terminal demo on this code)."""

    exit_code = 7


class ClusterError(TokenTraceError):
    """Work cannot be shared out: Ray is not installed, the cluster cannot be reached or
    joined, or no worker could be kept alive."""

    exit_code = 8


class WorkerLostError(TokenTraceError):
    """A case's worker process kept dying on it (killed, out of memory, its node lost)."""


class Cancelled(TokenTraceError):
    """The user cancelled the request. Not an error to report."""

    exit_code = 130
