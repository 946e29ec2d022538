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
from captum.attr._utils.approximation_methods import approximation_parameters

from engine.errors import InvalidSettingsError
from engine.methods.base import (
    AttributionInput,
    AttributionOutput,
    Cost,
    MethodSpec,
    Param,
    answer_log_probs,
    auto_batch_size,
    cancellable,
    parse_baseline,
    run_in_batches,
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
    if steps < 1:
        raise InvalidSettingsError(f"steps must be at least 1 (got {steps})")
    if batch_size is not None and batch_size < 1:
        raise InvalidSettingsError(f"batch size must be at least 1 (got {batch_size})")
    embedding = model.get_input_embeddings()
    baseline_id = parse_baseline(baseline, tokenizer, embedding.num_embeddings)

    n, n_answer = problem.prompt_ids.shape[0], problem.answer_ids.shape[0]
    ids = torch.cat([problem.prompt_ids, problem.answer_ids[:-1]])
    moving = torch.zeros_like(ids, dtype=torch.bool)
    moving[:n] = problem.attributable
    with torch.no_grad():
        real = embedding(ids)  # [L, d], L = n + T - 1
        base = real.clone()
        if baseline_id is None:
            base[moving] = 0
        else:
            base[moving] = embedding(torch.tensor([baseline_id], device=ids.device)).to(real.dtype)
    delta = real - base  # zero outside the attributable prompt rows

    step_sizes, alphas = approximation_parameters("gausslegendre")
    weights = torch.tensor(step_sizes(steps), dtype=torch.float64)
    points = torch.tensor(alphas(steps), dtype=torch.float64)

    rows = n_answer if matrix else 1
    # Accumulate in float64 on the device (MPS has no float64).
    acc_dtype = torch.float32 if real.device.type == "mps" else torch.float64
    grad_sums = torch.zeros(rows, n, dtype=acc_dtype, device=real.device)
    delta_acc = delta[:n].to(acc_dtype)
    total = steps * (1 + rows)
    answer_ids = problem.answer_ids

    def work(start: int, stop: int) -> None:
        # All or nothing: a batch that runs out of memory is redone whole at a smaller size.
        done = start * (1 + rows)
        size = stop - start
        alpha = points[start:stop].to(real.device, real.dtype).view(-1, 1, 1)
        x = (base + alpha * delta).requires_grad_(True)
        f = answer_log_probs(model, x, answer_ids)  # [B, T]
        state.progressed("attribute", done + size, total)
        w = weights[start:stop].to(real.device, acc_dtype).view(-1, 1, 1)
        targets = [f[:, t].sum() for t in range(n_answer)] if matrix else [f.sum()]
        batch_sums = torch.zeros_like(grad_sums)
        for row, target in enumerate(targets):
            (grad,) = torch.autograd.grad(target, x, retain_graph=row < len(targets) - 1)
            # Contract with (e - b) now: keeps memory at [T, n] instead of [T, n, d].
            batch_sums[row] = ((grad[:, :n].to(acc_dtype) * w).sum(0) * delta_acc).sum(-1)
            state.progressed("attribute", done + size * (row + 2), total)
        grad_sums.add_(batch_sums)

    seq_len = ids.shape[0]
    with cancellable(model, state), torch.enable_grad():
        run_in_batches(steps, batch_size,
                       lambda: auto_batch_size(model, seq_len, n_answer, steps), work,
                       "Integrated Gradients")
        with torch.no_grad():
            ends = answer_log_probs(model, torch.stack([real, base]), answer_ids).double().cpu()
    f_input, f_baseline = ends[0], ends[1]

    grad_sums = grad_sums.to("cpu", torch.float64)
    per_token = grad_sums if matrix else None
    sequence = grad_sums.sum(0)
    expected = float((f_input - f_baseline).sum())
    error = abs(float(sequence.sum()) - expected) / max(abs(expected), 1e-12)
    return AttributionOutput(sequence, per_token, f_input, f_baseline, error)


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
