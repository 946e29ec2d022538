"""Single-pass methods: FlashTrace / IFR against the ``flashtrace`` package, input x gradient
against Captum, on tiny real Llama and Qwen2 models for the same ids."""

from __future__ import annotations

import pytest
import torch
from flashtrace import FlashTrace
from tiny import CASE, make_tiny_model, relative_difference

from benchmarks.peers import captum_input_x_gradient
from engine.errors import Cancelled, InvalidSettingsError
from engine.generation import generate_with_cache
from engine.methods import METHODS, AttributionInput
from engine.methods._information_flow import _forward, information_flow, is_stop_token
from engine.methods.base import answer_log_probs
from engine.methods.input_x_gradient import input_x_gradient
from engine.prompting import build_prompt
from engine.task import TaskState

# Stop tokens ("," and ".") in the case and the answer exercise FlashTrace's filtering.
ANSWER = "recommend surgery , and endocrine therapy ."


@pytest.fixture(params=["llama", "qwen2"])
def float32_model(request, tiny_tokenizer):
    # float32 as the package runs; it computes values in the model's dtype.
    return make_tiny_model(request.param, len(tiny_tokenizer), torch.float32)


def _raw_problem(tokenizer, answer: str = ANSWER, eos: bool = False) -> AttributionInput:
    ids = tokenizer.encode(CASE, add_special_tokens=False)
    answer_ids = tokenizer.encode(answer, add_special_tokens=False)
    answer_ids += [tokenizer.eos_token_id] if eos else []
    return AttributionInput(torch.tensor(ids), torch.ones(len(ids), dtype=torch.bool),
                            torch.tensor(answer_ids))


def _package(model, tokenizer, **trace):
    model.set_attn_implementation("eager")  # the package reads the model's attention maps
    try:
        return torch.tensor(FlashTrace(model, tokenizer).trace(prompt=CASE, target=ANSWER,
                                                               **trace).scores)
    finally:
        model.set_attn_implementation("sdpa")


@pytest.mark.parametrize("hops", [0, 1, 2])
def test_flashtrace_equals_the_package(float32_model, tiny_tokenizer, hops):
    reference = _package(float32_model, tiny_tokenizer, hops=hops)
    ours = information_flow(float32_model, tiny_tokenizer, _raw_problem(tiny_tokenizer),
                            hops=hops, stop_tokens=True)
    assert ours.sequence.shape == reference.shape
    assert reference.abs().max() > 1e-3
    # float32 in both, the same sums in another order: 1.4e-5 apart on an AVX-512 CPU, within
    # 1e-5 on others (and a wrong score is off by far more: see the hops test below).
    assert relative_difference(ours.sequence, reference.double()) < 5e-5
    # Stop tokens of the case get no score, as in the package.
    pieces = [tiny_tokenizer.decode([i]) for i in tiny_tokenizer.encode(CASE)]
    stops = torch.tensor([is_stop_token(p) for p in pieces])
    assert stops.any() and not ours.sequence[stops].any()


@pytest.mark.parametrize("hops", [0, 1])
def test_flashtrace_equals_the_package_on_a_chat_prompt(float32_model, tiny_tokenizer, hops):
    # As the window and the command line run it: the case inside the chat template, whose
    # system turn holds stop tokens (the embedded model's template has blank lines). The
    # package is given the same ids as text and filters them too, so the case's shares match.
    prompt = build_prompt(tiny_tokenizer, CASE, system_prompt="you are clinical assistant , read .")
    problem = AttributionInput(torch.tensor(prompt.token_ids), torch.tensor(prompt.attributable),
                               torch.tensor(tiny_tokenizer.encode(ANSWER,
                                                                  add_special_tokens=False)))
    template_stops = [i for i, (t, a) in enumerate(zip(prompt.token_ids, prompt.attributable,
                                                       strict=True))
                      if not a and is_stop_token(tiny_tokenizer.decode([t]))]
    assert template_stops  # the case this test is about
    float32_model.set_attn_implementation("eager")
    try:
        reference = torch.tensor(FlashTrace(float32_model, tiny_tokenizer).trace(
            prompt=prompt.text, target=ANSWER, hops=hops).scores).double()
    finally:
        float32_model.set_attn_implementation("sdpa")
    ours = information_flow(float32_model, tiny_tokenizer, problem, hops=hops, stop_tokens=True)
    # float32 in both, summed in another order over a longer prompt (about 1e-5); keeping the
    # template's stop tokens instead moves every share by about 3% on the embedded model.
    assert relative_difference(ours.sequence, reference) < 5e-5
    assert not ours.sequence[template_stops].any()


