"""What if: change a finding of the case and see whether, and how, the answer changes.

``what_if`` applies edits to an explanation's case (replace a value, remove a phrase, remove a
sentence), answers the edited case with the same model and settings, and measures how much less
(or more) likely the *original* answer is under the edit: log p(y | x') - log p(y | x), per
token and summed, both read in one batched pass that reuses the unchanged prefix's keys and
values. ``sensitivity`` removes each sentence of the case in turn (each field, for a case made
of fields: they render one per line) (the leave-one-out engine of
engine/claims.py) and ranks the sentences by the fall of the original answer's probability; it
also says whether the greedy answer would change, from the same pass: the greedy answer after an
edited prompt is the original one exactly when every original token is still the most likely
next token where it stands. One forward per sentence, no generation.

A what-if record names the original case by its sha256 and lists the edits; it is saved as JSON
with ``tokentrace_whatif`` = 1 and the usual record conventions (atomic writes, checked on load).
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import regex
import torch

from engine.errors import (
    BROKEN_MODEL,
    ContextTooLongError,
    InvalidInputError,
    InvalidSettingsError,
    ModelLoadError,
)
from engine.files import check_regular_file, parse_json
from engine.generation import generate_answer
from engine.grouping import WORD_CHAR
from engine.metrics import answer_log_probs
from engine.prompting import MAX_CASE_CHARS, answer_pieces, build_prompt, validate_case_text
from engine.record import (
    MAX_RECORD_BYTES,
    Explanation,
    ModelInfo,
    Versions,
    from_plain,
    to_plain,
    write_text_atomic,
)
from engine.reliability import check_usable, problem_of
from engine.sentences import split_sentences
from engine.task import SubTask, TaskState

WHATIF_VERSION = 1
EDIT_KINDS = ("replace", "remove", "remove-sentence")


@dataclass(frozen=True)
class Edit:
    """One change to a case. ``target``: the text to replace or remove (every occurrence), or
    for ``remove-sentence`` the sentence's number (from 1, as ``engine.sentences`` splits)."""

    kind: str
    target: str
    replacement: str = ""

    def __post_init__(self) -> None:
        if self.kind not in EDIT_KINDS:
            raise InvalidSettingsError(f"unknown edit {self.kind!r}; use {', '.join(EDIT_KINDS)}")

    def describe(self) -> str:
        if self.kind == "replace":
            return f"replace “{self.target}” with “{self.replacement}”"
        if self.kind == "remove":
            return f"remove “{self.target}”"
        return f"remove sentence {self.target}"


def apply_edits(case: str, edits: Sequence[Edit]) -> str:
    """``case`` with ``edits`` applied in order; one clear error for an edit that finds nothing
    to change or leaves no case."""
    text = case
    for edit in edits:
        if edit.kind == "remove-sentence":
            spans = split_sentences(text)
            try:
                number = int(edit.target)
            except ValueError:
                number = 0
            if not 1 <= number <= len(spans):
                raise InvalidInputError(f"there is no sentence {edit.target} to remove: the case "
                                        f"has {len(spans)} sentences")
            start, end = spans[number - 1]
            following = len(text) - len(text[end:].lstrip())
            text = text[:start] + text[following:]
            continue
        if not edit.target:
            raise InvalidInputError(f"{edit.describe()}: give the text to change")
        found = len(_occurrence(edit.target).findall(text))
        if not found:
            inside = " (only inside longer words)" if edit.target in text else ""
            raise InvalidInputError(f"{edit.describe()}: “{edit.target}” is not in the case"
                                    f"{inside}")
        if edit.kind == "replace":  # checked before the text is made: edits can multiply it
            grown = len(text) + found * (len(edit.replacement) - len(edit.target))
            if grown > MAX_CASE_CHARS:
                raise InvalidInputError(f"{edit.describe()} makes the case {grown:,} characters; "
                                        f"a case may be at most {MAX_CASE_CHARS:,}")
        text = _apply_one(text, edit)
    try:
        return validate_case_text(text)
    except InvalidInputError as exc:
        raise InvalidInputError(f"after the edits: {exc}") from None


