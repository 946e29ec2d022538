"""The peer we compare against: Captum's own LLM attribution, called the documented way.

Used by the benchmarks (speed) and by the tests (equality). Captum's ``TextTokenInput`` tokenizes
text itself; to explain exactly the ids TokenTrace explains (chat template included, template
tokens not attributable) we give it those ids and the attributable mask directly.
"""

from __future__ import annotations

from typing import Any

import torch
from captum.attr import LayerIntegratedGradients, LLMGradientAttribution

from engine.methods._perturbation import IdsTokenInput


def captum_ig(model: Any, tokenizer: Any, prompt_ids: torch.Tensor, attributable: torch.Tensor,
              answer_ids: torch.Tensor, baseline_id: int, steps: int,
              internal_batch_size: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Captum's ``LLMGradientAttribution(LayerIntegratedGradients)``: (sequence [n], matrix [T, n]).

    Captum returns scores for attributable tokens only; they are scattered back to all ``n``
    prompt positions (0 elsewhere) so they line up with TokenTrace's record.
    """
    lig = LayerIntegratedGradients(model, model.get_input_embeddings())
    llm_attr = LLMGradientAttribution(lig, tokenizer)
    inp = IdsTokenInput(prompt_ids, attributable, tokenizer, baseline_id)
    result = llm_attr.attribute(inp, target=answer_ids.detach().cpu(), n_steps=steps,
                                internal_batch_size=internal_batch_size)
    return _scattered(result, attributable, len(answer_ids))


def _scattered(result: Any, attributable: torch.Tensor, n_answer: int
               ) -> tuple[torch.Tensor, torch.Tensor]:
    """Captum's scores of the attributable tokens at their places among all prompt tokens."""
    mask = attributable.detach().cpu().bool()
    matrix = torch.zeros(n_answer, len(mask), dtype=torch.float64)
    matrix[:, mask] = result.token_attr.detach().cpu().double()
    sequence = torch.zeros(len(mask), dtype=torch.float64)
    sequence[mask] = result.seq_attr.detach().cpu().double()
    return sequence, matrix


def captum_input_x_gradient(model: Any, tokenizer: Any, prompt_ids: torch.Tensor,
                            attributable: torch.Tensor, answer_ids: torch.Tensor,
                            baseline_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Captum's ``LLMGradientAttribution(LayerGradientXActivation)`` on the embedding layer:
    (sequence [n], matrix [T, n]), scattered back to all prompt positions as ``captum_ig``."""
    from captum.attr import LayerGradientXActivation

    method = LayerGradientXActivation(model, model.get_input_embeddings())
    llm_attr = LLMGradientAttribution(method, tokenizer)
    inp = IdsTokenInput(prompt_ids, attributable, tokenizer, baseline_id)
    result = llm_attr.attribute(inp, target=answer_ids.detach().cpu())
    return _scattered(result, attributable, len(answer_ids))
