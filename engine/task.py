"""The small progress-and-cancel channel between a running task and whoever started it.

Engine entry points take a :class:`TaskState`. The caller keeps a reference, may call
:meth:`TaskState.cancel` from any thread, and subclasses it to receive progress and streamed
tokens (the CLI drives a progress bar, the GUI emits Qt signals). Cancellation is cooperative: the
engine calls :meth:`TaskState.check` between units of work and inside every decoder layer, so it
takes effect within one layer's compute.
"""

from __future__ import annotations

import threading

from engine.errors import Cancelled

# Every stage an engine task reports progress under, with the words a person reads.
STAGES = {"load": "Loading model", "read": "Reading the case",
          "generate": "Generating answer", "attribute": "Attributing",
          "path": "Building paths", "curvature": "Hessian sensitivity",
          "information": "Masked forwards", "attention": "Attention gradients",
          "attention flow": "Attention flow", "evaluate": "Faithfulness metrics",
          "method": "Methods on this case", "reliability": "Checking reliability",
          "cases": "Cases", "claims": "Claims and evidence",
          "whatif": "What if"}


class TaskState:
    """Default state: no output, cancellable from any thread."""

    def __init__(self) -> None:
        self._cancel = threading.Event()

    def cancel(self) -> None:
        self._cancel.set()

    @property
    def cancelled(self) -> bool:
        return self._cancel.is_set()

    def check(self) -> None:
        """Raise :class:`Cancelled` if cancellation was requested."""
        if self._cancel.is_set():
            raise Cancelled("cancelled by the user")

    def progressed(self, stage: str, done: int, total: int) -> None:
        """``done`` of ``total`` units of ``stage`` ("load", "generate", "attribute") finished."""

    def token_generated(self, token_id: int, text: str) -> None:
        """The model produced one answer token; ``text`` is its decoded piece."""


class SubTask(TaskState):
    """One part of a larger stage: reports ``done`` of ``total`` as ``offset + done`` units of
    ``stage``'s ``overall``, and cancels with its parent."""

    def __init__(self, parent: TaskState, stage: str, offset: int, overall: int) -> None:
        super().__init__()
        self._parent, self._stage = parent, stage
        self._offset, self._overall = offset, overall

    def cancel(self) -> None:
        self._parent.cancel()

    @property
    def cancelled(self) -> bool:
        return self._parent.cancelled

    def check(self) -> None:
        self._parent.check()

    def progressed(self, stage: str, done: int, total: int) -> None:
        self._parent.progressed(self._stage, min(self._overall, self._offset + done),
                                self._overall)


class Silent(SubTask):
    """A part whose own progress would mislead at the parent's scale: it cancels with its
    parent and reports nothing; the parent reports the part as a whole."""

    def __init__(self, parent: TaskState) -> None:
        super().__init__(parent, "", 0, 0)

    def progressed(self, stage: str, done: int, total: int) -> None:
        pass
