"""Path integrals of gradients, shared by every path method (IG, DIG/UDIG, SIG, CA-LIG).

A path method evaluates the gradient of F = log p(y_t | x, y_<t) at K points of a path and
contracts each gradient with a per-point vector (IG: w_k (e - b); DIG: x^(k+1) - x^(k)). By
causality one forward over [x, y_<T] per point gives every F_t at once, so the sequence
attribution is one backward of sum_t F_t per point and the per-token matrix reuses that forward
for T backwards. Points are batched to memory and the batch is halved on out-of-memory.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from captum.attr._utils.approximation_methods import approximation_parameters

from engine.errors import InvalidSettingsError
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


INITIAL_INTERVALS = 4  # the first grid: 4 Simpson intervals, 9 points per path


class NestedSimpson:
    """Adaptive composite Simpson on [0, 1] for one or more straight paths, nested.

    Every interval [a, b] of a path holds a, its midpoint and b; splitting it reuses all three,
    so no point is computed twice. A point is ``(path, alpha)`` and carries F there (summed over
    the answer) and the gradient contracted with the path's direction (any shape, summed by
    ``integral``). Each point's forward gives F on the path, so each interval's own error,
    Simpson(dF/dalpha) - (F(b) - F(a)), is known exactly; :meth:`split_worst` splits the
    intervals with the largest error.
    """

    def __init__(self, paths: int, initial: int = INITIAL_INTERVALS) -> None:
        edges = [k / initial for k in range(initial + 1)]
        self.intervals = [(path, a, b) for path in range(paths)
                          for a, b in itertools.pairwise(edges)]
        self.f: dict[tuple[int, float], float] = {}
        self.g: dict[tuple[int, float], torch.Tensor] = {}
        self._slope: dict[tuple[int, float], float] = {}

    @property
    def used(self) -> int:
        return len(self.g)

    def first_points(self) -> list[tuple[int, float]]:
        return sorted({(p, x) for p, a, b in self.intervals for x in (a, (a + b) / 2, b)})

    def add(self, point: tuple[int, float], f: float, g: torch.Tensor) -> None:
        self.f[point], self.g[point], self._slope[point] = f, g, float(g.sum())

    @staticmethod
    def _simpson(path: int, a: float, b: float, what: dict) -> Any:
        return (b - a) / 6 * (what[path, a] + 4 * what[path, (a + b) / 2] + what[path, b])

    def local_error(self, interval: tuple[int, float, float]) -> float:
        path, a, b = interval
        return self._simpson(path, a, b, self._slope) - (self.f[path, b] - self.f[path, a])

    def totals(self) -> dict[int, float]:
        """Per path, the integral of dF/dalpha (to compare with F(1) - F(0))."""
        out: dict[int, float] = {}
        for path, a, b in self.intervals:
            out[path] = out.get(path, 0.0) + self._simpson(path, a, b, self._slope)
        return out

    def integral(self, path: int) -> torch.Tensor:
        """The contracted gradient integrated along ``path``."""
        return sum(self._simpson(p, a, b, self.g) for p, a, b in self.intervals if p == path)

    def split_worst(self, count: int) -> list[tuple[int, float]]:
        """Split the ``count`` intervals with the largest error; the new points to evaluate."""
        worst = sorted(self.intervals, key=lambda iv: abs(self.local_error(iv)),
                       reverse=True)[:count]
        new = []
        for path, a, b in worst:
            m = (a + b) / 2
            self.intervals.remove((path, a, b))
            self.intervals += [(path, a, m), (path, m, b)]
            new += [(path, (a + m) / 2), (path, (m + b) / 2)]
        return new


def refine(rule: NestedSimpson, evaluate: Callable[[list[tuple[int, float]]], None],
           error: Callable[[], float], target: float, max_points: int, per_round: int) -> float:
    """Evaluate the first grid, then split the worst intervals (about ``per_round`` new
    points at a time) until ``error()`` is at most ``target`` or ``max_points`` are used."""
    evaluate(rule.first_points())
    current = error()
    while current > target and rule.used + 2 <= max_points:
        room = (max_points - rule.used) // 2
        evaluate(rule.split_worst(max(1, min(room, per_round // 2))))
        current = error()
    return current


def check_convergence(target_error: float, max_steps: int, least: int) -> None:
    if not 0 < target_error < 1:
        raise InvalidSettingsError(f"target error must be between 0 and 1 (got {target_error})")
    if max_steps < least:
        raise InvalidSettingsError(f"max steps must be at least {least} (got {max_steps})")


def path_points(base: torch.Tensor, delta: torch.Tensor, alphas: torch.Tensor) -> torch.Tensor:
    """base + alpha * delta [len(alphas), L, d], as Captum forms them: alpha times the
    difference in at least float32 and rounded once (rounding alpha itself to bfloat16's 8 bits
    first moved 16% of the values away from Captum's)."""
    work = torch.promote_types(delta.dtype, torch.float32)
    alpha = alphas.to(delta.device, work).view(-1, 1, 1)
    return base + (alpha * delta.to(work)).to(delta.dtype)
