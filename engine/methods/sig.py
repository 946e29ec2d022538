"""Sequential Integrated Gradients (``sig``, Enguehard 2023).

For each attributable token i only row i moves, on the straight line from the baseline
embedding to its real embedding; every other row stays real:

    SIG_t[i] = sum_j (e_ij - b_j) * sum_k w_k dF_t/dx_ij (x with row i at b + a_k (e_i - b))

with Captum's Gauss-Legendre points (an explicit ``steps``). Per-token completeness holds:
sum_j SIG_t[i, j] = F_t(x) - F_t(x with row i at the baseline). The reported completeness error
is that identity's relative error over all case tokens (n_case extra forwards, no backward).

By default (``steps=None``) each token's path is refined by the nested adaptive Simpson rule
of converged IG until that identity's error is at most ``target_error`` (5%), within
``max_steps`` (16) points per token on average: the first grid is 9 points per token, and the
intervals with the largest exact local error, over all tokens, are split first. A path's ends
give the token's drop, so the check costs no extra forward.

The n_case x steps paths are independent, so they are batched together, token and step alike;
each forward over [x, y_<T] serves every answer token.

Cost: n_case x steps + n_case + 1 forwards; n_case x steps x T backwards (n_case x steps with
``matrix`` off), over n + T - 1 tokens.
"""

from __future__ import annotations

from typing import Any

import torch

from engine.methods._paths import (
    INITIAL_INTERVALS,
    NestedSimpson,
    accumulation_dtype,
    check_convergence,
    embed_problem,
    embedding_estimate,
    embedding_forward,
    endpoint_log_probs,
    gauss_legendre,
    integrate,
    refine,
)
from engine.methods.base import (
    AttributionInput,
    AttributionOutput,
    Cost,
    MethodSpec,
    Param,
    Size,
    answer_log_probs,
    cancellable,
    check_steps,
    run_in_batches,
)
from engine.task import TaskState


def sequential_integrated_gradients(
    model: Any,
    tokenizer: Any,
    problem: AttributionInput,
    *,
    steps: int | None = None,
    baseline: str = "pad",
    matrix: bool = True,
    batch_size: int | None = None,
    target_error: float = 0.05,
    max_steps: int = 16,
    state: TaskState | None = None,
) -> AttributionOutput:
    """SIG of log p(y_t | x, y_<t) per attributable prompt token; see the module docstring."""
    state = state or TaskState()
    if steps is None:
        return _converged(model, tokenizer, problem, baseline=baseline, matrix=matrix,
                          batch_size=batch_size, target_error=target_error,
                          max_steps=max_steps, state=state)
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
        return _moved(emb, rows, alphas.to(device, dtype)[ks])

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
    error = _relative_error(sequence[positions.cpu()], drops)
    return AttributionOutput(sequence, sums if matrix else None, f_input, f_baseline, error,
                             details={"integration": "gausslegendre"})


def _moved(emb: Any, rows: torch.Tensor, alpha: torch.Tensor) -> torch.Tensor:
    """[B, L, d]: the real sequence with, in batch row k, prompt row ``rows[k]`` at
    b + alpha[k] (e - b)."""
    x = emb.real.expand(len(rows), -1, -1).clone()
    batch = torch.arange(len(rows), device=x.device)
    x[batch, rows] = emb.base[rows] + alpha.view(-1, 1) * emb.delta[rows]
    return x


def _relative_error(found: torch.Tensor, drops: torch.Tensor) -> float:
    """sum_i |SIG[i] - drop_i| / sum_i |drop_i| over the case tokens."""
    return float((found - drops).abs().sum() / drops.abs().sum().clamp_min(1e-12))


