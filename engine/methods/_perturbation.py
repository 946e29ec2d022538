"""Perturbation attribution (``feature-ablation``, ``shapley``): Captum's own LLMAttribution
with FeatureAblation or ShapleyValueSampling over token features, not rewritten.

TokenTrace only supplies the ids it explains (chat template included, template tokens fixed),
progress, cancellation and the fused, batched forward: with ``fused`` (the default) each
perturbation is one sequence [x, y] that scores every answer token at once (what Captum's
``forward_in_tokens=False`` computes), and ``batch_size`` perturbations share one forward
(Captum's ``perturbations_per_eval``; Captum's LLM wrapper runs one at a time). Without
``fused`` Captum's LLMAttribution decodes the answer token by token with its KV cache, as
generation does. Tests: equal to Captum's LLMAttribution on both paths.

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
    Param,
    answer_log_probs,
    auto_batch_size,
    cancellable,
    is_out_of_memory,
    out_of_memory_error,
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
                  batch_size: int | None = None, state: TaskState | None = None
                  ) -> AttributionOutput:
    state = state or TaskState()
    if samples < 1:
        raise InvalidSettingsError(f"samples must be at least 1 (got {samples})")
    if batch_size is not None and batch_size < 1:
        raise InvalidSettingsError(f"batch size must be at least 1 (got {batch_size})")
    embedding = model.get_input_embeddings()
    baseline_id = parse_baseline(baseline, tokenizer, embedding.num_embeddings)
    if baseline_id is None:
        raise InvalidSettingsError(f"{kind} replaces tokens, so its baseline must be a token "
                                   "(pad or token:ID), not zero")
    n_case = int(problem.attributable.sum())
    evaluations = n_case + 1 if kind == "feature-ablation" else samples * n_case + 1
    method_class = FeatureAblation if kind == "feature-ablation" else ShapleyValueSampling
    options: dict[str, Any] = {} if kind == "feature-ablation" else {"n_samples": samples}
    with cancellable(model, state), torch.no_grad():
        if fused:
            scores = _fused(method_class, model, problem, baseline_id, evaluations, batch_size,
                            seed, options, state)
        else:
            scores = _token_by_token(method_class, model, tokenizer, problem, baseline_id,
                                     evaluations, seed, options, state)
        f_input = answer_log_probs(
            model, embedding(torch.cat([problem.prompt_ids, problem.answer_ids[:-1]]))[None],
            problem.answer_ids)[0]
    mask = problem.attributable.detach().cpu().bool()
    n = len(problem.prompt_ids)
    sequence = torch.zeros(n, dtype=torch.float64)
    sequence[mask] = scores[0]
    per_token = torch.zeros(len(problem.answer_ids), n, dtype=torch.float64)
    per_token[:, mask] = scores[1:]
    return AttributionOutput(sequence, per_token, f_input.detach().double().cpu())


def _fused(method_class: type, model: Any, problem: AttributionInput, baseline_id: int,
           evaluations: int, batch_size: int | None, seed: int, options: dict[str, Any],
           state: TaskState) -> torch.Tensor:
    """[1 + T, n_case]: Captum's attribution of (sum_t F_t, F_1 ... F_T), perturbations batched.

    The interpretable input is one flag per case token (1 kept, 0 replaced by the baseline
    token), as in Captum's LLMAttribution; the forward maps a batch of flag rows to
    [B, 1 + T] log-probabilities.
    """
    prompt, answer = problem.prompt_ids, problem.answer_ids
    positions = torch.nonzero(problem.attributable, as_tuple=True)[0]
    context = torch.cat([prompt, answer[:-1]])
    embedding = model.get_input_embeddings()
    done = 0

    def forward(flags: torch.Tensor) -> torch.Tensor:
        nonlocal done
        ids = context.expand(len(flags), -1).clone()
        case = ids[:, positions]
        ids[:, positions] = torch.where(flags.to(ids.device).bool(), case, baseline_id)
        f = answer_log_probs(model, embedding(ids), answer)  # [B, T]
        done += len(flags)
        state.progressed("attribute", min(done, evaluations), evaluations)
        return torch.cat([f.sum(1, keepdim=True), f], dim=1)

    flags = torch.ones(1, len(positions), device=prompt.device)
    size = batch_size or auto_batch_size(model, len(context), len(answer), evaluations)
    while True:
        done = 0
        torch.manual_seed(seed)
        try:
            found = method_class(forward).attribute(flags, baselines=0.0,
                                                    perturbations_per_eval=size, **options)
            return found.reshape(1 + len(answer), len(positions)).detach().double().cpu()
        except (RuntimeError, torch.OutOfMemoryError) as exc:
            if not is_out_of_memory(exc):
                raise
            if batch_size is not None or size == 1:
                raise out_of_memory_error("perturbation forwards", size) from None
            size = max(1, size // 2)
            if torch.cuda.is_available():
                torch.cuda.empty_cache()


def _token_by_token(method_class: type, model: Any, tokenizer: Any, problem: AttributionInput,
                    baseline_id: int, evaluations: int, seed: int, options: dict[str, Any],
                    state: TaskState) -> torch.Tensor:
    """The same through Captum's LLMAttribution, decoding the answer with its KV cache."""
    total = evaluations * len(problem.answer_ids)
    calls = 0

    def count(module: Any, args: Any) -> None:
        nonlocal calls
        calls += 1
        state.progressed("attribute", min(calls, total), total)

    llm_attr = LLMAttribution(method_class(model), tokenizer)
    inp = IdsTokenInput(problem.prompt_ids, problem.attributable, tokenizer, baseline_id)
    handle = model.register_forward_pre_hook(count)
    torch.manual_seed(seed)
    try:
        result = llm_attr.attribute(inp, target=problem.answer_ids.detach().cpu(),
                                    forward_in_tokens=True, **options)
    finally:
        handle.remove()
    return torch.cat([result.seq_attr[None], result.token_attr]).detach().double().cpu()


def feature_ablation(model: Any, tokenizer: Any, problem: AttributionInput,
                     **kwargs: Any) -> AttributionOutput:
    """Captum FeatureAblation: each case token replaced by the baseline token, one at a time."""
    return _perturbation("feature-ablation", model, tokenizer, problem, **kwargs)


def shapley(model: Any, tokenizer: Any, problem: AttributionInput,
            **kwargs: Any) -> AttributionOutput:
    """Captum ShapleyValueSampling over case tokens (``samples`` random permutations)."""
    return _perturbation("shapley", model, tokenizer, problem, **kwargs)


COMMON = (Param("baseline", "pad", "token that replaces a removed case token: pad or token:ID"),
          Param("fused", True, "one sequence per perturbation scores every answer token"),
          Param("batch_size", None, "perturbations per forward, fused only (None: fit to "
                                     "memory)"))
