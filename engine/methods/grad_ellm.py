"""Grad-ELLM (``grad-ellm``, Huang & Chan 2026): gradient x attention for decoder-only models.

For answer token t (target position p = n - 1 + t, where F_t is read) and block l:

- ``paper`` mode, as published: g = dF_t / d(attention output at p, after the output
  projection); lambda_i = cosine(q_p, k_i) of the raw q and k projections, min-max normalised
  over the context i <= p; score_i = ReLU(sum_c g_c lambda_i v_i,c) with the raw value
  projection. Key/value heads are repeated to their query heads (grouped-query attention), so
  q, k and v all have heads x head_dim coordinates, which must equal the hidden size for g . v
  to be defined.
- ``exact`` mode (our reading): g_h = dF_t / d(head h's output at p, before the output
  projection); score_i = sum_h A_h[p, i] (g_h . v_i^(kv(h))) with the real attention
  probabilities A and each query head reading its own key/value head. Signed, no ReLU. The
  scores over every context position then sum exactly to g . u_p (u_p: the concatenated head
  outputs), the first-order term of F_t in u_p.

The heatmap is the sum over the chosen blocks (``layers``: last by default). One forward over
[x, y_<T] serves every answer token; each answer token needs one backward, which stops at the
lowest chosen block. The sequence attribution is the sum of the per-token rows.

Cost: 1 forward; T backwards through the chosen blocks; over n + T - 1 tokens.
"""

from __future__ import annotations

import contextlib
from typing import Any

import torch
import torch.nn.functional as nnf

from engine.errors import InvalidSettingsError
from engine.methods._attention import (
    capture_attention,
    check_layers,
    eager_attention,
    head_layout,
    parse_layers,
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
    decoder_layers,
    one_of,
)
from engine.task import TaskState

MODES = ("paper", "exact")


def raw_scores(model: Any, problem: AttributionInput, layers: list[int], mode: str,
               state: TaskState) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-block scores before any ReLU [layers, T, L], g . u_p per block [layers, T] (exact
    mode; zeros in paper mode) and F [T], all float64 on the CPU.

    L = n + T - 1 covers the whole context (template and earlier answer tokens included).
    """
    if mode not in MODES:
        raise InvalidSettingsError(f"unknown mode {mode!r}; choose paper or exact")
    layout = head_layout(model)
    hidden = model.config.hidden_size
    if mode == "paper" and layout.heads * layout.head_dim != hidden:
        raise InvalidSettingsError(
            f"paper mode multiplies the gradient ({hidden} wide) with the value projection "
            f"({layout.heads} x {layout.head_dim} wide), which differ in this model; use "
            "mode exact")
    n, n_answer = len(problem.prompt_ids), len(problem.answer_ids)
    ids = torch.cat([problem.prompt_ids, problem.answer_ids[:-1]])
    length = len(ids)
    targets = torch.arange(n - 1, n - 1 + n_answer, device=ids.device)
    context = torch.arange(length, device=ids.device)[None] <= targets[:, None]  # [T, L]

    attention = eager_attention(model) if mode == "exact" else contextlib.nullcontext()
    with attention, capture_attention(model, layers) as capture, cancellable(model, state), \
            torch.enable_grad():
        x = model.get_input_embeddings()(ids)[None].detach().requires_grad_(True)
        f = answer_log_probs(model, x, problem.answer_ids)[0]  # [T]
        state.progressed("attribute", 1, 1 + n_answer)
        wanted = [capture.tensors[i].out if mode == "paper" else capture.tensors[i].heads_out
                  for i in layers]
        grads: list[list[torch.Tensor]] = [[] for _ in layers]
        for t in range(n_answer):
            for slot, grad in enumerate(torch.autograd.grad(
                    f[t], wanted, retain_graph=t < n_answer - 1)):
                grads[slot].append(grad[0, n - 1 + t])
            state.progressed("attribute", 2 + t, 1 + n_answer)

    work = torch.promote_types(x.dtype, torch.float32)
    scores, products = [], []
    with torch.no_grad():
        for slot, index in enumerate(layers):
            tensors = capture.tensors[index]
            g = torch.stack(grads[slot]).to(work)  # [T, d] or [T, heads * head_dim]
            v = layout.expand_kv(tensors.v.detach()).to(work)[0]  # [L, heads, head_dim]
            if mode == "paper":
                q = tensors.q.detach().to(work)[0, targets]  # [T, heads * head_dim]
                k = layout.expand_kv(tensors.k.detach()).to(work)[0].flatten(1)
                cosine = nnf.normalize(q, dim=-1) @ nnf.normalize(k, dim=-1).T  # [T, L]
                low = cosine.masked_fill(~context, float("inf")).amin(-1, keepdim=True)
                high = cosine.masked_fill(~context, float("-inf")).amax(-1, keepdim=True)
                spatial = (cosine - low) / (high - low).clamp_min(1e-12)
                raw = spatial * (g @ v.flatten(1).T)
                product = torch.zeros(n_answer, dtype=work, device=raw.device)
            else:
                g_heads = g.view(n_answer, layout.heads, layout.head_dim)
                probs = tensors.probs.detach().to(work)[0][:, targets].transpose(0, 1)  # [T,H,L]
                raw = (probs * torch.einsum("thd,lhd->thl", g_heads, v)).sum(1)
                u = tensors.heads_out.detach().to(work)[0, targets].view_as(g_heads)
                product = (g_heads * u).sum((1, 2))
            scores.append(torch.where(context, raw, torch.zeros_like(raw)))
            products.append(product)
    return (torch.stack(scores).double().cpu(), torch.stack(products).double().cpu(),
            f.detach().double().cpu())


def grad_ellm(model: Any, tokenizer: Any, problem: AttributionInput, *, mode: str = "paper",
              layers: str = "last", state: TaskState | None = None
              ) -> AttributionOutput:
    """Grad-ELLM heatmaps per answer token over the prompt; see the module docstring."""
    state = state or TaskState()
    chosen = parse_layers(layers, len(decoder_layers(model)))
    raw, _, f_input = raw_scores(model, problem, chosen, mode, state)
    per_layer = raw.clamp_min(0) if mode == "paper" else raw
    n = len(problem.prompt_ids)
    per_token = per_layer.sum(0)[:, :n]
    return AttributionOutput(per_token.sum(0), per_token, f_input)


def _cost(size: Size, params: dict[str, Any]) -> Cost:
    return Cost(forwards=1, backwards=size.answer,
                tokens=size.prompt + size.answer - 1)


SPEC = MethodSpec(
    name="grad-ellm",
    description="Grad-ELLM: gradient x attention of the chosen blocks (paper or exact mode)",
    params=(
        Param("mode", "paper", "paper (cosine-weighted, ReLU) or exact (attention "
                               "probabilities per head, signed)", check=one_of("mode", *MODES)),
        Param("layers", "last", "blocks to sum: last, all, every:K, or indices like -1,-2",
              check=check_layers),
    ),
    cost_formula="1 forward; T backwards through the chosen blocks; over n + T - 1 tokens",
    cost=_cost,
    run=grad_ellm,
)
