"""Faithfulness of several methods over a set of cases (``tokentrace evaluate``).

Each case is answered once (greedy, up to ``max_new_tokens``); every method then explains that
same answer and is scored with :func:`engine.metrics.faithfulness`. ``random`` is the reference
attribution (uniform random scores, seeded per case). Results arrive one (case, method) at a
time, so the caller can save them and resume.
"""

from __future__ import annotations

import math
import statistics
import time
import zlib
from collections.abc import Callable, Iterable, Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

import torch

from engine.cases import Case
from engine.errors import InvalidSettingsError
from engine.explain import MAX_NEW_TOKENS, coerce_option
from engine.generation import generate_answer
from engine.methods import AttributionInput, get_method
from engine.methods.base import parse_baseline
from engine.metrics import METRICS, MetricSettings, faithfulness, random_scores
from engine.models import LoadedModel
from engine.prompting import DEFAULT_SYSTEM_PROMPT, build_prompt
from engine.task import Silent, TaskState

RANDOM = "random"


@dataclass(frozen=True)
class EvaluationSettings:
    methods: tuple[str, ...]
    options: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)  # per method
    max_new_tokens: int = 16
    baseline: str = "pad"
    system_prompt: str | None = DEFAULT_SYSTEM_PROMPT
    metrics: MetricSettings = field(default_factory=MetricSettings)

    def method_params(self, name: str) -> dict[str, Any]:
        spec = get_method(name)
        defaults = spec.defaults()
        params = dict(defaults)
        if "baseline" in defaults:
            params["baseline"] = self.baseline
        if "matrix" in defaults:  # per-token rows only when the metrics rank by them
            params["matrix"] = self.metrics.granularity == "token"
        for key, value in self.options.get(name, {}).items():
            if key not in defaults:
                raise InvalidSettingsError(f"method {name} has no option {key!r}; its "
                                           f"options: {', '.join(defaults) or 'none'}")
            params[key] = coerce_option(key, value, defaults[key])
        spec.check(params)
        return params

    def validate(self) -> None:
        if not self.methods:
            raise InvalidSettingsError("name at least one method to evaluate")
        twice = sorted({name for name in self.methods if self.methods.count(name) > 1})
        if twice:  # it would run twice and count each case twice in its mean
            raise InvalidSettingsError(f"{', '.join(twice)} is listed more than once in "
                                       "--methods")
        for name in self.methods:
            if name != RANDOM:
                self.method_params(name)
        unknown = set(self.options) - set(self.methods)
        if unknown:
            raise InvalidSettingsError(f"options given for methods not evaluated: "
                                       f"{', '.join(sorted(unknown))}")
        if not 1 <= self.max_new_tokens <= MAX_NEW_TOKENS:
            raise InvalidSettingsError(f"max new tokens must be from 1 to {MAX_NEW_TOKENS} "
                                       f"(got {self.max_new_tokens})")
        self.metrics.validate()


@dataclass(frozen=True)
class CaseResult:
    case: str
    method: str
    answer: str
    seconds: float  # attribution time (0 for random)
    values: dict[str, float]
    curves: dict[str, dict[float, float]]

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["curves"] = {k: {str(pi): v for pi, v in c.items()} for k, c in self.curves.items()}
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> CaseResult:
        """A stored result; ``ValueError`` unless every figure is a finite number (a progress
        file is read back, and may have been cut short or edited)."""
        def number(value: Any) -> float:
            if type(value) not in (int, float) or not math.isfinite(value):
                raise ValueError(f"{value!r} is not a finite number")
            return float(value)

        values, curves = data["values"], data.get("curves", {})
        if not isinstance(values, dict) or not isinstance(curves, dict) or not all(
                isinstance(c, dict) for c in curves.values()):
            raise ValueError("values and curves must be objects")
        seconds = number(data["seconds"])
        if seconds < 0:
            raise ValueError("a negative time")
        return cls(str(data["case"]), str(data["method"]), str(data.get("answer", "")),
                   seconds, {k: number(v) for k, v in values.items()},
                   {k: {number(float(pi)): number(v) for pi, v in c.items()}
                    for k, c in curves.items()})