def test_hops_change_the_scores(float32_model, tiny_tokenizer):
    problem = _raw_problem(tiny_tokenizer)
    plain = information_flow(float32_model, tiny_tokenizer, problem, hops=0).sequence
    hopped = information_flow(float32_model, tiny_tokenizer, problem, hops=1).sequence
    assert (hopped - plain).abs().max() > 1e-4
    assert torch.all(hopped >= plain - 1e-12)  # a hop only adds flow through the answer


def test_ifr_equals_the_package_single_span(float32_model, tiny_tokenizer):
    # The package appends the end-of-sequence token to a forced answer and keeps it in the span.
    reference = _package(float32_model, tiny_tokenizer, method="ifr-span")
    spec = METHODS["ifr"]
    ours = spec.run(float32_model, tiny_tokenizer, _raw_problem(tiny_tokenizer, eos=True),
                    **spec.defaults())
    assert relative_difference(ours.sequence, reference.double()) < 1e-5


def test_matrix_rows_are_single_sinks_and_equal_the_package(float32_model, tiny_tokenizer):
    problem = _raw_problem(tiny_tokenizer, eos=True)
    full = information_flow(float32_model, tiny_tokenizer, problem, hops=0, stop_tokens=False,
                            matrix=True)
    assert full.per_token.shape == (len(problem.answer_ids), len(problem.prompt_ids))
    for row in (0, 3, len(problem.answer_ids) - 1):
        alone = information_flow(float32_model, tiny_tokenizer, problem, hops=0,
                                 stop_tokens=False, span=f"{row}:{row}").sequence
        assert relative_difference(full.per_token[row], alone) < 1e-5
        reference = _package(float32_model, tiny_tokenizer, method="ifr-matrix",
                             output_span=(row, row))
        # float32 in both; the package sums the distance in another order (about 1e-5).
        assert relative_difference(full.per_token[row], reference.double()) < 5e-5


def test_sink_rows_are_the_models_own_attention(tiny_model, tiny_tokenizer):
    problem = _raw_problem(tiny_tokenizer)
    ids = torch.cat([problem.prompt_ids, problem.answer_ids]).unsqueeze(0)
    rows = torch.tensor([3, 10, ids.shape[1] - 1])
    captured = {}
    with torch.no_grad():
        _forward(tiny_model, ids[0], rows, len(problem.prompt_ids), None,
                 lambda i, b: captured.update({i: b}))
    tiny_model.set_attn_implementation("eager")
    try:
        with torch.no_grad():
            maps = tiny_model(input_ids=ids, output_attentions=True).attentions
    finally:
        tiny_model.set_attn_implementation("sdpa")
    assert sorted(captured) == list(range(len(maps)))
    for index, block in captured.items():
        torch.testing.assert_close(block.probs.double(), maps[index][0][:, rows].double(),
                                   rtol=1e-5, atol=1e-6)


def test_predicting_sink_and_log_probs(tiny_model, tiny_tokenizer):
    prompt = build_prompt(tiny_tokenizer, CASE, system_prompt="you are clinical assistant")
    answer = tiny_tokenizer.encode("recommend surgery and endocrine therapy",
                                   add_special_tokens=False)
    problem = AttributionInput(torch.tensor(prompt.token_ids), torch.tensor(prompt.attributable),
                               torch.tensor(answer))
    on_answer = information_flow(tiny_model, tiny_tokenizer, problem)
    predicting = information_flow(tiny_model, tiny_tokenizer, problem, sink="predicting")
    assert (on_answer.sequence - predicting.sequence).abs().max() > 1e-4
    with torch.no_grad():
        ids = torch.tensor([*prompt.token_ids, *answer]).unsqueeze(0)
        logits = tiny_model(input_ids=ids).logits[0].double()
    n = len(prompt.token_ids)
    expected = torch.log_softmax(logits[n - 1:-1], -1).gather(-1, torch.tensor(answer)[:, None])
    torch.testing.assert_close(on_answer.f_input, expected.squeeze(-1), rtol=1e-6, atol=1e-8)
    assert torch.all(on_answer.sequence >= 0) and on_answer.sequence.max() > 0


def test_bad_settings_and_cancellation(tiny_model, tiny_tokenizer):
    problem = _raw_problem(tiny_tokenizer)
    for options, message in (({"span": "5:2"}, "span '5:2'"), ({"span": "0:99"}, "END <"),
                             ({"sink": "middle"}, "unknown sink"), ({"hops": -1}, "hops")):
        with pytest.raises(InvalidSettingsError, match=message):
            information_flow(tiny_model, tiny_tokenizer, problem, **options)
    cancelled = TaskState()
    cancelled.cancel()
    with pytest.raises(Cancelled):
        information_flow(tiny_model, tiny_tokenizer, problem, state=cancelled)


