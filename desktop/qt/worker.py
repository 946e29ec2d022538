"""The engine thread: one QObject worker, moved to one QThread, owns the model and all torch work.

The GUI talks to it only through queued signals (requests in, results out). Every request carries
an id; a new request cancels the one running; the GUI drops results whose id is stale.
Cancellation is cooperative (``TaskState``) and takes effect within one decoder block.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from typing import Any

from PySide6.QtCore import QObject, QThread, Signal, Slot

from desktop.qt.errors import exit_code_for, message_for
from engine.errors import Cancelled
from engine.prompting import is_panic
from engine.task import TaskState


class _QtTaskState(TaskState):
    """Forwards engine progress and streamed tokens to the worker's signals."""

    def __init__(self, worker: EngineWorker, request_id: int) -> None:
        super().__init__()
        self._worker, self._id = worker, request_id
        self._stage_started: dict[str, float] = {}

    def progressed(self, stage: str, done: int, total: int) -> None:
        now = time.perf_counter()
        started = self._stage_started.setdefault(stage, now)
        remaining = -1.0
        if 0 < done < total:
            remaining = (now - started) / done * (total - done)
        self._worker.progressed.emit(self._id, stage, done, total, remaining)

    def token_generated(self, token_id: int, text: str) -> None:
        self._worker.token_generated.emit(self._id, text)


@dataclass(frozen=True)
class AnswerRow:
    """One answer token's attribution row, computed on its own for the record made at
    ``created_at``."""

    created_at: str
    row: int
    scores: tuple[float, ...]


