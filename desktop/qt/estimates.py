"""How long a run will take, said before it starts.

The methods' cost model (forwards, backwards, tokens) divided by a throughput: the one this
model measurably reached on this machine, remembered per weights, device and precision, or a
typical rate for the device before its first run. The GUI never tokenizes (the tokenizer
belongs to the engine thread): a case is taken as about four characters a token, plus the
chat template.
"""

from __future__ import annotations

from dataclasses import replace

from PySide6.QtCore import QSettings

from engine.defaults import DEFAULT_METHOD
from engine.errors import TokenTraceError
from engine.explain import ExplainRequest, recorded_params
from engine.methods import get_method
from engine.methods.base import Size, estimate_seconds, measured_throughput
from engine.record import Explanation, ModelInfo

LONG_RUN_SECONDS = 120  # an estimate above this names the single changes that make it short
FALLBACK_METHOD = DEFAULT_METHOD  # quick: one forward pass, no backward
CHARS_PER_TOKEN = 4
TEMPLATE_TOKENS = 60


def duration(seconds: float) -> str:
    return f"{seconds:.0f} s" if seconds < 90 else f"{seconds / 60:.0f} min"


class RunEstimates:
    """Estimates for the model in ``model_info`` (None before one is loaded)."""

    def __init__(self, settings: QSettings) -> None:
        self._settings = settings
        self.model_info: ModelInfo | None = None

    def key(self) -> str:
        """Where this model's measured throughput is remembered."""
        info = self.model_info
        return f"throughput/{info.sha256[:16]}/{info.device}/{info.dtype}" if info else ""

    def remember(self, record: Explanation) -> None:
        """Keep the throughput a finished explanation reached, for the next estimates."""
        cost = get_method(record.method.name).cost(
            Size(prompt=len(record.prompt.token_ids), case=sum(record.prompt.attributable),
                 answer=len(record.answer.token_ids)), record.method.params)
        if record.timings.attribute_s > 0 and self.model_info is not None:
            self._settings.setValue(self.key(),
                                    measured_throughput(cost, record.timings.attribute_s))

    def rate(self) -> float | None:
        """Token-passes per second this model reached here (None before its first run)."""
        measured = self._settings.value(self.key())
        return float(measured) if measured is not None else None

    def seconds(self, request: ExplainRequest) -> float | None:
        """Attribution time of ``request``, or None without a model. Raises on an unknown or
        malformed method option."""
        info = self.model_info
        if info is None:
            return None
        case = len(request.case_text) // CHARS_PER_TOKEN
        target = (request.target or "").strip()
        answer = max(1, len(target) // CHARS_PER_TOKEN) if target else request.max_new_tokens
        size = Size(prompt=case + TEMPLATE_TOKENS, case=case, answer=answer)
        return self._of(info, request.method, size, request.method_params())

    def row_seconds(self, record: Explanation, row: int) -> float | None:
        """Time to explain answer token ``row`` of ``record`` on its own."""
        info = self.model_info
        if info is None:
            return None
        size = Size(prompt=len(record.prompt.token_ids) + row,
                    case=sum(record.prompt.attributable), answer=1)
        try:  # an opened record is untrusted: its settings are checked before they are used
            spec = get_method(record.method.name)
            params = recorded_params(spec, record.method.params)
        except TokenTraceError:
            return None  # the row itself will say what is wrong, in one line
        return self._of(info, spec.name, size, {**params, "matrix": False})

    def quicker(self, request: ExplainRequest) -> list[tuple[str, float]]:
        """(change, estimated seconds) for each single change that makes ``request`` short."""
        changes = []
        if request.matrix and "matrix" in request.method_params():
            changes.append(("without the per-token matrix", replace(request, matrix=False)))
        if request.method != FALLBACK_METHOD:
            changes.append((f"with {FALLBACK_METHOD}",
                            replace(request, method=FALLBACK_METHOD, steps=None, options=())))
        found = []
        for change, quicker in changes:
            seconds = self.seconds(quicker)
            if seconds is not None and seconds <= LONG_RUN_SECONDS:
                found.append((change, seconds))
        return found

    def describe(self, request: ExplainRequest) -> tuple[str, bool]:
        """The settings panel's line for ``request`` and whether it is a long run. Raises
        like :meth:`seconds`."""
        seconds = self.seconds(request)
        if seconds is None:
            return "load a model first", False
        text = f"about {duration(seconds)}"
        if seconds <= LONG_RUN_SECONDS:
            return text, False
        quicker = self.quicker(request)
        text += " — a long run" + "".join(f"; {change}: about {duration(s)}"
                                           for change, s in quicker)
        if not quicker:
            text += ": fewer steps, samples or answer tokens would be quicker"
        return text, True

    def _of(self, info: ModelInfo, method: str, size: Size, params: dict) -> float:
        cost = get_method(method).cost(size, params)
        return estimate_seconds(cost, info.parameters, info.device.split(":")[0], self.rate())
