"""Integrated Gradients over the input embeddings, fused across answer tokens.

Numerically the same as Captum's
``LLMGradientAttribution(LayerIntegratedGradients(model, embedding_layer))``: attributable
prompt embeddings move on the straight line from the baseline embedding ``b`` to the real
embedding ``e``, and

    IG_t[i] = sum_j (e_ij - b_ij) * sum_k w_k dF_t/dx_ij (b + a_k (e - b))

with Gauss-Legendre points ``a_k`` and weights ``w_k`` taken from Captum. Captum runs, for every
answer token t, ``steps`` forwards and backwards over [x, y_<t]. Here, by causality, one forward
per interpolation point over [x, y_<T] yields every F_t at once (logits only at the T answer
positions); the sequence attribution is one backward of sum_t F_t per point, and the per-token
matrix reuses each forward for T backwards.

Cost: ``steps`` forwards plus ``steps`` backwards (sequence only) or ``steps * T`` backwards
(with the matrix), plus one forward for the two path endpoints.
"""

from __future__ import annotations

from typing import Any

import torch

from engine.methods.base import (
    AttributionInput,
    AttributionOutput,
    Cost,
    MethodSpec,
    Param,
    check_steps,
)
from engine.methods.paths import (
    accumulation_dtype,
    embed_problem,
    embedding_estimate,
    embedding_forward,
    endpoint_log_probs,
    gauss_legendre,
    integrate,
    relative_completeness_error,
)
from engine.task import TaskState


def integrated_gradients(
    model: Any,
    tokenizer: Any,
    problem: AttributionInput,
    *,
    steps: int = 32,
    baseline: str = "pad",
    matrix: bool = True,
    batch_size: int | None = None,
    state: TaskState | None = None,
) -> AttributionOutput:
    """Integrated Gradients of log p(y_t | x, y_<t) with respect to the prompt embeddings.

    Returns ``sequence`` [n] (the sum of the per-token rows, as Captum defines it), ``per_token``
    [T, n] (None when ``matrix`` is False; then ``sequence`` comes from one backward of
    sum_t F_t per point) and the relative completeness error of ``sequence``.
    """
    state = state or TaskState()
    check_steps(steps, batch_size)
    emb = embed_problem(model, tokenizer, problem, baseline)
    weights, alphas = gauss_legendre(steps)
    n, device, dtype = emb.n, emb.real.device, emb.real.dtype
    acc = accumulation_dtype(device)
    delta = emb.delta
    delta_n = delta[:n].to(acc)

    def points(start: int, stop: int) -> torch.Tensor:
        alpha = alphas[start:stop].to(device, dtype).view(-1, 1, 1)
        return emb.base + alpha * delta

    def reduce(grad: torch.Tensor, start: int, stop: int) -> torch.Tensor:
        # Contract with (e - b) now: keeps memory at [T, n] instead of [T, n, d].
        w = weights[start:stop].to(device, acc).view(-1, 1, 1)
        return ((grad[:, :n].to(acc) * w).sum(0) * delta_n).sum(-1)

    sums = integrate(embedding_forward(model, emb.answer_ids), points, reduce, steps,
                     n_answer=len(emb.answer_ids), width=n, matrix=matrix,
                     batch_size=batch_size, estimate=embedding_estimate(model, emb, steps),
                     state=state, model=model, what="Integrated Gradients")
    f_input, f_baseline = endpoint_log_probs(model, emb)
    sequence = sums.sum(0)
    error = relative_completeness_error(float(sequence.sum()), float((f_input - f_baseline).sum()))
    return AttributionOutput(sequence, sums if matrix else None, f_input, f_baseline, error)


def _cost(n: int, n_answer: int, params: dict[str, Any]) -> Cost:
    steps = int(params.get("steps", 32))
    backwards = steps * (n_answer if params.get("matrix", True) else 1)
    return Cost(forwards=steps + 1, backwards=backwards, tokens=n + n_answer - 1)


SPEC = MethodSpec(
    name="ig",
    description="Integrated Gradients on the input embeddings (Captum-exact, fused over the "
                "answer)",
    params=(
        Param("steps", 32, "Gauss-Legendre interpolation points"),
        Param("baseline", "pad", "pad (pad, else eos embedding), zero, or token:ID"),
        Param("matrix", True, "also compute the per-answer-token matrix"),
        Param("batch_size", None, "interpolation points per forward (None: fit to memory)"),
    ),
    cost_formula="(steps + 1) forwards; steps x T backwards (steps with --no-matrix); "
                 "over n + T - 1 tokens",
    cost=_cost,
    run=integrated_gradients,
)