class EngineWorker(QObject):
    """Runs model loading and explanations on its thread. Signals are past tense."""

    started = Signal(int, str)  # request id, what ("load" or "explain")
    progressed = Signal(int, str, int, int, float)  # id, stage, done, total, seconds left (-1)
    token_generated = Signal(int, str)  # id, decoded piece
    model_loaded = Signal(int, object)  # id, ModelInfo
    finished = Signal(int, object)  # id, Explanation
    checked = Signal(int, object)  # id, Explanation with its reliability check
    claimed = Signal(int, object)  # id, Explanation with its claims and their evidence
    whatif_ready = Signal(int, object)  # id, engine.whatif.WhatIf
    sensitivity_ready = Signal(int, object)  # id, list of engine.whatif.SentenceEffect
    row_ready = Signal(int, object)  # id, AnswerRow
    errored = Signal(int, str, int)  # id, one readable message, the command line's exit code
    cancelled = Signal(int)  # id

    def __init__(self) -> None:
        super().__init__()
        self._loaded: Any = None  # engine.models.LoadedModel, touched only on this thread
        self._checked: tuple[Any, Any] = (None, None)  # record and model check_tokenized passed
        self._lock = threading.Lock()
        self._state: TaskState | None = None
        self._latest = 0  # the newest request id the GUI has issued
        self._cancelled = 0  # requests up to this id were cancelled, started or not

    def supersede(self, request_id: int) -> None:
        """Mark ``request_id`` as the newest and cancel the running one. Any thread."""
        with self._lock:
            self._latest = request_id
            if self._state is not None:
                self._state.cancel()

    def cancel(self, request_id: int | None = None) -> None:
        """Stop request ``request_id`` and those before it (None: every request issued so far),
        whether running or still queued. Safe to call from any thread."""
        with self._lock:
            self._cancelled = max(self._cancelled, self._latest if request_id is None
                                  else request_id)
            if self._state is not None:
                self._state.cancel()

    def _begin(self, request_id: int) -> _QtTaskState | None:
        """The state for a request, or None (and ``cancelled``) if a newer one was issued."""
        state = _QtTaskState(self, request_id)
        with self._lock:
            # Superseded, or cancelled (Esc) while it waited in the queue.
            stale = request_id < self._latest or request_id <= self._cancelled
            self._state = None if stale else state
        if stale:
            self.cancelled.emit(request_id)
            return None
        return state

    @Slot(int, object)
    def load_model(self, request_id: int, request: Any) -> None:
        from engine.models import load_model

        loaded = self._run(request_id, "load", lambda state: load_model(request, state))
        if loaded is not None:
            self._loaded = loaded
            self.model_loaded.emit(request_id, loaded.info)

    @Slot(int, object)
    def explain(self, request_id: int, request: Any) -> None:
        from engine.errors import ModelLoadError
        from engine.explain import explain

        def work(state: TaskState) -> Any:
            if self._loaded is None:
                raise ModelLoadError("no model is loaded yet; open a model first")
            return explain(request, self._loaded, state)

        record = self._run(request_id, "explain", work)
        if record is not None:
            self.finished.emit(request_id, record)

    @Slot(int, object, str)
    def check_reliability(self, request_id: int, record: Any, precision: str) -> None:
        from dataclasses import replace

        from engine.reliability import check_reliability

        def work(state: TaskState) -> Any:
            loaded = self._same_model(record, "check the explanation's reliability")
            found = check_reliability(loaded.model, loaded.tokenizer, record,
                                      precision=precision, state=state)
            return replace(record, reliability=found)

        checked = self._run(request_id, "reliability", work)
        if checked is not None:
            self.checked.emit(request_id, checked)

    @Slot(int, object)
    def find_claims(self, request_id: int, record: Any) -> None:
        from dataclasses import replace

        from engine.claims import find_claims

        def work(state: TaskState) -> Any:
            loaded = self._same_model(record, "find what the answer's statements rest on")
            return replace(record, claims=find_claims(loaded.model, loaded.tokenizer, record,
                                                      state=state))

        found = self._run(request_id, "claims", work)
        if found is not None:
            self.claimed.emit(request_id, found)

    def _same_model(self, record: Any, what: str) -> Any:
        from engine.errors import ModelLoadError

        if self._loaded is None:
            raise ModelLoadError("no model is loaded yet; open a model first")
        if self._loaded.info.sha256 != record.model.sha256:
            raise ModelLoadError(f"this explanation was made with another model; load it to "
                                 f"{what}")
        if self._loaded.info.dtype != record.model.dtype:  # a row in bfloat16 is not its row
            raise ModelLoadError(f"this explanation was made in {record.model.dtype}, the "
                                 f"model is loaded in {self._loaded.info.dtype}; load it in "
                                 f"{record.model.dtype} to {what}")
        if self._checked[0] is not record or self._checked[1] is not self._loaded:
            from engine.reliability import check_tokenized

            check_tokenized(record, self._loaded.tokenizer)  # an opened record's text and ids
            self._checked = (record, self._loaded)
        return self._loaded

    @Slot(int, object)
    def what_if(self, request_id: int, request: Any) -> None:
        from engine.whatif import what_if

        record, edits, max_new_tokens = request

        def work(state: TaskState) -> Any:
            loaded = self._same_model(record, "ask what if")
            return what_if(loaded.model, loaded.tokenizer, record, edits,
                           max_new_tokens=max_new_tokens, state=state)

        found = self._run(request_id, "whatif", work)
        if found is not None:
            self.whatif_ready.emit(request_id, found)

    @Slot(int, object)
    def sensitivity(self, request_id: int, record: Any) -> None:
        from engine.whatif import sensitivity

        def work(state: TaskState) -> Any:
            return sensitivity(self._same_model(record, "rank its sentences").model, record,
                               state=state)

        effects = self._run(request_id, "sensitivity", work)
        if effects is not None:
            self.sensitivity_ready.emit(request_id, effects)

    @Slot(int, object)
    def explain_row(self, request_id: int, request: Any) -> None:
        from engine.errors import ModelLoadError
        from engine.explain import answer_row

        record, row = request

        def work(state: TaskState) -> Any:
            if self._loaded is None:
                raise ModelLoadError("no model is loaded yet; open a model first")
            if record.attribution.per_token is None:  # computed: the model meets the record
                self._same_model(record, "explain single answer tokens")
            return AnswerRow(record.created_at, row, answer_row(record, row, self._loaded, state))

        found = self._run(request_id, "row", work)
        if found is not None:
            self.row_ready.emit(request_id, found)

    def _run(self, request_id: int, what: str, work: Any) -> Any:
        """Run ``work(state)`` for a request; failures and cancellation become signals."""
        state = self._begin(request_id)
        if state is None:
            return None
        self.started.emit(request_id, what)
        try:
            return work(state)
        except BaseException as exc:  # a panic in a library's Rust code too: never a request
            if not (isinstance(exc, Exception) or is_panic(exc)):  # that does not end
                raise
            self._fail(request_id, exc)
            return None

    def _fail(self, request_id: int, exc: BaseException) -> None:
        if isinstance(exc, Cancelled):
            self.cancelled.emit(request_id)
        else:
            self.errored.emit(request_id, message_for(exc), exit_code_for(exc))


