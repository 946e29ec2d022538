"""Feature ablation and Shapley sampling: Captum's LLMAttribution, through TokenTrace."""

from __future__ import annotations

import pytest
import torch
from captum.attr import FeatureAblation, LLMAttribution, ShapleyValueSampling
from tiny import CASE, relative_difference

from engine.errors import Cancelled, InvalidSettingsError
from engine.methods import AttributionInput
from engine.methods._perturbation import IdsTokenInput, feature_ablation, shapley
from engine.prompting import build_prompt
from engine.task import TaskState


def _problem(tokenizer) -> AttributionInput:
    prompt = build_prompt(tokenizer, CASE, system_prompt="you are clinical assistant")
    answer = tokenizer.encode("recommend surgery and endocrine therapy", add_special_tokens=False)
    return AttributionInput(torch.tensor(prompt.token_ids), torch.tensor(prompt.attributable),
                            torch.tensor(answer))


@pytest.mark.parametrize(("fused", "batch_size"), [(True, None), (True, 1), (True, 3),
                                                   (False, None)])
def test_feature_ablation_equals_captum(tiny_model, tiny_tokenizer, fused, batch_size):
    problem = _problem(tiny_tokenizer)
    forwards = []
    handle = tiny_model.register_forward_pre_hook(lambda module, args: forwards.append(1))
    try:
        ours = feature_ablation(tiny_model, tiny_tokenizer, problem, fused=fused,
                                batch_size=batch_size)
    finally:
        handle.remove()
    if batch_size == 3:  # the case tokens' perturbations go three to a forward
        n_case = int(problem.attributable.sum())
        assert len(forwards) == 1 + -(-n_case // 3) + 1  # plus the input, plus f_input
    inp = IdsTokenInput(problem.prompt_ids, problem.attributable, tiny_tokenizer,
                        tiny_tokenizer.pad_token_id)
    ref = LLMAttribution(FeatureAblation(tiny_model), tiny_tokenizer).attribute(
        inp, target=problem.answer_ids, forward_in_tokens=not fused)
    mask = problem.attributable
    assert relative_difference(ours.sequence[mask], ref.seq_attr.double()) < 1e-6
    assert relative_difference(ours.per_token[:, mask], ref.token_attr.double()) < 1e-6
    assert torch.all(ours.sequence[~mask] == 0)


@pytest.mark.parametrize("batch_size", [None, 1, 4])
def test_shapley_equals_captum_under_the_same_seed(tiny_model, tiny_tokenizer, batch_size):
    problem = _problem(tiny_tokenizer)
    ours = shapley(tiny_model, tiny_tokenizer, problem, samples=3, seed=7, batch_size=batch_size)
    inp = IdsTokenInput(problem.prompt_ids, problem.attributable, tiny_tokenizer,
                        tiny_tokenizer.pad_token_id)
    torch.manual_seed(7)
    ref = LLMAttribution(ShapleyValueSampling(tiny_model), tiny_tokenizer).attribute(
        inp, target=problem.answer_ids, forward_in_tokens=False, n_samples=3)
    assert relative_difference(ours.sequence[problem.attributable], ref.seq_attr.double()) < 1e-6


def test_perturbation_settings_and_cancel(tiny_model, tiny_tokenizer):
    problem = _problem(tiny_tokenizer)
    with pytest.raises(InvalidSettingsError, match="must be a token"):
        feature_ablation(tiny_model, tiny_tokenizer, problem, baseline="zero")
    with pytest.raises(InvalidSettingsError, match="batch size must be at least 1"):
        feature_ablation(tiny_model, tiny_tokenizer, problem, batch_size=0)
    state = TaskState()
    state.cancel()
    with pytest.raises(Cancelled):
        shapley(tiny_model, tiny_tokenizer, problem, state=state)