def edits_between(original: str, edited: str) -> list[Edit]:
    """Edits that turn ``original`` into ``edited`` (a case changed by hand in the window), as
    a reader would state them: each changed stretch of words, widened by a word on each side
    until it occurs once, so that applying the edits gives ``edited`` exactly. When that cannot
    be done stretch by stretch, one edit replaces the whole changed region."""
    import difflib

    if original == edited:
        return []
    words = list(re.finditer(r"\S+", original))
    new_words = list(re.finditer(r"\S+", edited))
    matcher = difflib.SequenceMatcher(a=[w.group() for w in words],
                                      b=[w.group() for w in new_words], autojunk=False)
    changes: list[list[int]] = []  # stretches that differ; close ones (<= 2 words apart) merged
    for op, i1, i2, j1, j2 in matcher.get_opcodes():
        if op == "equal":
            continue
        if changes and i1 - changes[-1][1] <= 2 and j1 - changes[-1][3] <= 2:
            changes[-1][1], changes[-1][3] = i2, j2
        else:
            changes.append([i1, i2, j1, j2])
    edits: list[Edit] = []
    text = original
    for i1, i2, j1, j2 in reversed(changes):
        edit = _unique_edit(original, edited, words, new_words, i1, i2, j1, j2)
        if edit is None:
            break
        edits.insert(0, edit)
    else:
        for edit in edits:
            text = _apply_one(text, edit)
        if text == edited:
            return edits
    start = next(i for i, (a, b) in enumerate(zip(original + "\0", edited + "\1",
                                                   strict=False)) if a != b)
    end = 0
    while end < min(len(original), len(edited)) - start and \
            original[len(original) - 1 - end] == edited[len(edited) - 1 - end]:
        end += 1
    # Widened to whole words ("negative" -> "positive", not "nega" -> "posi"): an edit's
    # target never starts or ends inside a word.
    while start > 0 and not original[start - 1].isspace():
        start -= 1
    while end > 0 and not original[len(original) - end].isspace():
        end -= 1
    old, new = original[start:len(original) - end], edited[start:len(edited) - end]
    if old and len(_occurrence(old).findall(original)) == 1 and \
            _apply_one(original, Edit("replace", old, new)) == edited:
        return [Edit("replace", old, new)]
    return [Edit("replace", original, edited)]


def _unique_edit(original: str, edited: str, words: list[re.Match], new_words: list[re.Match],
                 i1: int, i2: int, j1: int, j2: int) -> Edit | None:
    """The stretch of words i1:i2 (original) that became j1:j2 (edited), widened until it
    occurs once in ``original``; a replacement also takes the word before it ("HER2
    negative", not "negative"), a removal does not ("Ki-67 is 60%.")."""
    left = 1 if i1 > 0 and j2 > j1 else 0
    for grow in range(len(words) + 1):
        a, b = max(0, i1 - left - grow), min(len(words), i2 + grow)
        c, d = j1 - (i1 - a), j2 + (b - i2)
        if a == b:
            continue
        old = original[words[a].start():words[b - 1].end()]
        new = edited[new_words[c].start():new_words[d - 1].end()] if d > c else ""
        if len(_occurrence(old).findall(original)) == 1:
            return Edit("replace", old, new) if new else Edit("remove", old)
    return None


def _occurrence(target: str) -> regex.Pattern[str]:
    """Where ``target`` occurs as written, never inside a longer word: "ER" is not the "ER"
    of "HER2" (a target that begins or ends with a letter, digit or combining mark must begin
    or end a word there). A combining mark (a vowel sign in Hindi or Thai, an accent in
    decomposed Latin) is part of its word: "र" is not the first letter of "रोगी"."""
    before = rf"(?<!{WORD_CHAR})" if regex.match(WORD_CHAR, target) else ""
    after = rf"(?!{WORD_CHAR})" if regex.search(WORD_CHAR + "$", target) else ""
    return regex.compile(before + regex.escape(target) + after)


def _apply_one(text: str, edit: Edit) -> str:
    """``edit`` applied at every occurrence of its target. A removal between two spaces leaves
    one of them; the rest of the case keeps its spacing."""
    if edit.kind == "replace":
        return _occurrence(edit.target).sub(lambda _: edit.replacement, text)
    gap = regex.compile(r"([ \t]?)" + _occurrence(edit.target).pattern + r"([ \t]?)")
    return gap.sub(lambda m: m.group(1) if m.group(1) and m.group(2)
                   else m.group(1) + m.group(2), text)


