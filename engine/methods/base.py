"""What every attribution method shares: its inputs, its output, its registry entry, and the
machinery for batching interpolation points to memory, cancelling inside a forward or backward
pass, and reporting out-of-memory clearly.

Shapes: ``n`` prompt tokens, ``T`` answer tokens, ``d`` embedding width, ``V`` vocabulary size.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from engine.errors import InvalidSettingsError, OutOfMemoryError
from engine.hardware import available_memory_bytes
from engine.task import TaskState


@dataclass(frozen=True)
class Param:
    name: str
    default: Any
    help: str
    # Raises InvalidSettingsError for a value no model could take (checked before a model
    # loads); what depends on the model or the answer (a layer index, a span's end) is checked
    # when the method runs.
    check: Callable[[Any], None] | None = field(default=None, compare=False, repr=False)


def one_of(name: str, *choices: str) -> Callable[[Any], None]:
    """A :attr:`Param.check` accepting only ``choices``."""
    def check(value: Any) -> None:
        if value not in choices:
            raise InvalidSettingsError(f"unknown {name} {value!r}; choose {' or '.join(choices)}")
    return check


# Upper (and lower) limits of the numeric options every method shares by name, checked before
# a model loads: a typo such as steps=100000000 must be one clear line, not hours of work or an
# out-of-memory crash.
OPTION_LIMITS: dict[str, tuple[float, float]] = {
    "steps": (1, 4096), "max_steps": (1, 4096), "samples": (1, 100_000), "nbrs": (1, 10_000),
    "upscale": (0, 8), "hops": (0, 16), "batch_size": (1, 65_536), "seed": (0, 2**32 - 1),
    "target_error": (1e-9, 0.999), "mix": (0, 1), "beta": (0, 1e6), "gamma": (0, 1e6),
}


def check_option(key: str, value: Any) -> None:
    """Raise InvalidSettingsError when a numeric option lies outside its limits."""
    limits = OPTION_LIMITS.get(key)
    if limits is None or value is None or isinstance(value, bool) \
            or not isinstance(value, (int, float)):
        return
    low, high = limits
    if not low <= value <= high:
        shown = f"{value:g}" if isinstance(value, float) or abs(value) < 10**15 else \
            f"a number of {len(str(abs(value)))} digits"
        raise InvalidSettingsError(f"{key} must be from {low:g} to {high:g} (got {shown})")


@dataclass(frozen=True)
class AttributionInput:
    """One explanation problem. Tensors are 1-D integer/bool tensors on the model's device."""

    prompt_ids: torch.Tensor  # [n]
    attributable: torch.Tensor  # [n] bool; only these positions move
    answer_ids: torch.Tensor  # [T]
    # The key/value cache generation left (transformers Cache covering at least the prompt),
    # for methods that can skip recomputing the prompt (spec.reuses_prompt_cache). None: none.
    prompt_cache: Any = field(default=None, compare=False, repr=False)

    def __post_init__(self) -> None:
        if self.prompt_ids.ndim != 1 or self.answer_ids.ndim != 1:
            raise ValueError("prompt_ids and answer_ids must be 1-D")
        if self.attributable.shape != self.prompt_ids.shape:
            raise ValueError("attributable must have one flag per prompt token")
        if len(self.answer_ids) == 0:
            raise InvalidSettingsError("there is no answer to explain (the answer is empty)")


@dataclass(frozen=True)
class AttributionOutput:
    """``sequence`` [n] and ``per_token`` [T, n] (or None), float64 on the CPU.

    ``f_input`` [T] is log p(y_t | x, y_<t); ``f_baseline`` [T] the same with every attributable
    token at the baseline (None where the method has no baseline).
    """

    sequence: torch.Tensor
    per_token: torch.Tensor | None
    f_input: torch.Tensor
    f_baseline: torch.Tensor | None = None
    completeness_error: float | None = None
    # How the result was reached, for the record (e.g. IG's points used and whether it
    # converged); plain JSON values.
    details: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Size:
    """How big one explanation is, in tokens: the whole prompt (chat template included), the
    case part of it (what is attributed) and the answer."""

    prompt: int
    case: int
    answer: int


@dataclass(frozen=True)
class Cost:
    """Model passes one explanation needs; each pass runs over ``tokens`` tokens per sequence."""

    forwards: int
    backwards: int
    tokens: int


