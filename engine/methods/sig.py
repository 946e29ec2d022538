"""Sequential Integrated Gradients (``sig``, Enguehard 2023).

For each attributable token i only row i moves, on the straight line from the baseline
embedding to its real embedding; every other row stays real:

    SIG_t[i] = sum_j (e_ij - b_j) * sum_k w_k dF_t/dx_ij (x with row i at b + a_k (e_i - b))

with Captum's Gauss-Legendre points. Per-token completeness holds:
sum_j SIG_t[i, j] = F_t(x) - F_t(x with row i at the baseline). The reported completeness error
is that identity's relative error over all case tokens (n_case extra forwards, no backward).

The n_case x steps paths are independent, so they are batched together, token and step alike;
each forward over [x, y_<T] serves every answer token.

Cost: n_case x steps + n_case + 1 forwards; n_case x steps x T backwards (n_case x steps with
``matrix`` off), over n + T - 1 tokens.
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
    answer_log_probs,
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
)
from engine.task import TaskState


def sequential_integrated_gradients(
    model: Any,
    tokenizer: Any,
    problem: AttributionInput,
    *,
    steps: int = 8,
    baseline: str = "pad",
    matrix: bool = True,
    batch_size: int | None = None,
    state: TaskState | None = None,
) -> AttributionOutput:
    """SIG of log p(y_t | x, y_<t) per attributable prompt token; see the module docstring."""
    state = state or TaskState()
    check_steps(steps, batch_size)
    emb = embed_problem(model, tokenizer, problem, baseline)
    weights, alphas = gauss_legendre(steps)
    n, device, dtype = emb.n, emb.real.device, emb.real.dtype
    acc = accumulation_dtype(device)
    positions = torch.nonzero(emb.moving, as_tuple=True)[0]  # the case tokens
    delta = emb.delta
    n_points = len(positions) * steps

    def split(start: int, stop: int) -> tuple[torch.Tensor, torch.Tensor]:
        index = torch.arange(start, stop, device=device)
        return positions[index // steps], index % steps  # token row, quadrature point

    def points(start: int, stop: int) -> torch.Tensor:
        rows, ks = split(start, stop)
        x = emb.real.expand(stop - start, -1, -1).clone()
        batch = torch.arange(stop - start, device=device)
        alpha = alphas.to(device, dtype)[ks].view(-1, 1)
        x[batch, rows] = emb.base[rows] + alpha * delta[rows]
        return x

    def reduce(grad: torch.Tensor, start: int, stop: int) -> torch.Tensor:
        rows, ks = split(start, stop)
        batch = torch.arange(stop - start, device=device)
        w = weights.to(device, acc)[ks]
        scores = (grad[batch, rows].to(acc) * delta[rows].to(acc)).sum(-1) * w
        return torch.zeros(n, dtype=acc, device=device).index_add_(0, rows, scores)

    n_answer = len(emb.answer_ids)
    sums = integrate(embedding_forward(model, emb.answer_ids), points, reduce, n_points,
                     n_answer=n_answer, width=n, matrix=matrix, batch_size=batch_size,
                     estimate=embedding_estimate(model, emb, n_points), state=state,
                     model=model, what="Sequential Integrated Gradients")
    f_input, f_baseline = endpoint_log_probs(model, emb)
    drops = _single_token_drops(model, emb, positions, f_input, batch_size)
    sequence = sums.sum(0)
    found = sequence[positions.cpu()]
    error = float((found - drops).abs().sum() / drops.abs().sum().clamp_min(1e-12))
    return AttributionOutput(sequence, sums if matrix else None, f_input, f_baseline, error)


def _single_token_drops(model: Any, emb: Any, positions: torch.Tensor, f_input: torch.Tensor,
                        batch_size: int | None) -> torch.Tensor:
    """sum_t [F_t(x) - F_t(x with row i at the baseline)] for each case token i."""
    size = batch_size or embedding_estimate(model, emb, len(positions))()
    drops = []
    with torch.no_grad():
        for chunk in positions.split(max(1, size)):
            x = emb.real.expand(len(chunk), -1, -1).clone()
            x[torch.arange(len(chunk), device=x.device), chunk] = emb.base[chunk]
            f = answer_log_probs(model, x, emb.answer_ids).double().cpu()
            drops.append(f_input.sum() - f.sum(-1))
    return torch.cat(drops)


def _cost(n: int, n_answer: int, params: dict[str, Any]) -> Cost:
    steps = int(params.get("steps", 8))
    backwards = n * steps * (n_answer if params.get("matrix", True) else 1)
    return Cost(forwards=n * steps + n + 1, backwards=backwards, tokens=n + n_answer - 1)


SPEC = MethodSpec(
    name="sig",
    description="Sequential Integrated Gradients: each case token moves alone from the baseline",
    params=(
        Param("steps", 8, "Gauss-Legendre points per token"),
        Param("baseline", "pad", "pad (pad, else eos embedding), zero, or token:ID"),
        Param("matrix", True, "also compute the per-answer-token matrix"),
        Param("batch_size", None, "paths per forward (None: fit to memory)"),
    ),
    cost_formula="n_case x steps + n_case + 1 forwards; n_case x steps x T backwards "
                 "(n_case x steps with --no-matrix); over n + T - 1 tokens",
    cost=_cost,
    run=sequential_integrated_gradients,
)
