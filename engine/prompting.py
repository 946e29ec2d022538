"""Turning a case into prompt ids, and knowing which of them came from the case.

Only tokens whose characters lie in the case text are attributable; chat-template tokens (role
markers, the system prompt) stay fixed during attribution and get a score of 0.
"""

from __future__ import annotations

import contextlib
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from engine.errors import InvalidInputError, ModelLoadError
from engine.task import TaskState

DEFAULT_SYSTEM_PROMPT = (
    "You are a clinical decision-support assistant for breast cancer care. Read the case and "
    "answer briefly with the most appropriate next step and the key reasons from the case. "
    "You support, not replace, the clinician's judgement."
)

MAX_CASE_CHARS = 200_000

# A chat template is code that came with the model (a Jinja program, run in transformers'
# sandbox). A real one renders in milliseconds and adds a few hundred characters; a hostile or
# broken one must not hang the window or fill the memory.
TEMPLATE_SECONDS = 5.0
TEMPLATE_EXTRA_CHARS = 1_000_000  # text a template may produce beyond the messages, ~4x slack


@dataclass(frozen=True)
class PromptParts:
    """A tokenized prompt. Lengths are all ``n`` (number of prompt tokens)."""

    text: str
    case_text: str
    token_ids: tuple[int, ...]
    offsets: tuple[tuple[int, int], ...]
    attributable: tuple[bool, ...]
    format: str  # "chat" or "raw"
    system_prompt: str | None

    @property
    def tokens(self) -> tuple[str, ...]:
        return tuple(self.text[s:e] for s, e in self.offsets)


def validate_case_text(case_text: str) -> str:
    """Return the case text stripped of surrounding blank space, or raise a clear error."""
    if "\x00" in case_text:
        raise InvalidInputError("the case looks binary (it contains NUL bytes); give plain text")
    text = case_text.strip()
    if not text:
        raise InvalidInputError("the case is empty; type or load the clinical case text")
    if len(text) > MAX_CASE_CHARS:
        raise InvalidInputError(f"the case is {len(text):,} characters; TokenTrace accepts up "
                                f"to {MAX_CASE_CHARS:,} (a long note is about 20,000)")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:  # a lone surrogate: bytes that were not UTF-8, or bad JSON
        raise InvalidInputError("the case holds characters that are not valid Unicode (bytes "
                                "that are not UTF-8?); give plain UTF-8 text") from None
    return text


def is_panic(exc: BaseException) -> bool:
    """A panic inside a library's Rust code (the tokenizer's regular expressions, for one)
    reaches Python as pyo3's ``PanicException``, a BaseException that ``except Exception``
    lets through."""
    return type(exc).__name__ == "PanicException"


def tokenize(tokenizer: Any, text: str, what: str, **options: Any) -> Any:
    """``tokenizer(text, **options)``; a tokenizer that fails on a text (a pre-tokenizer
    pattern that backtracks until its engine gives up, a vocabulary without its unknown token)
    is the model's fault, said in one line."""
    try:
        return tokenizer(text, **options)
    except BaseException as exc:
        if not (isinstance(exc, Exception) or is_panic(exc)):
            raise
        reason = " ".join(str(exc).split())[:200] or type(exc).__name__
        raise ModelLoadError(f"this model's tokenizer failed on the {what} ({reason}); its "
                             "tokenizer files are broken") from None


def build_prompt(tokenizer: Any, case_text: str, *, system_prompt: str | None,
                 raw: bool = False, state: TaskState | None = None) -> PromptParts:
    """Render the case through the chat template (or as is with ``raw``) and tokenize it.

    ``system_prompt=None`` or ``""`` leaves the template's own default system turn, if any.
    A tokenizer without a chat template falls back to the raw prompt.
    """
    case = validate_case_text(case_text)
    refuse_control_tokens(tokenizer, case, "case")
    refuse_control_tokens(tokenizer, system_prompt or "", "system prompt")
    use_chat = not raw and bool(getattr(tokenizer, "chat_template", None))
    if use_chat:
        messages = [{"role": "user", "content": case}]
        if system_prompt:
            messages.insert(0, {"role": "system", "content": system_prompt})
        text = render_chat_template(tokenizer, messages, state or TaskState())
        start = _case_position(tokenizer, messages, text, case, state or TaskState())
        if start < 0:
            raise InvalidInputError("this model's chat template rewrites the case text, so its "
                                    "tokens cannot be located; use --raw-prompt")
        encoded = tokenize(tokenizer, text, "case", add_special_tokens=False,
                           return_offsets_mapping=True)
    else:
        text, start = case, 0
        encoded = tokenize(tokenizer, text, "case", return_offsets_mapping=True)
    end = start + len(case)
    ids = tuple(int(i) for i in encoded["input_ids"])
    offsets = tuple((int(s), int(e)) for s, e in encoded["offset_mapping"])
    special = set(getattr(tokenizer, "all_special_ids", ()))
    attributable = tuple(
        e > s and s < end and e > start and tid not in special
        for tid, (s, e) in zip(ids, offsets, strict=True)
    )
    if not any(attributable):
        raise InvalidInputError("no token of the case could be located in the prompt")
    return PromptParts(text, case, ids, offsets, attributable, "chat" if use_chat else "raw",
                       system_prompt if use_chat else None)


CASE_MARK = "TOKENTRACECASEMARK"  # stands for the case in a second rendering


