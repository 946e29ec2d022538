"""One explanation, end to end: prompt, answer (generated or forced), attribution, record."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, version
from typing import Any

import torch

from engine.audit import audited
from engine.errors import (
    BROKEN_MODEL,
    ContextTooLongError,
    InvalidInputError,
    InvalidSettingsError,
    ModelLoadError,
    TokenTraceError,
)
from engine.fields import field_scores, render_fields
from engine.generation import generate_with_cache
from engine.hardware import PeakMemory, device_name
from engine.methods import DEFAULT_METHOD, AttributionInput, get_method
from engine.methods.base import is_out_of_memory, out_of_memory_error
from engine.models import LoadedModel, text_sha256
from engine.prompting import (
    DEFAULT_SYSTEM_PROMPT,
    answer_pieces,
    build_prompt,
    refuse_control_tokens,
    tokenize,
    validate_case_text,
)
from engine.record import (
    Answer,
    Attribution,
    Explanation,
    Hardware,
    MethodInfo,
    Prompt,
    Timings,
    Versions,
    case_start,
)
from engine.reliability import check_usable
from engine.task import TaskState

MAX_NEW_TOKENS = 4096  # answer tokens; the embedded model's context is 8,192 in all

@dataclass(frozen=True)
class ExplainRequest:
    """Everything that defines one explanation except the model.

    ``target`` forces the answer (teacher forcing) instead of generating up to
    ``max_new_tokens`` greedy tokens. ``system_prompt`` None or "" keeps the template's default.
    """

    case_text: str
    method: str = DEFAULT_METHOD
    steps: int | None = None  # None: the method's default
    max_new_tokens: int = 64
    target: str | None = None
    baseline: str = "pad"
    raw_prompt: bool = False
    system_prompt: str | None = DEFAULT_SYSTEM_PROMPT
    matrix: bool = True
    batch_size: int | None = None
    fields: tuple[tuple[str, int, int], ...] = ()  # spans in case_text, see from_fields
    options: tuple[tuple[str, Any], ...] = ()  # method-specific settings, e.g. ("mode", "exact")

    @classmethod
    def from_fields(cls, fields: Mapping[str, object], **settings: Any) -> ExplainRequest:
        """A request whose case is ``fields`` rendered through the field template."""
        text, spans = render_fields(fields)
        return cls(case_text=text, fields=spans, **settings)

    def validate(self) -> None:
        """Reject impossible settings and an unusable case before any model work starts."""
        validate_case_text(self.case_text)
        self.method_params()
        if self.steps is not None and self.steps < 1:
            raise InvalidSettingsError(f"steps must be at least 1 (got {self.steps})")
        if not 1 <= self.max_new_tokens <= MAX_NEW_TOKENS:
            raise InvalidSettingsError(f"max new tokens must be from 1 to {MAX_NEW_TOKENS} "
                                       f"(got {self.max_new_tokens})")
        if self.batch_size is not None and self.batch_size < 1:
            raise InvalidSettingsError(f"batch size must be at least 1 (got {self.batch_size})")
        if self.target is not None and not self.target.strip():
            raise InvalidInputError("the forced answer (--target) is empty")
        for what, text in (("forced answer (--target)", self.target),
                           ("system prompt", self.system_prompt)):
            try:
                (text or "").encode("utf-8")
            except UnicodeEncodeError:
                raise InvalidInputError(f"the {what} holds characters that are not valid "
                                        "Unicode; give plain UTF-8 text") from None
        if not (self.baseline in ("pad", "zero") or self.baseline.startswith("token:")):
            raise InvalidSettingsError(
                f"unknown baseline {self.baseline!r}; choose pad, zero or token:ID")


    def method_params(self) -> dict[str, Any]:
        """The method's parameters: its defaults, the shared settings it takes, the options."""
        spec = get_method(self.method)
        defaults = spec.defaults()
        offered = {"steps": self.steps, "baseline": self.baseline, "matrix": self.matrix,
                   "batch_size": self.batch_size}
        params = {**defaults, **{key: value for key, value in offered.items()
                                 if key in defaults and value is not None}}
        for key, value in self.options:
            if key not in defaults:
                known = ", ".join(defaults) or "none"
                raise InvalidSettingsError(
                    f"method {self.method} has no option {key!r}; its options: {known}")
            params[key] = coerce_option(key, value, defaults[key])
        spec.check(params)
        return params