def evaluate_case(loaded: LoadedModel, case: Case, settings: EvaluationSettings,
                  skip: Iterable[str] = (), state: TaskState | None = None,
                  on_result: Callable[[CaseResult], None] | None = None) -> list[CaseResult]:
    """Every method not in ``skip`` on ``case``; ``on_result`` hears each as it finishes."""
    state = state or TaskState()
    model, tokenizer = loaded.model, loaded.tokenizer
    prompt = build_prompt(tokenizer, case.text, system_prompt=settings.system_prompt,
                          state=state)
    todo = [m for m in settings.methods if m not in set(skip)]
    if not todo:
        return []
    answer_ids = generate_answer(model, tokenizer, list(prompt.token_ids),
                                 settings.max_new_tokens, state)
    if not answer_ids:
        raise InvalidSettingsError(f"case {case.id}: the model gave an empty answer")
    answer = tokenizer.decode(answer_ids, skip_special_tokens=True)
    device = loaded.device
    problem = AttributionInput(torch.tensor(prompt.token_ids, device=device),
                               torch.tensor(prompt.attributable, device=device),
                               torch.tensor(answer_ids, device=device))
    baseline_id = parse_baseline(settings.baseline, tokenizer,
                                 model.get_input_embeddings().num_embeddings)
    if baseline_id is None:
        baseline_id = parse_baseline("pad", tokenizer, model.get_input_embeddings().num_embeddings)
    results = []
    for slot, name in enumerate(todo):
        # A method's own progress (its stages, in its units) would jump this bar about.
        state.progressed("method", slot, len(todo))
        part = Silent(state)
        start = time.perf_counter()
        shape = (len(answer_ids), len(prompt.token_ids))
        if name == RANDOM:
            scores = random_scores(shape, seed=zlib.crc32(case.id.encode()))
            seconds = 0.0
        else:
            spec = get_method(name)
            out = spec.attribute(model, tokenizer, problem, state=part,
                                 **settings.method_params(name))
            seconds = time.perf_counter() - start
            scores = out.per_token if (settings.metrics.granularity == "token" and
                                       out.per_token is not None) else out.sequence
        found = faithfulness(model, problem, scores, baseline_id, settings.metrics, part)
        result = CaseResult(case.id, name, answer, seconds, found.values, found.curves)
        results.append(result)
        state.progressed("method", slot + 1, len(todo))
        if on_result is not None:
            on_result(result)
    return results


def summarise(results: Iterable[CaseResult]) -> dict[str, Any]:
    """``summary[method][metric]`` (mean over cases), ``spread`` (standard deviation),
    ``cases`` and ``seconds`` (mean attribution time) per method, and the mean pi curves."""
    by_method: dict[str, list[CaseResult]] = {}
    for result in results:
        by_method.setdefault(result.method, []).append(result)
    summary, spread, count, seconds, curves = {}, {}, {}, {}, {}
    for method, rows in by_method.items():
        summary[method], spread[method] = {}, {}
        for metric in METRICS:
            values = [r.values[metric] for r in rows if metric in r.values
                      and math.isfinite(r.values[metric])]
            if values:
                summary[method][metric] = statistics.fmean(values)
                spread[method][metric] = statistics.pstdev(values) if len(values) > 1 else 0.0
        count[method] = len(rows)
        seconds[method] = statistics.fmean(r.seconds for r in rows)
        curves[method] = {}
        for name in ("pi_soft_ns", "pi_soft_nc"):
            points = [r.curves[name] for r in rows if name in r.curves]
            if points:
                curves[method][name] = {pi: statistics.fmean(p[pi] for p in points)
                                        for pi in points[0]}
    return {"summary": summary, "spread": spread, "cases": count, "seconds": seconds,
            "curves": curves}