@dataclass(frozen=True)
class Answered:
    text: str
    token_ids: tuple[int, ...]
    tokens: tuple[str, ...]

    def __post_init__(self) -> None:  # read back from files: checked like a record's answer
        if not self.token_ids:
            raise ValueError("an answer of a what-if has no tokens")
        if len(self.tokens) != len(self.token_ids):
            raise ValueError(f"an answer of a what-if has {len(self.token_ids)} ids and "
                             f"{len(self.tokens)} tokens")
        if any(i < 0 for i in self.token_ids):
            raise ValueError("an answer of a what-if holds a negative token id")
        if "".join(self.tokens) != self.text:
            raise ValueError("an answer of a what-if is not its tokens joined (the file was "
                             "altered, or made by TokenTrace before 2026-11-30: ask the what-if "
                             "again)")


@dataclass(frozen=True)
class WhatIf:
    """One what-if of an explained case: the edits, the new answer, and the original answer's
    log-probabilities before and after the edit."""

    versions: Versions
    model: ModelInfo
    original_case_sha256: str
    edits: tuple[Edit, ...]
    edited_case: str
    edited_prompt_ids: tuple[int, ...]
    original: Answered
    original_log_probs: tuple[float, ...]  # log p(y_t | x, y_<t), the original case
    shifted_log_probs: tuple[float, ...]  # log p(y_t | x', y_<t), the edited case
    still_greedy: bool  # every original token is still the most likely one after the edit
    answer: Answered  # the edited case's own (greedy) answer
    created_at: str = field(default_factory=lambda: datetime.now(UTC).isoformat())
    tokentrace_whatif: int = WHATIF_VERSION

    def __post_init__(self) -> None:
        t = len(self.original.token_ids)
        if not len(self.original_log_probs) == len(self.shifted_log_probs) == t:
            raise ValueError(f"the original answer has {t} tokens but "
                             f"{len(self.original_log_probs)} and {len(self.shifted_log_probs)} "
                             "log-probabilities")
        if not self.edits:
            raise ValueError("a what-if needs at least one edit")
        if any(not value <= 0 for value in (*self.original_log_probs, *self.shifted_log_probs)):
            raise ValueError("a what-if's log-probability is above 0 or not a number")
        if any(i < 0 for i in self.edited_prompt_ids):
            raise ValueError("a what-if's edited prompt holds a negative token id")

    @property
    def shift(self) -> float:
        """log p(original answer | edited case) - log p(it | original case), in nats: below 0,
        the edit makes the original answer less likely."""
        return sum(self.shifted_log_probs) - sum(self.original_log_probs)

    @property
    def answer_changed(self) -> bool:
        return self.answer.token_ids != self.original.token_ids

    def to_json(self) -> str:
        return json.dumps(to_plain(self), indent=1, ensure_ascii=False)

    def save(self, path: str | os.PathLike[str]) -> None:
        write_text_atomic(Path(path), self.to_json())

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> WhatIf:
        check_regular_file(Path(path), "what-if file", MAX_RECORD_BYTES)
        try:
            data = parse_json(Path(path).read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:  # UnicodeDecodeError is a ValueError
            raise InvalidInputError(f"{path} is not a what-if record ({exc})") from None
        if not isinstance(data, dict) or data.get("tokentrace_whatif") != WHATIF_VERSION:
            raise InvalidInputError(f"{path} is not a what-if record of format "
                                    f"{WHATIF_VERSION}")
        return from_plain(cls, data)


def what_if(model: Any, tokenizer: Any, record: Explanation, edits: Sequence[Edit], *,
            max_new_tokens: int | None = None, state: TaskState | None = None) -> WhatIf:
    """Answer ``record``'s case with ``edits`` applied, and measure how the original answer's
    probability shifts (module docstring). ``model`` must be the one that made ``record``."""
    state = state or TaskState()
    if not edits:
        raise InvalidInputError("give at least one edit (--replace, --remove, "
                                "--remove-sentence)")
    check_usable(record, model)
    edited = apply_edits(record.prompt.case_text, edits)
    prompt = record.prompt
    new = build_prompt(tokenizer, edited, system_prompt=prompt.system_prompt,
                       raw=prompt.format == "raw", state=state)
    answer = record.answer.token_ids
    budget = max_new_tokens or max(64, len(answer))
    context = record.model.context_length
    if context and len(new.token_ids) + max(budget, len(answer)) > context:
        raise ContextTooLongError(
            f"the edited case makes a prompt of {len(new.token_ids):,} tokens; with the answer "
            f"that is more than this model's context of {context:,} tokens")
    problem = problem_of(record, next(model.parameters()).device)
    greedy = torch.zeros(2, len(answer), dtype=torch.bool)
    logp = answer_log_probs(model, problem, [problem.prompt_ids.cpu(),
                                             torch.tensor(new.token_ids)],
                            state=SubTask(state, "whatif", 0, 2), greedy=greedy)
    if bool(torch.isnan(logp).any()) or bool((logp > 0).any()):
        raise ModelLoadError(BROKEN_MODEL)
    if bool(torch.isinf(logp[0]).any()):  # a forced answer the model rules out: no shift
        raise InvalidInputError("the model rules out the explained answer on the original case "
                                "(a token of probability 0): no shift can be measured")
    state.progressed("whatif", 1, 2)
    new_ids = generate_answer(model, tokenizer, list(new.token_ids), budget,
                              SubTask(state, "generate", 0, 1))
    if not new_ids:
        raise InvalidInputError("the model gave an empty answer to the edited case")
    text, tokens = answer_pieces(tokenizer, new_ids)
    state.progressed("whatif", 2, 2)
    return WhatIf(versions=record.versions, model=record.model,
                  original_case_sha256=prompt.case_sha256, edits=tuple(edits),
                  edited_case=edited, edited_prompt_ids=new.token_ids,
                  original=Answered(record.answer.text, answer, record.answer.tokens),
                  original_log_probs=tuple(logp[0].tolist()),
                  shifted_log_probs=tuple(logp[1].tolist()),
                  still_greedy=bool(greedy[1].all()),
                  answer=Answered(text, tuple(new_ids), tokens))


@dataclass(frozen=True)
class SentenceEffect:
    """What removing one sentence does to the original answer."""

    sentence: int  # from 0, in case order
    start: int  # character span in the case
    end: int
    fall: float  # log p(answer | case) - log p(answer | case without it), nats
    answer_changes: bool  # the greedy answer would differ without it
    first_change: int | None  # the first answer token that would differ
    field: str | None = None  # the clinical field this sentence is, for a case made of fields


def sensitivity(model: Any, record: Explanation, *, state: TaskState | None = None,
                batch_size: int | None = None) -> list[SentenceEffect]:
    """Every case sentence removed in turn, ranked by how much the original answer's
    probability falls (largest first). One batched pass, one forward per sentence."""
    from engine.claims import segment, without_sentences

    state = state or TaskState()
    check_usable(record, model)
    parts = segment(record)
    device = next(model.parameters()).device
    problem = problem_of(record, device)
    prompt = problem.prompt_ids.cpu()
    prompts = [prompt, *(without_sentences(prompt, parts.sentence_tokens, frozenset({s}))
                         for s in range(len(parts.sentences)))]
    greedy = torch.zeros(len(prompts), len(record.answer.token_ids), dtype=torch.bool)
    logp = answer_log_probs(model, problem, prompts, state=state, batch_size=batch_size,
                            greedy=greedy)
    full = float(logp[0].sum())
    # A case made of fields renders one field per line, so each field is one sentence.
    fields = {(start, end): name for name, start, end in record.prompt.fields}
    effects = []
    for index, (start, end) in enumerate(parts.sentences):
        same = greedy[index + 1]
        changed = [t for t, kept in enumerate(same.tolist()) if not kept]
        effects.append(SentenceEffect(index, start, end, full - float(logp[index + 1].sum()),
                                      bool(changed), changed[0] if changed else None,
                                      fields.get((start, end))))
    return sorted(effects, key=lambda e: -e.fall)