def coerce_option(key: str, value: Any, default: Any) -> Any:
    """``value`` (often text from a command line) as the type of the option's default.

    Options whose default is None take a positive integer or ``none``.
    """
    if not isinstance(value, str):
        return value
    text = value.strip()
    try:
        if isinstance(default, str):
            return text
        if not text.isascii() or "_" in text:  # int() and float() read "٣" as 3, "1_0" as 10
            raise ValueError(text)
        if default is None:
            return None if text.lower() in ("", "none") else int(text)
        if isinstance(default, bool):
            if text.lower() not in ("true", "false", "yes", "no", "1", "0"):
                raise ValueError(text)
            return text.lower() in ("true", "yes", "1")
        return type(default)(text)
    except ValueError:
        expected = "an integer or none" if default is None else \
            f"{type(default).__name__} like {default!r}"
        shown = repr(value) if len(value) <= 40 else \
            f"{value[:40]!r}... ({len(value):,} characters)"
        raise InvalidSettingsError(f"option {key}={shown}: expected {expected}") from None


def software_versions() -> Versions:
    def of(package: str) -> str:
        try:
            return version(package)
        except PackageNotFoundError:
            return "unknown"

    return Versions(tokentrace=of("tokentrace"), torch=torch.__version__,
                    transformers=of("transformers"), captum=of("captum"))