@dataclass(frozen=True)
class MethodSpec:
    name: str
    description: str
    params: tuple[Param, ...]
    # In terms of n (prompt tokens), n_case (case tokens), T (answer tokens), the parameters.
    cost_formula: str
    cost: Callable[[Size, dict[str, Any]], Cost]  # (size, params) -> passes
    run: Callable[..., AttributionOutput] = field(repr=False)
    # True when the method reads AttributionInput.prompt_cache (explain then keeps generation's).
    reuses_prompt_cache: bool = False
    # False when scores are non-negative shares of what the answer drew on, with no direction
    # (information flow, HETA); True when a sign says toward or against the answer.
    signed: bool = True

    def defaults(self) -> dict[str, Any]:
        return {p.name: p.default for p in self.params}

    def check(self, params: dict[str, Any]) -> None:
        """Raise InvalidSettingsError for a value out of range or not among an option's
        choices: before a model loads, not after."""
        for param in self.params:
            if param.name in params:
                check_option(param.name, params[param.name])
                if param.check is not None:
                    param.check(params[param.name])

    def attribute(self, model: nn.Module, tokenizer: Any, problem: AttributionInput, *,
                  state: TaskState, **params: Any) -> AttributionOutput:
        """``run``, with a cancel checked in every decoder block of every pass it makes, its
        set-up and endpoint passes included (not only inside its main loop)."""
        with cancellable(model, state):
            return self.run(model, tokenizer, problem, state=state, **params)


def check_steps(steps: int, batch_size: int | None, name: str = "steps") -> None:
    if steps < 1:
        raise InvalidSettingsError(f"{name} must be at least 1 (got {steps})")
    if batch_size is not None and batch_size < 1:
        raise InvalidSettingsError(f"batch size must be at least 1 (got {batch_size})")


def decoder_layers(model: nn.Module) -> nn.ModuleList:
    """The model's stack of decoder blocks (the ModuleList with ``num_hidden_layers`` entries)."""
    count = getattr(model.config, "num_hidden_layers", None)
    for module in model.modules():
        if isinstance(module, nn.ModuleList) and len(module) == count:
            return module
    raise ValueError(f"cannot find the decoder layers of {type(model).__name__}")


@contextlib.contextmanager
def cancellable(model: nn.Module, state: TaskState) -> Iterator[None]:
    """Check for cancellation before every decoder block, forward and backward.

    A cancelled run stops within one block's compute instead of one whole pass.
    """

    def check_tensor(grad: torch.Tensor) -> None:
        state.check()

    def before(module: nn.Module, args: Any) -> None:
        state.check()

    def after(module: nn.Module, args: Any, output: Any) -> None:
        hidden = output[0] if isinstance(output, tuple) else output
        if isinstance(hidden, torch.Tensor) and hidden.requires_grad:
            hidden.register_hook(check_tensor)

    handles = []
    for layer in decoder_layers(model):
        handles.append(layer.register_forward_pre_hook(before))
        handles.append(layer.register_forward_hook(after))
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


def cache_keyword(model: nn.Module) -> str:
    """The forward's name for a key/value cache: ``cache`` in newer transformers 5.x releases,
    ``past_key_values`` before (still accepted there, with a deprecation warning)."""
    import inspect

    parameters = inspect.signature(model.forward).parameters
    return "cache" if "cache" in parameters else "past_key_values"


def is_out_of_memory(exc: BaseException) -> bool:
    if isinstance(exc, torch.OutOfMemoryError):
        return True
    text = str(exc).lower()
    return isinstance(exc, RuntimeError) and (
        "out of memory" in text or "can't allocate memory" in text
        or "not enough memory" in text)


def out_of_memory_error(what: str, batch: int) -> OutOfMemoryError:
    return OutOfMemoryError(
        f"out of memory during {what} (batch of {batch} interpolation points); try fewer "
        "steps, a smaller --batch-size, --no-matrix, a shorter case or a smaller model")


def bytes_per_point(model: nn.Module, seq_len: int, n_logits: int) -> int:
    """Rough activation memory kept for backward by one sequence of ``seq_len`` tokens."""
    config = model.config
    hidden = getattr(config, "hidden_size", 1024)
    inter = getattr(config, "intermediate_size", 4 * hidden)
    heads = getattr(config, "num_attention_heads", 16)
    layers = getattr(config, "num_hidden_layers", 24)
    vocab = getattr(config, "vocab_size", 32000)
    size = next(model.parameters()).element_size()
    per_layer = seq_len * (12 * hidden + 4 * inter) + 2 * heads * seq_len * seq_len
    logits = n_logits * vocab * 3
    return int(1.5 * size * (layers * per_layer + logits) + 4 * n_logits * vocab)


CPU_TOKENS_PER_PASS = 1024
# Forwards without a backward (the faithfulness check's perturbed prompts) run best at about
# half as many again: on the demo case's reliability check (51 prompts, bfloat16 twin, 2-core
# CPU) 1,024 tokens per pass took 6.3 s, 1,536 5.5 s, 2,048 5.4 s, 3,072 5.7 s (medians of 5
# and 4 alternating runs; a fixed 4 prompts per pass, before: 6.9 s).
CPU_SCORING_TOKENS_PER_PASS = 1536


