"""Greedy generation: streaming, stop tokens, cancellation."""

from __future__ import annotations

import pytest
import torch
from tiny import CASE

from engine.errors import Cancelled, InvalidSettingsError
from engine.generation import generate_answer, stop_token_ids
from engine.prompting import build_prompt
from engine.task import TaskState


class _Stream(TaskState):
    def __init__(self, cancel_after: int | None = None) -> None:
        super().__init__()
        self.ids: list[int] = []
        self.cancel_after = cancel_after

    def token_generated(self, token_id: int, text: str) -> None:
        self.ids.append(token_id)
        if self.cancel_after is not None and len(self.ids) >= self.cancel_after:
            self.cancel()


def _prompt(tokenizer) -> list[int]:
    return list(build_prompt(tokenizer, CASE, system_prompt=None).token_ids)


def test_streams_every_token_and_is_greedy(tiny_model, tiny_tokenizer):
    prompt = _prompt(tiny_tokenizer)
    state = _Stream()
    answer = generate_answer(tiny_model, tiny_tokenizer, prompt, 6, state)
    assert state.ids[:len(answer)] == answer
    assert 1 <= len(answer) <= 6
    with torch.no_grad():  # greedy: each token is the argmax after the ones before it
        logits = tiny_model(torch.tensor([prompt + answer])).logits[0]
    first = len(prompt) - 1
    assert logits[first:first + len(answer)].argmax(-1).tolist() == answer


def test_stop_tokens_include_end_of_turn(tiny_model, tiny_tokenizer):
    stops = stop_token_ids(tiny_model, tiny_tokenizer)
    assert tiny_tokenizer.convert_tokens_to_ids("<|im_end|>") in stops
    assert tiny_tokenizer.eos_token_id in stops


def test_cancel_during_generation(tiny_model, tiny_tokenizer):
    state = _Stream(cancel_after=2)
    with pytest.raises(Cancelled):
        generate_answer(tiny_model, tiny_tokenizer, _prompt(tiny_tokenizer), 50, state)
    assert len(state.ids) <= 3


def test_max_new_tokens_must_be_positive(tiny_model, tiny_tokenizer):
    with pytest.raises(InvalidSettingsError, match="at least 1"):
        generate_answer(tiny_model, tiny_tokenizer, _prompt(tiny_tokenizer), 0, TaskState())


class _Progress(TaskState):
    def __init__(self, cancel_on_read: bool = False) -> None:
        super().__init__()
        self.events: list[tuple[str, int, int]] = []
        self.cancel_on_read = cancel_on_read

    def progressed(self, stage: str, done: int, total: int) -> None:
        self.events.append((stage, done, total))
        if self.cancel_on_read and stage == "read" and done > 0:
            self.cancel()


def test_a_long_prompt_is_read_in_chunks_with_the_same_answer(tiny_model, tiny_tokenizer,
                                                                monkeypatch):
    import engine.generation as generation
    from engine.generation import generate_with_cache

    prompt = _prompt(tiny_tokenizer)
    whole, _ = generate_with_cache(tiny_model, tiny_tokenizer, prompt, 6, _Progress())
    monkeypatch.setattr(generation, "PREFILL_CHUNK", 7)  # "long" for this prompt
    state = _Progress()
    chunked, cache = generate_with_cache(tiny_model, tiny_tokenizer, prompt, 6, state)
    assert chunked == whole
    reads = [done for stage, done, _ in state.events if stage == "read"]
    assert reads == [*range(0, len(prompt) - 1, 7), len(prompt)]
    assert cache.get_seq_length() >= len(prompt) + len(chunked) - 1
    with pytest.raises(Cancelled):  # cancelling while the case is read stops it there
        generate_with_cache(tiny_model, tiny_tokenizer, prompt, 6, _Progress(True))
