"""Input x gradient (``input-x-gradient``) on the input embeddings, fused over the answer.

    IxG_t[i] = sum_j (e_ij - b_ij) dF_t/de_ij   at the real input e

With the ``zero`` baseline this is Captum's ``LayerGradientXActivation`` on the embedding layer
(e . grad); with ``pad`` (the default, as for IG) it is the first-order Taylor term of the move
from the baseline to the input, IG with a single point at the input. By causality one forward
over [x, y_<T] gives every F_t; the sequence is one backward of sum_t F_t, the matrix T
backwards of that same forward, and that forward's F is the record's log p of the answer.

Cost: 1 forward and 1 backward (T with the matrix).
"""

from __future__ import annotations

from typing import Any

import torch

from engine.methods._paths import (
    accumulation_dtype,
    embed_problem,
    embedding_estimate,
    embedding_forward,
    integrate,
)
from engine.methods.base import (
    AttributionInput,
    AttributionOutput,
    Cost,
    MethodSpec,
    Param,
    Size,
)
from engine.task import TaskState


def input_x_gradient(
    model: Any,
    tokenizer: Any,
    problem: AttributionInput,
    *,
    baseline: str = "pad",
    matrix: bool = False,
    state: TaskState | None = None,
) -> AttributionOutput:
    """(e - b) . dF/de at the input: ``sequence`` [n], ``per_token`` [T, n] or None."""
    state = state or TaskState()
    emb = embed_problem(model, tokenizer, problem, baseline)
    n = emb.n
    delta_n = emb.delta[:n].to(accumulation_dtype(emb.real.device))

    def points(start: int, stop: int) -> torch.Tensor:
        return emb.real.unsqueeze(0)

    forward = embedding_forward(model, emb.answer_ids)
    at_input: list[torch.Tensor] = []  # F [1, T] of the one forward (redone whole on OOM)

    def forward_kept(x: torch.Tensor) -> torch.Tensor:
        f = forward(x)
        at_input[:] = [f.detach()]
        return f

    def reduce(grad: torch.Tensor, start: int, stop: int) -> torch.Tensor:
        return (grad[0, :n].to(delta_n.dtype) * delta_n).sum(-1)

    sums = integrate(forward_kept, points, reduce, 1,
                     n_answer=len(emb.answer_ids), width=n, matrix=matrix, batch_size=1,
                     estimate=embedding_estimate(model, emb, 1), state=state, model=model,
                     what="input x gradient")
    return AttributionOutput(sums.sum(0), sums if matrix else None, at_input[0][0].double().cpu())


def _cost(size: Size, params: dict[str, Any]) -> Cost:
    backwards = size.answer if params.get("matrix", False) else 1
    return Cost(forwards=1, backwards=backwards, tokens=size.prompt + size.answer - 1)


SPEC = MethodSpec(
    name="input-x-gradient",
    description="Input x gradient on the embeddings, (e - b) . gradient: one forward and "
                "one backward (with baseline=zero, Captum's LayerGradientXActivation)",
    params=(
        Param("baseline", "pad", "pad (pad, else eos embedding), zero, or token:ID"),
        Param("matrix", False, "also compute the per-answer-token matrix"),
    ),
    cost_formula="1 forward and 1 backward (T with the matrix) over n + T - 1 tokens",
    cost=_cost,
    run=input_x_gradient,
)