def explain(request: ExplainRequest, loaded: LoadedModel,
            state: TaskState | None = None) -> Explanation:
    """Answer the case with ``loaded`` and attribute the answer to the case's tokens.

    Raises the typed errors of :mod:`engine.errors`; :class:`~engine.errors.Cancelled` when
    ``state`` is cancelled.
    """
    state = state or TaskState()
    request.validate()
    method = get_method(request.method)
    model, tokenizer = loaded.model, loaded.tokenizer
    device = loaded.device

    prompt = build_prompt(tokenizer, request.case_text, system_prompt=request.system_prompt,
                          raw=request.raw_prompt, state=state)
    n = len(prompt.token_ids)
    if request.target is not None:
        refuse_control_tokens(tokenizer, request.target, "forced answer (--target)")
    forced_ids = (list(tokenize(tokenizer, request.target, "forced answer (--target)",
                                add_special_tokens=False)["input_ids"])
                  if request.target is not None else None)
    rows = model.get_input_embeddings().num_embeddings
    highest = max((*prompt.token_ids, *(forced_ids or ())), default=0)
    if highest >= rows:  # an index error deep in the model otherwise
        raise ModelLoadError(f"the tokenizer gives token id {highest}, but the model's "
                             f"embedding has {rows} rows: its tokenizer and weights do not "
                             "belong together")
    planned = len(forced_ids) if forced_ids is not None else request.max_new_tokens
    if n + planned > loaded.context_length:
        what = "the case makes a prompt" if not prompt.system_prompt else \
            "the case with the system prompt makes a prompt"
        raise ContextTooLongError(
            f"{what} of {n:,} tokens; with {planned:,} answer tokens that is "
            f"{n + planned:,}, more than this model's context of {loaded.context_length:,} "
            "tokens. Shorten the case, lower --max-new-tokens, or use a longer-context model")

    with PeakMemory(device) as peak, _out_of_memory_as_error():
        start = time.perf_counter()
        cache = None
        if forced_ids is None:
            answer_ids, cache = generate_with_cache(model, tokenizer, list(prompt.token_ids),
                                                    request.max_new_tokens, state)
            if not answer_ids:
                raise InvalidInputError(
                    "the model gave an empty answer; try another system prompt or --target")
        else:
            answer_ids = forced_ids
        generate_s = time.perf_counter() - start

        state.check()
        start = time.perf_counter()
        problem = AttributionInput(
            prompt_ids=torch.tensor(prompt.token_ids, device=device),
            attributable=torch.tensor(prompt.attributable, device=device),
            answer_ids=torch.tensor(answer_ids, device=device),
            # Single-pass methods read the prompt's keys and values from generation's cache.
            prompt_cache=cache if method.reuses_prompt_cache else None,
        )
        del cache  # the cache is as large as the prompt's activations; keep it no longer
        params = request.method_params()
        output = method.attribute(model, tokenizer, problem, state=state, **params)
        attribute_s = time.perf_counter() - start

    if bool(output.f_input.isnan().any()) or bool((output.f_input > 0).any()):
        raise ModelLoadError(BROKEN_MODEL)  # before the scores: it is their cause
    scores = output.sequence if output.per_token is None else output.per_token
    if not bool(torch.isfinite(scores).all()):
        raise TokenTraceError(
            f"{request.method} gave scores that are not finite numbers (an overflow, often in "
            "float16); nothing is shown or saved. Try float32 or another method")
    answer_text, answer_tokens = answer_pieces(tokenizer, answer_ids)
    per_field = {}
    if request.fields:
        shift = case_start(prompt.text, prompt.case_text, prompt.offsets, prompt.attributable)
        per_field = field_scores(prompt.offsets, output.sequence.tolist(), prompt.attributable,
                                 request.fields, shift)
    mask = torch.tensor(prompt.attributable, dtype=torch.bool)
    sequence = torch.where(mask, output.sequence, torch.zeros_like(output.sequence))
    per_token = (None if output.per_token is None else
                 tuple(tuple(row) for row in torch.where(mask, output.per_token, 0.0).tolist()))
    record = Explanation(
        versions=software_versions(),
        model=loaded.info,
        method=MethodInfo(request.method, {**params, **output.details}),
        prompt=Prompt(
            text=prompt.text, case_text=prompt.case_text, token_ids=prompt.token_ids,
            tokens=_prompt_tokens(tokenizer, prompt.token_ids, prompt.tokens),
            attributable=prompt.attributable, offsets=prompt.offsets, format=prompt.format,
            system_prompt=prompt.system_prompt, fields=request.fields,
            case_sha256=text_sha256(prompt.case_text)),
        answer=Answer(text=answer_text, token_ids=tuple(answer_ids), tokens=answer_tokens,
                      forced=forced_ids is not None, log_probs=tuple(output.f_input.tolist())),
        attribution=Attribution(sequence=tuple(sequence.tolist()), per_token=per_token,
                                completeness_error=output.completeness_error,
                                per_field=per_field),
        timings=Timings(load_s=loaded.load_s, generate_s=generate_s, attribute_s=attribute_s),
        hardware=Hardware(device_name=device_name(device), peak_rss_mb=peak.peak_rss_mb,
                          peak_accelerator_mb=peak.peak_accelerator_mb),
    )
    audited("explain", record)
    return record