def _converged(model: Any, tokenizer: Any, problem: AttributionInput, *, baseline: str,
               matrix: bool, batch_size: int | None, target_error: float, max_steps: int,
               state: TaskState) -> AttributionOutput:
    """SIG with each token's path refined by nested adaptive Simpson (as converged IG) until
    the per-token completeness error is at most ``target_error``, within ``max_steps`` points
    per token on average. A path's two ends give that token's drop F(x) - F(x with row i at
    the baseline), so the identity costs nothing extra."""
    check_convergence(target_error, max_steps, 2 * INITIAL_INTERVALS + 1)
    check_steps(max_steps, batch_size)
    emb = embed_problem(model, tokenizer, problem, baseline)
    n, device, dtype = emb.n, emb.real.device, emb.real.dtype
    acc = accumulation_dtype(device)
    positions = torch.nonzero(emb.moving, as_tuple=True)[0]
    n_answer = len(emb.answer_ids)
    forward = embedding_forward(model, emb.answer_ids)
    rule = NestedSimpson(paths=len(positions))
    budget = max_steps * len(positions)
    estimate = embedding_estimate(model, emb, budget)

    def evaluate(points: list[tuple[int, float]]) -> None:
        def work(start: int, stop: int) -> None:
            chosen = points[start:stop]
            rows = positions[torch.tensor([path for path, _ in chosen], device=device)]
            alpha = torch.tensor([a for _, a in chosen], dtype=torch.float64)
            x = _moved(emb, rows, alpha.to(device, dtype)).detach().requires_grad_(True)
            f = forward(x)  # [B, T]
            targets = [f[:, t].sum() for t in range(n_answer)] if matrix else [f.sum()]
            batch = torch.arange(len(chosen), device=device)
            moved = emb.delta[rows].to(acc)
            contracted = []
            for row, target in enumerate(targets):
                (grad,) = torch.autograd.grad(target, x, retain_graph=row < len(targets) - 1)
                contracted.append((grad[batch, rows].to(acc) * moved).sum(-1).cpu())
                state.check()
            per_point = torch.stack(contracted, dim=1).double()  # [B, rows]
            for k, point in enumerate(chosen):
                rule.add(point, float(f[k].detach().double().sum()), per_point[k])
            state.progressed("attribute", rule.used, budget)

        with cancellable(model, state), torch.enable_grad():
            run_in_batches(len(points), batch_size, estimate, work,
                           "Sequential Integrated Gradients")

    def drops() -> torch.Tensor:
        return torch.tensor([rule.f[path, 1.0] - rule.f[path, 0.0]
                             for path in range(len(positions))], dtype=torch.float64)

    def error() -> float:
        totals = rule.totals()
        found = torch.tensor([totals[path] for path in range(len(positions))],
                             dtype=torch.float64)
        return _relative_error(found, drops())

    refine(rule, evaluate, error, target_error, budget, batch_size or estimate())
    sums = torch.zeros(n_answer if matrix else 1, n, dtype=torch.float64)
    for path, position in enumerate(positions.tolist()):
        sums[:, position] = rule.integral(path)
    sequence = sums.sum(0)
    error_reached = _relative_error(sequence[positions.cpu()], drops())
    f_input, f_baseline = endpoint_log_probs(model, emb)
    details = {"integration": "adaptive-simpson", "points": rule.used,
               "converged": error_reached <= target_error}
    return AttributionOutput(sequence, sums if matrix else None, f_input, f_baseline,
                             error_reached, details=details)


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


def _cost(size: Size, params: dict[str, Any]) -> Cost:
    # Converged SIG is estimated at its budget: an upper bound the window can promise.
    steps = int(params.get("steps") or params.get("max_steps", 16))
    backwards = size.case * steps * (size.answer if params.get("matrix", True) else 1)
    return Cost(forwards=size.case * steps + size.case + 1, backwards=backwards,
                tokens=size.prompt + size.answer - 1)


SPEC = MethodSpec(
    name="sig",
    description="Sequential Integrated Gradients: each case token moves alone from the baseline",
    params=(
        Param("steps", None, "Gauss-Legendre points per token, exactly as before (None: "
                             "refine until the completeness error is below target_error)"),
        Param("baseline", "pad", "pad (pad, else eos embedding), zero, or token:ID"),
        Param("matrix", True, "also compute the per-answer-token matrix"),
        Param("batch_size", None, "paths per forward (None: fit to memory)"),
        Param("target_error", 0.05, "converged SIG: the per-token completeness error to reach"),
        Param("max_steps", 16, "converged SIG: the most points per case token, on average"),
    ),
    cost_formula="n_case x steps + n_case + 1 forwards; n_case x steps x T backwards "
                 "(n_case x steps with --no-matrix); over n + T - 1 tokens; converged: at "
                 "most n_case x max_steps points",
    cost=_cost,
    run=sequential_integrated_gradients,
)