class EngineThread(QObject):
    """Owns the QThread and the worker; issues request ids and queues requests to the worker."""

    _load_requested = Signal(int, object)
    _explain_requested = Signal(int, object)
    _check_requested = Signal(int, object, str)
    _claims_requested = Signal(int, object)
    _whatif_requested = Signal(int, object)
    _sensitivity_requested = Signal(int, object)
    _row_requested = Signal(int, object)

    def __init__(self, parent: QObject | None = None) -> None:
        super().__init__(parent)
        self.thread = QThread()
        self.thread.setObjectName("tokentrace-engine")
        self.worker = EngineWorker()
        self.worker.moveToThread(self.thread)
        self._load_requested.connect(self.worker.load_model)
        self._explain_requested.connect(self.worker.explain)
        self._check_requested.connect(self.worker.check_reliability)
        self._claims_requested.connect(self.worker.find_claims)
        self._whatif_requested.connect(self.worker.what_if)
        self._sensitivity_requested.connect(self.worker.sensitivity)
        self._row_requested.connect(self.worker.explain_row)
        self.thread.start()
        self._next_id = 0
        self.current_id = 0

    def _new_id(self) -> int:
        self._next_id += 1
        self.current_id = self._next_id
        self.worker.supersede(self.current_id)  # a new request cancels the running one
        return self.current_id

    def load_model(self, request: Any) -> int:
        request_id = self._new_id()
        self._load_requested.emit(request_id, request)
        return request_id

    def explain(self, request: Any) -> int:
        request_id = self._new_id()
        self._explain_requested.emit(request_id, request)
        return request_id

    def check_reliability(self, record: Any, precision: str = "auto") -> int:
        request_id = self._new_id()
        self._check_requested.emit(request_id, record, precision)
        return request_id

    def find_claims(self, record: Any) -> int:
        request_id = self._new_id()
        self._claims_requested.emit(request_id, record)
        return request_id

    def what_if(self, record: Any, edits: Any, max_new_tokens: int) -> int:
        request_id = self._new_id()
        self._whatif_requested.emit(request_id, (record, edits, max_new_tokens))
        return request_id

    def sensitivity(self, record: Any) -> int:
        request_id = self._new_id()
        self._sensitivity_requested.emit(request_id, record)
        return request_id

    def answer_row(self, record: Any, row: int) -> int:
        request_id = self._new_id()
        self._row_requested.emit(request_id, (record, row))
        return request_id

    def cancel(self) -> None:
        """Cancel the newest request, running or still queued."""
        self.worker.cancel(self.current_id)

    def is_current(self, request_id: int) -> bool:
        return request_id == self.current_id

    def shutdown(self, timeout_ms: int = 10_000) -> bool:
        """Cancel what runs, stop the thread and wait for it. True if it stopped in time."""
        self.worker.cancel()
        self.thread.quit()
        return self.thread.wait(timeout_ms)