def _case_position(tokenizer: Any, messages: list[dict[str, str]], text: str, case: str,
                   state: TaskState) -> int:
    """Where the template put the case in ``text``: the template is rendered again with a mark
    for the case, and the case sits where the mark does when everything before it is the same.
    Searching the text for the case would find a short case ("assistant", "user") in the
    template's own words after it, and colour those. -1 when the template rewrites the case."""
    marked = [{**m, "content": CASE_MARK} if m["role"] == "user" else m for m in messages]
    rendered = render_chat_template(tokenizer, marked, state)
    at = rendered.find(CASE_MARK)
    if at >= 0 and rendered.count(CASE_MARK) == 1 and text.startswith(rendered[:at]) \
            and text[at:at + len(case)] == case:
        return at
    return text.rfind(case)  # a template whose head depends on the case


def control_tokens(tokenizer: Any) -> list[str]:
    """The texts this tokenizer reads as its special tokens (``<|im_end|>``, ``</s>`` ...);
    one character or blank ones are left out (a pad token set to " " is in every text)."""
    found = set(getattr(tokenizer, "all_special_tokens", ()) or ())
    for token in (getattr(tokenizer, "added_tokens_decoder", None) or {}).values():
        if getattr(token, "special", False):
            found.add(str(token.content))
    return sorted((t for t in found if len(t.strip()) > 1), key=len, reverse=True)


def refuse_control_tokens(tokenizer: Any, text: str, what: str) -> None:
    """A case (system prompt, forced answer) holding ``<|im_end|>`` would be read as the chat
    format's own marker: it could close the user's turn and write an assistant's or a
    system's, and those tokens are never coloured. One clear line instead."""
    for token in control_tokens(tokenizer):
        if token in text:
            raise InvalidInputError(f"the {what} holds {token!r}, one of this model's control "
                                    "tokens (chat-format markers); remove it")


def render_chat_template(tokenizer: Any, messages: list[dict[str, str]], state: TaskState,
                         seconds: float = TEMPLATE_SECONDS) -> str:
    """The model's chat template applied to ``messages``, stopped after ``seconds``, when the
    text it has produced exceeds its budget, or when ``state`` is cancelled (within a few
    milliseconds: the template's compiled Python is checked line by line)."""
    given = sum(len(m["content"]) for m in messages)
    budget = 4 * given + TEMPLATE_EXTRA_CHARS
    try:
        with _bounded(seconds, budget, state) as stopped:
            text = tokenizer.apply_chat_template(messages, tokenize=False,
                                                 add_generation_prompt=True)
    except _Stop:
        pass
    except MemoryError:
        stopped.append("needed more memory than this machine has")
    if stopped:
        state.check()
        raise ModelLoadError(f"this model's chat template {stopped[0]}; it was stopped. The "
                             "model's files may be damaged or hostile; use --raw-prompt, or "
                             "another model")
    if len(text) > budget:
        raise ModelLoadError(f"this model's chat template made {len(text):,} characters of a "
                             f"{given:,}-character case; it is refused")
    return text


class _Stop(BaseException):  # not an Exception: no ``except Exception`` in the template's way
    pass


@contextlib.contextmanager
def _bounded(seconds: float, budget: int, state: TaskState) -> Iterator[list[str]]:
    """Run the Python inside under a line tracer that stops it at the deadline, when the text
    its frames return or yield exceeds ``budget`` characters, or on cancel. Yields a list that
    holds why it stopped (empty when it did not). This thread only; a tracer already set (a
    debugger, coverage) is put back afterwards."""
    deadline = time.monotonic() + seconds
    produced = 0
    stopped: list[str] = []

    def tracer(frame: Any, event: str, arg: Any) -> Any:
        nonlocal produced
        if event == "return" and type(arg) is str:
            produced += len(arg)
        if stopped:
            raise _Stop
        if state.cancelled:
            stopped.append("was cancelled")
        elif time.monotonic() > deadline:
            stopped.append(f"ran for more than {seconds:g} s")
        elif produced > budget:
            stopped.append(f"produced more than {budget:,} characters")
        if stopped:
            raise _Stop
        return tracer

    previous = sys.gettrace()
    sys.settrace(tracer)
    try:
        yield stopped
    finally:
        sys.settrace(previous)


def answer_pieces(tokenizer: Any, ids: list[int]) -> tuple[str, tuple[str, ...]]:
    """Decode ``ids`` and split the text into one piece per token; the pieces join to the text.

    A character whose bytes span several tokens (byte-level BPE: "≈" can be three) belongs to
    the token that completes it, and the tokens before it get "" (a prefix decodes to U+FFFD
    there). A tokenizer whose prefixes do not decode to prefixes of the text (space clean-up)
    gives each token what it adds to the longest common prefix, so the pieces still join.
    """
    text = tokenizer.decode(ids, skip_special_tokens=False)
    pieces: list[str] = []
    done = 0  # characters of ``text`` given out so far
    for k in range(1, len(ids)):
        prefix = stable_prefix(tokenizer.decode(ids[:k], skip_special_tokens=False))
        reach = max(done, common_prefix_length(prefix, text))
        pieces.append(text[done:reach])
        done = reach
    if ids:
        pieces.append(text[done:])
    return text, tuple(pieces)


def stable_prefix(decoded: str) -> str:
    """``decoded`` without a trailing U+FFFD: the bytes of a character not yet complete."""
    return decoded.rstrip("\ufffd")


def common_prefix_length(a: str, b: str) -> int:
    length = min(len(a), len(b))
    if a[:length] == b[:length]:
        return length
    return next(i for i in range(length) if a[i] != b[i])
