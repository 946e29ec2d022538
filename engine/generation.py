"""Greedy generation with streamed tokens and cooperative cancellation.

A long prompt is read in chunks first (progress under the stage ``read``), and cancellation is
checked inside every decoder block, so a clinician can stop even while an 8,000-token note is
being read.
"""

from __future__ import annotations

from typing import Any

import torch

from engine.errors import BROKEN_MODEL, InvalidSettingsError, ModelLoadError
from engine.methods.base import cache_keyword, cancellable
from engine.prompting import stable_prefix
from engine.task import TaskState

# End-of-turn markers of common chat templates, used when present in the vocabulary.
_END_OF_TURN = ("<|im_end|>", "<|eot_id|>", "<|end|>", "<end_of_turn>", "<|endoftext|>")


def stop_token_ids(model: Any, tokenizer: Any) -> list[int]:
    ids: set[int] = set()
    for source in (getattr(model, "generation_config", None), model.config, tokenizer):
        value = getattr(source, "eos_token_id", None)
        if isinstance(value, int):
            ids.add(value)
        elif isinstance(value, (list, tuple)):
            ids.update(int(v) for v in value)
    vocab = tokenizer.get_vocab()
    ids.update(vocab[t] for t in _END_OF_TURN if t in vocab)
    return sorted(ids)


class _Streamer:
    """transformers streamer: the first ``put`` is the prompt, then one token at a time."""

    def __init__(self, tokenizer: Any, state: TaskState) -> None:
        self.tokenizer, self.state = tokenizer, state
        self.ids: list[int] = []
        self.text = ""
        self._prompt_seen = False

    def put(self, value: torch.Tensor) -> None:
        if not self._prompt_seen:
            self._prompt_seen = True
            return
        for token_id in value.reshape(-1).tolist():
            self.ids.append(int(token_id))
            # A character still missing bytes waits for the token that completes it.
            text = stable_prefix(self.tokenizer.decode(self.ids, skip_special_tokens=True))
            piece, self.text = text[len(self.text):], text
            self.state.token_generated(int(token_id), piece)

    def end(self) -> None:
        pass


PREFILL_CHUNK = 1024  # prompt tokens per pass when a long prompt is read before generating


def read_prompt(model: Any, inputs: torch.Tensor, state: TaskState) -> Any:
    """A key/value cache of a long prompt (all but its last token), read in chunks of
    ``PREFILL_CHUNK`` tokens with progress (stage ``read``); None for a short prompt, which
    ``generate`` reads in one pass. Cancellation is checked inside every block either way."""
    from transformers import DynamicCache

    length = inputs.shape[1]
    if length <= PREFILL_CHUNK:
        return None
    cache = DynamicCache(config=model.config)
    for start in range(0, length - 1, PREFILL_CHUNK):
        stop = min(length - 1, start + PREFILL_CHUNK)
        state.progressed("read", start, length)
        model(input_ids=inputs[:, start:stop], use_cache=True, logits_to_keep=1,
              **{cache_keyword(model): cache})
    state.progressed("read", length, length)
    return cache


def generate_answer(model: Any, tokenizer: Any, prompt_ids: list[int], max_new_tokens: int,
                    state: TaskState) -> list[int]:
    """Greedy answer ids for ``prompt_ids``, without the final end-of-turn token."""
    return generate_with_cache(model, tokenizer, prompt_ids, max_new_tokens, state)[0]


def generate_with_cache(model: Any, tokenizer: Any, prompt_ids: list[int], max_new_tokens: int,
                        state: TaskState) -> tuple[list[int], Any]:
    """Greedy answer ids (as :func:`generate_answer`) and the key/value cache generation left:
    every position of the prompt and of the answer but its last token, so that a method can
    read the prompt's keys and values instead of recomputing them."""
    from transformers import (
        LogitsProcessor,
        LogitsProcessorList,
        StoppingCriteria,
        StoppingCriteriaList,
    )

    if max_new_tokens < 1:
        raise InvalidSettingsError(f"max new tokens must be at least 1 (got {max_new_tokens})")

    class _Finite(LogitsProcessor):
        """Greedy decoding over NaN scores picks token 0 (often the end of text): a broken
        model would give an empty or garbage answer instead of saying it is broken."""

        def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
            if not bool(torch.isfinite(scores).any(-1).all()) or bool(scores.isnan().any()):
                raise ModelLoadError(BROKEN_MODEL)
            return scores

    class _Cancel(StoppingCriteria):
        def __call__(self, input_ids: torch.Tensor, scores: Any, **kwargs: Any) -> torch.Tensor:
            done = input_ids.shape[1] - len(prompt_ids)
            state.progressed("generate", done, max_new_tokens)
            return torch.full((input_ids.shape[0],), state.cancelled, dtype=torch.bool,
                              device=input_ids.device)

    stops = stop_token_ids(model, tokenizer)
    inputs = torch.tensor([prompt_ids], device=model.device)
    with torch.inference_mode(), cancellable(model, state):
        cache = read_prompt(model, inputs, state)
        state.progressed("generate", 0, max_new_tokens)
        # generate takes the cache under the same name as the forward does.
        prefilled = {} if cache is None else {cache_keyword(model): cache}
        output = model.generate(
            input_ids=inputs,
            **prefilled,
            attention_mask=torch.ones_like(inputs),
            max_new_tokens=max_new_tokens,
            do_sample=False,
            temperature=None,
            top_p=None,
            top_k=None,
            eos_token_id=stops,
            pad_token_id=tokenizer.pad_token_id if tokenizer.pad_token_id is not None else stops[0],
            streamer=_Streamer(tokenizer, state),
            stopping_criteria=StoppingCriteriaList([_Cancel()]),
            logits_processor=LogitsProcessorList([_Finite()]),
            return_dict_in_generate=True,
        )
    state.check()
    answer = output.sequences[0, len(prompt_ids):].tolist()
    while answer and answer[-1] in stops:
        answer.pop()
    return answer, output.past_key_values
