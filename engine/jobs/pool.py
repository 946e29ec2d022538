"""Who does a many-case job's work: this process, or a pool of worker processes.

``run_batch`` and ``run_evaluation`` are drivers: they decide what is left to do, and write every
record, progress line and summary. The model work is a pool's. ``LocalPool`` does it in this
process, one case after another, with a model already loaded; ``engine.jobs.cluster.RayPool``
hands the same jobs to Ray workers (each with its own copy of the model) and gives back the same
results in the order they finish. Both keep one contract: every job comes back exactly once,
as its result or as the ``TokenTraceError`` that stopped it; ``Cancelled`` stops the whole run.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from typing import Protocol

from engine.cases import Case
from engine.errors import Cancelled, TokenTraceError
from engine.evaluation import CaseResult, EvaluationSettings, evaluate_case
from engine.explain import ExplainRequest, explain
from engine.models import LoadedModel
from engine.record import Explanation, ModelInfo
from engine.task import TaskState

# An evaluation job: a case and the methods already done for it (a resumed run skips them).
EvaluationJob = tuple[Case, tuple[str, ...]]


class CasePool(Protocol):
    """Explains and evaluates many cases. ``info`` is the model every result is made with."""

    info: ModelInfo

    def explain(self, jobs: Iterable[tuple[str, ExplainRequest]], state: TaskState
                ) -> Iterator[tuple[str, Explanation | TokenTraceError]]:
        """(case id, its record or the error that stopped it) for every job, in the order
        they finish."""
        ...

    def evaluate(self, jobs: Iterable[EvaluationJob], settings: EvaluationSettings,
                 state: TaskState, on_result: Callable[[str, CaseResult], None]
                 ) -> Iterator[tuple[str, TokenTraceError | None]]:
        """Every method of ``settings`` not yet done on each case: ``on_result(case id,
        result)`` hears each method's result, then (case id, None), or (case id, the error that
        stopped the case), in the order cases finish."""
        ...


class LocalPool:
    """This process, one case after another, with a model already loaded."""

    def __init__(self, loaded: LoadedModel) -> None:
        self.loaded, self.info = loaded, loaded.info

    def explain(self, jobs: Iterable[tuple[str, ExplainRequest]], state: TaskState
                ) -> Iterator[tuple[str, Explanation | TokenTraceError]]:
        for case_id, request in jobs:
            try:
                yield case_id, explain(request, self.loaded, state)
            except Cancelled:
                raise
            except TokenTraceError as exc:
                yield case_id, exc

    def evaluate(self, jobs: Iterable[EvaluationJob], settings: EvaluationSettings,
                 state: TaskState, on_result: Callable[[str, CaseResult], None]
                 ) -> Iterator[tuple[str, TokenTraceError | None]]:
        for case, done in jobs:
            try:
                # Each method's result is heard as it finishes: Ctrl-C mid-case keeps them.
                evaluate_case(self.loaded, case, settings, skip=done, state=state,
                              on_result=lambda result, case=case: on_result(case.id, result))
            except Cancelled:
                raise
            except TokenTraceError as exc:
                yield case.id, exc
                continue
            yield case.id, None


def as_pool(loaded: LoadedModel | CasePool) -> CasePool:
    return LocalPool(loaded) if isinstance(loaded, LoadedModel) else loaded
