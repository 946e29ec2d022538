"""Perturbation attribution (``feature-ablation``, ``shapley``): Captum's own LLMAttribution
with FeatureAblation or ShapleyValueSampling over token features, not rewritten.

TokenTrace only supplies the ids it explains (chat template included, template tokens fixed),
progress, cancellation and the fused forward: with ``fused`` (the default) each perturbation is
one forward over [x, y] that scores every answer token at once (Captum's
``forward_in_tokens=False``); without it Captum decodes the answer token by token with its KV
cache, as generation does.

Cost: feature-ablation n_case + 1 perturbations; shapley about samples x (n_case + 1); each a
forward over n + T tokens (fused) or T cached decoding steps.
"""

from __future__ import annotations

from typing import Any

import torch
from captum.attr import FeatureAblation, LLMAttribution, ShapleyValueSampling, TextTokenInput

from engine.errors import InvalidSettingsError
from engine.methods.base import (
    AttributionInput,
    AttributionOutput,
    Cost,
    MethodSpec,
    Param,
    answer_log_probs,
    cancellable,
    parse_baseline,
)
from engine.task import TaskState


class IdsTokenInput(TextTokenInput):
    """A ``TextTokenInput`` over given ids: positions where ``attributable`` is False are fixed.

    Captum's class tokenizes text itself; TokenTrace explains exact ids (with the chat
    template), so the ids and the mask are set directly.
    """

    def __init__(self, prompt_ids: torch.Tensor, attributable: torch.Tensor, tokenizer: Any,
                 baseline_id: int) -> None:
        self.inp_tensor = prompt_ids.detach().cpu().view(1, -1)
        self.itp_mask = attributable.detach().cpu().view(1, -1).bool()
        self.itp_tensor = self.inp_tensor[self.itp_mask].unsqueeze(0)
        self.tokenizer = tokenizer
        self.values = tokenizer.convert_ids_to_tokens(self.itp_tensor[0].tolist())
        self.n_itp_features = len(self.values)
        self.baselines = int(baseline_id)
        self.skip_tokens = None


def _perturbation(kind: str, model: Any, tokenizer: Any, problem: AttributionInput, *,
                  baseline: str = "pad", samples: int = 25, fused: bool = True, seed: int = 0,
                  state: TaskState | None = None, **_unused: Any) -> AttributionOutput:
    state = state or TaskState()
    if samples < 1:
        raise InvalidSettingsError(f"samples must be at least 1 (got {samples})")
    embedding = model.get_input_embeddings()
    baseline_id = parse_baseline(baseline, tokenizer, embedding.num_embeddings)
    if baseline_id is None:
        raise InvalidSettingsError(f"{kind} replaces tokens, so its baseline must be a token "
                                   "(pad or token:ID), not zero")
    n_case = int(problem.attributable.sum())
    evaluations = n_case + 1 if kind == "feature-ablation" else samples * n_case + 1
    total = evaluations * (1 if fused else len(problem.answer_ids))
    calls = 0

    def count(module: Any, args: Any) -> None:
        nonlocal calls
        calls += 1
        state.progressed("attribute", min(calls, total), total)

    method = FeatureAblation(model) if kind == "feature-ablation" else \
        ShapleyValueSampling(model)
    llm_attr = LLMAttribution(method, tokenizer)
    inp = IdsTokenInput(problem.prompt_ids, problem.attributable, tokenizer, baseline_id)
    options: dict[str, Any] = {} if kind == "feature-ablation" else {"n_samples": samples}
    handle = model.register_forward_pre_hook(count)
    torch.manual_seed(seed)
    try:
        with cancellable(model, state), torch.no_grad():
            result = llm_attr.attribute(inp, target=problem.answer_ids.detach().cpu(),
                                        forward_in_tokens=not fused, **options)
            f_input = answer_log_probs(
                model, embedding(torch.cat([problem.prompt_ids, problem.answer_ids[:-1]]))[None],
                problem.answer_ids)[0]
    finally:
        handle.remove()
    mask = problem.attributable.detach().cpu().bool()
    n = len(problem.prompt_ids)
    sequence = torch.zeros(n, dtype=torch.float64)
    sequence[mask] = result.seq_attr.detach().cpu().double()
    per_token = torch.zeros(len(problem.answer_ids), n, dtype=torch.float64)
    per_token[:, mask] = result.token_attr.detach().cpu().double()
    return AttributionOutput(sequence, per_token, f_input.detach().double().cpu())


def feature_ablation(model: Any, tokenizer: Any, problem: AttributionInput,
                     **kwargs: Any) -> AttributionOutput:
    """Captum FeatureAblation: each case token replaced by the baseline token, one at a time."""
    return _perturbation("feature-ablation", model, tokenizer, problem, **kwargs)


def shapley(model: Any, tokenizer: Any, problem: AttributionInput,
            **kwargs: Any) -> AttributionOutput:
    """Captum ShapleyValueSampling over case tokens (``samples`` random permutations)."""
    return _perturbation("shapley", model, tokenizer, problem, **kwargs)


def _cost_ablation(n: int, n_answer: int, params: dict[str, Any]) -> Cost:
    return Cost(forwards=n + 1, backwards=0, tokens=n + n_answer)


def _cost_shapley(n: int, n_answer: int, params: dict[str, Any]) -> Cost:
    return Cost(forwards=int(params.get("samples", 25)) * n + 1, backwards=0, tokens=n + n_answer)


_COMMON = (Param("baseline", "pad", "token that replaces a removed case token: pad or token:ID"),
           Param("fused", True, "one forward per perturbation scores every answer token"))
ABLATION_SPEC = MethodSpec(
    name="feature-ablation",
    description="Captum FeatureAblation: drop of log p when each case token is replaced",
    params=_COMMON, cost_formula="n_case + 1 forwards over n + T tokens",
    cost=_cost_ablation, run=feature_ablation)
SHAPLEY_SPEC = MethodSpec(
    name="shapley",
    description="Captum ShapleyValueSampling over case tokens (sampled permutations)",
    params=(*_COMMON, Param("samples", 25, "random permutations")),
    cost_formula="samples x n_case + 1 forwards over n + T tokens",
    cost=_cost_shapley, run=shapley)
