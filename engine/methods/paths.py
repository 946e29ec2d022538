"""Path integrals of gradients, shared by every path method (IG, DIG/UDIG, SIG, CA-LIG).

A path method evaluates the gradient of F = log p(y_t | x, y_<t) at K points of a path and
contracts each gradient with a per-point vector (IG: w_k (e - b); DIG: x^(k+1) - x^(k)). By
causality one forward over [x, y_<T] per point gives every F_t at once, so the sequence
attribution is one backward of sum_t F_t per point and the per-token matrix reuses that forward
for T backwards. Points are batched to memory and the batch is halved on out-of-memory.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from captum.attr._utils.approximation_methods import approximation_parameters

from engine.methods.base import (
    AttributionInput,
    answer_log_probs,
    auto_batch_size,
    cancellable,
    parse_baseline,
    run_in_batches,
)
from engine.task import TaskState


@dataclass(frozen=True)
class EmbeddedProblem:
    """The explained sequence [x, y_<T] embedded (``real``) and at the baseline (``base``).

    ``base`` differs from ``real`` only in the attributable prompt rows (``moving``).
    """

    real: torch.Tensor  # [L, d], L = n + T - 1
    base: torch.Tensor  # [L, d]
    moving: torch.Tensor  # [L] bool
    n: int  # prompt tokens
    answer_ids: torch.Tensor  # [T]
    baseline_id: int | None  # None: the zero embedding

    @property
    def delta(self) -> torch.Tensor:
        return self.real - self.base


def embed_problem(model: Any, tokenizer: Any, problem: AttributionInput,
                  baseline: str) -> EmbeddedProblem:
    embedding = model.get_input_embeddings()
    baseline_id = parse_baseline(baseline, tokenizer, embedding.num_embeddings)
    n = problem.prompt_ids.shape[0]
    ids = torch.cat([problem.prompt_ids, problem.answer_ids[:-1]])
    moving = torch.zeros_like(ids, dtype=torch.bool)
    moving[:n] = problem.attributable
    with torch.no_grad():
        real = embedding(ids)
        base = real.clone()
        if baseline_id is None:
            base[moving] = 0
        else:
            base[moving] = embedding(torch.tensor([baseline_id], device=ids.device)).to(real.dtype)
    return EmbeddedProblem(real, base, moving, n, problem.answer_ids, baseline_id)


def accumulation_dtype(device: torch.device) -> torch.dtype:
    """float64 where the device has it (MPS does not)."""
    return torch.float32 if device.type == "mps" else torch.float64


def gauss_legendre(steps: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Captum's default quadrature on [0, 1]: (weights [steps], points [steps]), float64."""
    step_sizes, alphas = approximation_parameters("gausslegendre")
    return (torch.tensor(step_sizes(steps), dtype=torch.float64),
            torch.tensor(alphas(steps), dtype=torch.float64))


def integrate(
    forward: Callable[[torch.Tensor], torch.Tensor],
    points: Callable[[int, int], torch.Tensor],
    reduce: Callable[[torch.Tensor, int, int], torch.Tensor],
    n_points: int,
    *,
    n_answer: int,
    width: int,
    matrix: bool,
    batch_size: int | None,
    estimate: Callable[[], int],
    state: TaskState,
    model: Any,
    what: str,
) -> torch.Tensor:
    """Sum of ``reduce(grad, start, stop)`` over all path points, per answer token.

    ``points(start, stop)`` gives the inputs of points ``start:stop`` as [B, L, d];
    ``forward(x)`` maps them to F [B, T]; ``reduce`` contracts the gradient dF/dx [B, L, d] to
    one vector [width] (in float64). Returns [T, width] with ``matrix``, else [1, width] for
    F = sum_t F_t, in float64 on the CPU.
    """
    rows = n_answer if matrix else 1
    sums: torch.Tensor | None = None
    total = n_points * (1 + rows)

    def work(start: int, stop: int) -> None:
        nonlocal sums
        # All or nothing: a batch that runs out of memory is redone whole at a smaller size.
        done = start * (1 + rows)
        size = stop - start
        x = points(start, stop).detach().requires_grad_(True)
        f = forward(x)  # [B, T]
        state.progressed("attribute", done + size, total)
        targets = [f[:, t].sum() for t in range(n_answer)] if matrix else [f.sum()]
        batch = []
        for row, target in enumerate(targets):
            (grad,) = torch.autograd.grad(target, x, retain_graph=row < len(targets) - 1)
            batch.append(reduce(grad, start, stop))
            state.progressed("attribute", done + size * (row + 2), total)
        stacked = torch.stack(batch)
        sums = stacked if sums is None else sums + stacked

    with cancellable(model, state), torch.enable_grad():
        run_in_batches(n_points, batch_size, estimate, work, what)
    assert sums is not None
    return sums.to("cpu", torch.float64)


def embedding_forward(model: Any, answer_ids: torch.Tensor
                      ) -> Callable[[torch.Tensor], torch.Tensor]:
    return lambda x: answer_log_probs(model, x, answer_ids)


def embedding_estimate(model: Any, emb: EmbeddedProblem, n_points: int) -> Callable[[], int]:
    return lambda: auto_batch_size(model, emb.real.shape[0], len(emb.answer_ids), n_points)


def endpoint_log_probs(model: Any, emb: EmbeddedProblem) -> tuple[torch.Tensor, torch.Tensor]:
    """F [T] at the input and at the baseline, float64 on the CPU."""
    with torch.no_grad():
        ends = answer_log_probs(model, torch.stack([emb.real, emb.base]), emb.answer_ids)
    ends = ends.double().cpu()
    return ends[0], ends[1]


def relative_completeness_error(total: float, expected: float) -> float:
    return abs(total - expected) / max(abs(expected), 1e-12)