def auto_batch_size(model: nn.Module, seq_len: int, n_logits: int, points: int,
                    run_len: int | None = None, memory_share: float = 1.0,
                    cpu_tokens: int = CPU_TOKENS_PER_PASS) -> int:
    """Interpolation points per forward that fit in about half the free device memory
    (``memory_share`` times the memory one point keeps for a backward). On a CPU also at
    most ``cpu_tokens`` tokens run per pass, counting ``run_len`` of each point's
    ``seq_len`` (the rest being cached keys and values, which cost memory, not passes)."""
    device = next(model.parameters()).device
    budget = 0.5 * available_memory_bytes(device)
    fits = int(budget // max(1, memory_share * bytes_per_point(model, seq_len, n_logits)))
    if device.type == "cpu":
        # Past a few thousand tokens per pass CPU throughput stops improving, and smaller
        # passes keep cancellation prompt.
        fits = min(fits, cpu_tokens // max(1, run_len or seq_len))
    return max(1, min(points, fits))


def run_in_batches(points: int, batch_size: int | None, estimate: Callable[[], int],
                   work: Callable[[int, int], None], what: str) -> None:
    """Call ``work(start, stop)`` over ``range(points)`` in batches.

    With ``batch_size=None`` the size is ``estimate()`` and is halved on out-of-memory (the
    failed batch is redone); with a fixed size an out-of-memory error is reported at once.
    """
    size = batch_size or estimate()
    run_in_sized_batches(points, batch_size, lambda start: size, work, what)


def run_in_sized_batches(points: int, batch_size: int | None, size_at: Callable[[int], int],
                         work: Callable[[int, int], None], what: str) -> None:
    """:func:`run_in_batches` where a batch's size depends on where it starts:
    ``size_at(start)`` (rows sorted longest first fit more per batch as they get shorter).
    After an out-of-memory error every later size is halved as well."""
    start, shrink = 0, 1
    while start < points:
        size = batch_size or max(1, size_at(start) // shrink)
        stop = min(points, start + size)
        try:
            work(start, stop)
        except (RuntimeError, torch.OutOfMemoryError) as exc:
            if not is_out_of_memory(exc):
                raise
            if batch_size is not None or size == 1:
                raise out_of_memory_error(what, size) from None
            shrink *= 2
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
            continue
        start = stop


def answer_log_probs(model: nn.Module, embeds: torch.Tensor, answer_ids: torch.Tensor
                     ) -> torch.Tensor:
    """F [B, T]: log p(y_t | x, y_<t) for a batch of embedded sequences [B, n + T - 1, d].

    Only the T answer positions go through the language-model head; log-softmax runs in at
    least float32.
    """
    n_answer = answer_ids.shape[0]
    logits = model(inputs_embeds=embeds, use_cache=False, logits_to_keep=n_answer).logits
    logits = logits.to(torch.promote_types(logits.dtype, torch.float32))
    log_probs = torch.log_softmax(logits, dim=-1)
    index = answer_ids.view(1, -1, 1).expand(logits.shape[0], -1, 1)
    return log_probs.gather(-1, index).squeeze(-1)


def parse_baseline(spec: str, tokenizer: Any, vocab_size: int) -> int | None:
    """Baseline token id for ``pad`` / ``token:ID``; ``None`` for the ``zero`` embedding."""
    if spec == "zero":
        return None
    if spec == "pad":
        for candidate in (tokenizer.pad_token_id, tokenizer.eos_token_id):
            if candidate is not None:
                return int(candidate)
        raise InvalidSettingsError("baseline 'pad': this tokenizer has neither a pad nor an eos "
                                   "token; use --baseline zero or --baseline token:ID")
    if spec.startswith("token:"):
        digits = spec.removeprefix("token:")
        # ASCII digits alone: int() also reads "٣", "1_0" and " 5", and the record would keep
        # a baseline written in a way nothing else reads back.
        token_id = int(digits) if digits.isascii() and digits.isdigit() else -1
        if not 0 <= token_id < vocab_size:
            raise InvalidSettingsError(f"baseline {spec!r}: the id must be an integer from 0 to "
                                       f"{vocab_size - 1}")
        return token_id
    raise InvalidSettingsError(f"unknown baseline {spec!r}; choose pad, zero or token:ID")


# Sustained throughput guesses, used until a run on this machine measures the real one.
DEFAULT_FLOPS = {"cpu": 5e10, "mps": 2e12, "cuda": 2e13}


def estimate_seconds(cost: Cost, parameters: int, device_type: str,
                     token_passes_per_second: float | None = None) -> float:
    """Seconds for ``cost``: (forwards + backwards) x tokens / throughput.

    A backward with respect to the inputs only costs about one forward (no weight gradients).
    ``token_passes_per_second`` is a measured throughput; without it, 2 x parameters FLOPs per
    token are assumed at a typical rate for the device.
    """
    if token_passes_per_second is None:
        flops = DEFAULT_FLOPS.get(device_type, DEFAULT_FLOPS["cpu"])
        token_passes_per_second = flops / max(1, 2 * parameters)
    return (cost.forwards + cost.backwards) * cost.tokens / token_passes_per_second


def measured_throughput(cost: Cost, seconds: float) -> float:
    """Token-passes per second that a finished run achieved (for later estimates)."""
    return (cost.forwards + cost.backwards) * cost.tokens / max(seconds, 1e-6)