def answer_row(record: Explanation, row: int, loaded: LoadedModel,
               state: TaskState | None = None) -> tuple[float, ...]:
    """Row ``row`` of the per-token matrix of ``record``: read from the record when it has the
    matrix, else computed on its own with ``loaded`` (the model that made the record).

    Computed, answer token ``row`` is explained as a one-token answer whose prompt is the
    record's prompt followed by the earlier answer tokens, kept fixed (not attributable) as
    every method keeps the answer fixed. By causality that is the same target,
    log p(y_row | x, y_<row), with the same inputs and perturbations as the matrix's row, at the
    cost of a one-token explanation. Tests: equal to the matrix's row for every method with a
    ``matrix`` setting (HETA, which always makes the matrix, draws its curvature from the whole
    answer and would differ). For the information-flow methods a row is the token's own
    single-sink flow without hops, as their matrix rows are.
    """
    state = state or TaskState()
    answer = record.answer.token_ids
    if not 0 <= row < len(answer):
        raise InvalidSettingsError(
            f"answer token {row + 1} does not exist (the answer has {len(answer)} tokens)")
    if record.attribution.per_token is not None:
        return tuple(record.attribution.per_token[row])
    if loaded.info.sha256 != record.model.sha256:
        raise ModelLoadError("this explanation was made with another model; load it to "
                             "explain single answer tokens")
    if loaded.info.dtype != record.model.dtype:
        raise ModelLoadError(f"this explanation was made in {record.model.dtype}, the model is "
                             f"loaded in {loaded.info.dtype}; load it in {record.model.dtype} "
                             "to explain single answer tokens")
    check_usable(record, loaded.model)
    spec = get_method(record.method.name)
    params = recorded_params(spec, record.method.params)
    if "matrix" in params:
        params["matrix"] = False
    flow = "hops" in params
    if flow:  # a token's row is its own single-sink flow, as in the matrix
        params.update(hops=0, span="all")
    device = loaded.device
    n = len(record.prompt.token_ids)
    problem = AttributionInput(
        prompt_ids=torch.tensor([*record.prompt.token_ids, *answer[:row]], device=device),
        # The earlier answer tokens now sit in the prompt. The flow methods count them as
        # content (normalise=content), as the matrix does; the gradient methods keep them fixed.
        attributable=torch.tensor([*record.prompt.attributable, *[flow] * row],
                                  device=device),
        answer_ids=torch.tensor(answer[row:row + 1], device=device),
    )
    with _out_of_memory_as_error():
        output = spec.attribute(loaded.model, loaded.tokenizer, problem, state=state,
                                **params)
    mask = torch.tensor(record.prompt.attributable, dtype=torch.bool)
    return tuple(torch.where(mask, output.sequence[:n], 0.0).tolist())


def recorded_params(spec: Any, recorded: dict[str, Any]) -> dict[str, Any]:
    """The settings of ``spec`` a record names, checked as a command line's are: an opened
    record is untrusted, and its settings are about to drive the model."""
    params = {}
    for key, default in spec.defaults().items():
        if key not in recorded:
            continue
        value = recorded[key]
        if not _same_kind(value, default):
            raise InvalidInputError(f"the explanation's setting {key}={value!r} is not a valid "
                                    f"value for {spec.name}")
        params[key] = value
    spec.check(params)
    return params


def _same_kind(value: Any, default: Any) -> bool:
    """Whether ``value`` has the type ``coerce_option`` gives an option with this default."""
    if isinstance(default, bool) or isinstance(value, bool):
        return isinstance(value, bool) and isinstance(default, bool)
    if default is None:
        return value is None or isinstance(value, int)
    if isinstance(default, float):
        return isinstance(value, (int, float))
    return isinstance(value, type(default))


@contextlib.contextmanager
def _out_of_memory_as_error() -> Iterator[None]:
    """Any allocation failure not already reported becomes one clear OutOfMemoryError."""
    try:
        yield
    except (RuntimeError, torch.OutOfMemoryError) as exc:
        if is_out_of_memory(exc):
            raise out_of_memory_error("the explanation", 1) from None
        raise


def _prompt_tokens(tokenizer, ids: tuple[int, ...], pieces: tuple[str, ...]) -> tuple[str, ...]:
    """Display text per token: its characters in the prompt, or its name for special tokens."""
    names = tokenizer.convert_ids_to_tokens(list(ids))
    return tuple(piece if piece else name for piece, name in zip(pieces, names, strict=True))