@pytest.mark.parametrize("matrix", [False, True])
def test_input_x_gradient_equals_captum(tiny_model, tiny_tokenizer, matrix):
    prompt = build_prompt(tiny_tokenizer, CASE, system_prompt="you are clinical assistant")
    answer = tiny_tokenizer.encode("recommend surgery and endocrine therapy",
                                   add_special_tokens=False)
    problem = AttributionInput(torch.tensor(prompt.token_ids), torch.tensor(prompt.attributable),
                               torch.tensor(answer))
    ours = input_x_gradient(tiny_model, tiny_tokenizer, problem, baseline="zero", matrix=matrix)
    sequence, per_token = captum_input_x_gradient(
        tiny_model, tiny_tokenizer, problem.prompt_ids, problem.attributable, problem.answer_ids,
        tiny_tokenizer.pad_token_id)
    assert sequence.abs().max() > 1e-3
    assert relative_difference(ours.sequence, sequence) < 1e-6
    if matrix:
        assert relative_difference(ours.per_token, per_token) < 1e-6
    else:
        assert ours.per_token is None
    # With a token baseline only attributable tokens move, so the template gets exactly zero.
    moved = input_x_gradient(tiny_model, tiny_tokenizer, problem, baseline="token:7")
    assert not moved.sequence[~problem.attributable].any()
    assert (moved.sequence - ours.sequence).abs().max() > 1e-6
    # The record's log p of the answer comes from the gradient's own forward, and is the same
    # as a separate forward without gradients.
    ids = torch.cat([problem.prompt_ids, problem.answer_ids[:-1]])
    with torch.no_grad():
        expected = answer_log_probs(tiny_model, tiny_model.get_input_embeddings()(ids)[None],
                                    problem.answer_ids)[0].double()
    assert expected.abs().min() > 1e-3
    torch.testing.assert_close(ours.f_input, expected, rtol=1e-6, atol=1e-8)


@pytest.mark.parametrize("sink", ["answer", "predicting"])
def test_generations_cache_gives_the_same_flow_without_recomputing_the_prompt(
        tiny_model, tiny_tokenizer, sink):
    prompt = build_prompt(tiny_tokenizer, CASE, system_prompt="you are clinical assistant")
    answer, cache = generate_with_cache(tiny_model, tiny_tokenizer, list(prompt.token_ids), 6,
                                        TaskState())
    assert len(answer) >= 3 and cache.get_seq_length() >= len(prompt.token_ids)
    plain = AttributionInput(torch.tensor(prompt.token_ids), torch.tensor(prompt.attributable),
                             torch.tensor(answer))
    cached = AttributionInput(plain.prompt_ids, plain.attributable, plain.answer_ids,
                              prompt_cache=cache)
    tokens: list[int] = []
    handle = tiny_model.register_forward_pre_hook(
        lambda module, args, kwargs: tokens.append(kwargs["input_ids"].shape[1]),
        with_kwargs=True)
    try:
        fresh = information_flow(tiny_model, tiny_tokenizer, plain, sink=sink, matrix=True)
        reused = information_flow(tiny_model, tiny_tokenizer, cached, sink=sink, matrix=True)
    finally:
        handle.remove()
    n = len(prompt.token_ids)
    assert tokens == [n + len(answer), len(answer) + 1]  # the prompt is not run again
    assert relative_difference(reused.sequence, fresh.sequence) < 1e-6
    assert relative_difference(reused.per_token, fresh.per_token) < 1e-6
    torch.testing.assert_close(reused.f_input, fresh.f_input, rtol=1e-6, atol=1e-8)


def test_content_normalisation_shares_each_block_over_case_and_answer(tiny_model,
                                                                       tiny_tokenizer):
    problem = _raw_problem(tiny_tokenizer)
    # The first answer token's predicting position sees only the case: every block's shares
    # over the case then add up to 1, so the scores add up to the number of blocks.
    out = information_flow(tiny_model, tiny_tokenizer, problem, hops=0, stop_tokens=False,
                           sink="predicting", span="0:0", normalise="content", matrix=True)
    blocks = tiny_model.config.num_hidden_layers
    assert float(out.sequence.sum()) == pytest.approx(blocks, rel=1e-5)
    assert float(out.per_token[0].sum()) == pytest.approx(blocks, rel=1e-5)
    package = information_flow(tiny_model, tiny_tokenizer, problem, hops=0, stop_tokens=False,
                               sink="predicting", span="0:0")
    assert float(package.sequence.sum()) < blocks  # the residual stream keeps a share
    with pytest.raises(InvalidSettingsError, match="unknown normalise"):
        information_flow(tiny_model, tiny_tokenizer, problem, normalise="layer")
