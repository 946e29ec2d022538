"""Discretized Integrated Gradients (``dig``, Sanyal & Ren 2021) and Uniform Discretized IG
(``udig``, Roy & Kundu 2024).

Both replace IG's straight line by a path through points near real word embeddings, then take
a left Riemann sum along it:

    A_t[i] = sum_j sum_k dF_t/dx_ij(x^(k)) * (x^(k+1)_ij - x^(k)_ij)

Paths are built walking from the input embedding e towards the baseline b, one anchor at a
time, and made monotone: every coordinate of a new point lies between the baseline and the
previous point, and a coordinate that does not is set to prev - (prev - b) / m.

- DIG: anchor s is one of the ``nbrs`` nearest vocabulary embeddings of the word chosen at
  step s - 1 (the input word first).
- UDIG: anchor k is one of the ``nbrs`` nearest vocabulary embeddings of the k-th of m uniform
  points on the straight line from e to b.

Among the candidates, ``greedy`` takes the one closest to its monotone version and
``maxcount`` the one with the most coordinates already monotone. Words already on the path are
not chosen again (our reading: otherwise the walk can stand still). Every case token walks its
own path; all paths advance together, so point k of the sequence has every case row at its own
k-th point. With ``upscale`` f, midpoints are inserted f times: 2^f (m + 1) + 1 points.

The nearest-neighbour search is batched matrix products on the model's device over the real
word pieces only (special, added and unused ids are left out). The baseline is the pad (else
eos) embedding, since decoder models have no [MASK] (our reading).

Cost: 2^f (m + 1) forwards plus one, 2^f (m + 1) x T backwards (x 1 with ``matrix`` off), over
n + T - 1 tokens; plus m nearest-neighbour searches over the vocabulary.
"""

from __future__ import annotations

from typing import Any

import torch

from engine.errors import InvalidSettingsError
from engine.methods._paths import (
    EmbeddedProblem,
    accumulation_dtype,
    embed_problem,
    embedding_estimate,
    embedding_forward,
    endpoint_log_probs,
    integrate,
    relative_completeness_error,
)
from engine.methods.base import (
    AttributionInput,
    AttributionOutput,
    Cost,
    Param,
    Size,
    check_steps,
    one_of,
)
from engine.task import TaskState

STRATEGIES = ("greedy", "maxcount")


def word_piece_ids(tokenizer: Any, vocab_size: int) -> torch.Tensor:
    """Vocabulary ids that are real word pieces: no special, added or unused embedding rows."""
    usable = torch.zeros(vocab_size, dtype=torch.bool)
    usable[: min(vocab_size, len(tokenizer))] = True
    for token_id in [*tokenizer.all_special_ids, *tokenizer.added_tokens_decoder]:
        if 0 <= token_id < vocab_size:
            usable[token_id] = False
    return torch.nonzero(usable, as_tuple=True)[0]


def nearest(queries: torch.Tensor, table: torch.Tensor, k: int,
            banned: torch.Tensor | None = None, chunk_elements: int = 1 << 24,
            state: TaskState | None = None) -> torch.Tensor:
    """Indices [Q, k] of the k rows of ``table`` [V, d] nearest each query [Q, d] (Euclidean).

    Squared distances come from |q|^2 - 2 q.v + |v|^2, a matrix product per chunk of queries
    (a cancel through ``state`` is checked before each). ``banned`` [Q, b] lists row indices
    each query must not return.
    """
    state = state or TaskState()
    table = table.to(torch.promote_types(table.dtype, torch.float32))
    norms = (table * table).sum(-1)
    rows = max(1, chunk_elements // max(1, table.shape[0]))
    found = []
    for start in range(0, queries.shape[0], rows):
        state.check()
        q = queries[start:start + rows].to(table.dtype)
        distances = (q * q).sum(-1, keepdim=True) - 2 * q @ table.T + norms
        if banned is not None and banned.shape[1]:
            distances.scatter_(1, banned[start:start + rows], float("inf"))
        found.append(distances.topk(k, dim=-1, largest=False).indices)
    return torch.cat(found)


def monotone(candidates: torch.Tensor, previous: torch.Tensor, base: torch.Tensor,
             m: int) -> torch.Tensor:
    """Candidates [..., d] with every coordinate outside [base, previous] set to
    previous - (previous - base) / m."""
    low, high = torch.minimum(base, previous), torch.maximum(base, previous)
    inside = (candidates >= low) & (candidates <= high)
    return torch.where(inside, candidates, previous - (previous - base) / m)


def _choose(candidates: torch.Tensor, previous: torch.Tensor, base: torch.Tensor, m: int,
            strategy: str) -> torch.Tensor:
    """Index [R] of the chosen candidate among candidates [R, c, d] for each row."""
    fixed = monotone(candidates, previous[:, None], base[:, None], m)
    if strategy == "greedy":
        return (candidates - fixed).norm(dim=-1).argmin(-1)
    return (candidates == fixed).sum(-1).argmax(-1)


def build_paths(start: torch.Tensor, base: torch.Tensor, table: torch.Tensor, *, kind: str,
                anchors: int, nbrs: int, strategy: str, upscale: int,
                state: TaskState | None = None) -> torch.Tensor:
    """Monotone paths [K, R, d] from ``base`` (point 0) to ``start`` (point K - 1) per row.

    ``start`` [R, d] are the input embeddings, ``base`` [R, d] their baselines, ``table``
    [V, d] the candidate word embeddings. Progress (stage ``path``, one unit per anchor) and
    cancel go through ``state``.
    """
    state = state or TaskState()
    if strategy not in STRATEGIES:
        raise InvalidSettingsError(f"unknown strategy {strategy!r}; choose greedy or maxcount")
    m = anchors
    size = table.shape[0]
    rows = torch.arange(start.shape[0], device=start.device)
    # Table rows of the words already on each path: first the input word (its own row, or the
    # nearest one when it is not a word piece).
    visited = nearest(start, table, 1, state=state)
    if kind == "udig":
        fractions = torch.arange(1, m + 1, device=start.device, dtype=start.dtype) / (m + 1)
        line = start[None] - fractions.view(-1, 1, 1) * (start - base)[None]  # [m, R, d]
        # Every query is known in advance: one batched search; m more per row cover visits.
        wide = nearest(line.reshape(-1, start.shape[1]), table, min(size, nbrs + m + 1),
                       state=state)
        wide = wide.view(m, start.shape[0], -1)
    points, previous, word = [start], start, start
    for step in range(m):
        state.progressed("path", step, m)
        if kind == "udig":
            pool = wide[step]
            fresh = ~(pool[:, :, None] == visited[:, None, :]).any(-1)
            # Keep the first nbrs candidates that are not on the path yet.
            order = torch.sort((~fresh).to(torch.int8), dim=1, stable=True).indices[:, :nbrs]
            picked = pool.gather(1, order)
        else:
            picked = nearest(word, table, min(nbrs, size - visited.shape[1]),
                             banned=visited, state=state)
        candidates = table[picked].to(start.dtype)  # [R, nbrs, d]
        choice = _choose(candidates, previous, base, m, strategy)
        chosen = picked[rows, choice]
        word = table[chosen].to(start.dtype)
        previous = monotone(word, previous, base, m)
        points.append(previous)
        visited = torch.cat([visited, chosen[:, None]], dim=1)
    points.append(base)
    path = torch.stack(points[::-1])
    for _ in range(upscale):
        middle = (path[:-1] + path[1:]) / 2
        path = torch.cat([torch.stack([path[:-1], middle], dim=1).flatten(0, 1), path[-1:]])
    return path


def path_attribution(model: Any, emb: EmbeddedProblem, path: torch.Tensor, *, matrix: bool,
                     batch_size: int | None, state: TaskState, what: str,
                     forward: Any = None) -> torch.Tensor:
    """Left Riemann sum along ``path`` [K, R, d] of the case rows: [T or 1, n] float64."""
    device, n = emb.real.device, emb.n
    acc = accumulation_dtype(device)
    positions = torch.nonzero(emb.moving, as_tuple=True)[0]
    steps = (path[1:] - path[:-1]).to(acc)  # [K - 1, R, d]

    def points(start: int, stop: int) -> torch.Tensor:
        x = emb.real.expand(stop - start, -1, -1).clone()
        x[:, positions] = path[start:stop]
        return x

    def reduce(grad: torch.Tensor, start: int, stop: int) -> torch.Tensor:
        scores = (grad[:, positions].to(acc) * steps[start:stop]).sum((0, -1))
        return torch.zeros(n, dtype=acc, device=device).index_add_(0, positions, scores)

    n_points = path.shape[0] - 1
    return integrate(forward or embedding_forward(model, emb.answer_ids), points, reduce,
                     n_points, n_answer=len(emb.answer_ids), width=n, matrix=matrix,
                     batch_size=batch_size, estimate=embedding_estimate(model, emb, n_points),
                     state=state, model=model, what=what)


def _discretized(kind: str, model: Any, tokenizer: Any, problem: AttributionInput, *,
                 steps: int = 30, nbrs: int = 50, strategy: str = "greedy", upscale: int = 1,
                 baseline: str = "pad", matrix: bool = True, batch_size: int | None = None,
                 state: TaskState | None = None) -> AttributionOutput:
    state = state or TaskState()
    check_steps(steps, batch_size)
    if nbrs < 1:
        raise InvalidSettingsError(f"nbrs must be at least 1 (got {nbrs})")
    if not 0 <= upscale <= 4:
        raise InvalidSettingsError(f"upscale must be from 0 to 4 (got {upscale})")
    emb = embed_problem(model, tokenizer, problem, baseline)
    weight = model.get_input_embeddings().weight
    table_ids = word_piece_ids(tokenizer, weight.shape[0]).to(weight.device)
    if len(table_ids) < nbrs + steps + 1:
        raise InvalidSettingsError(
            f"the vocabulary has {len(table_ids)} word pieces, too few for nbrs={nbrs} and "
            f"steps={steps}")
    positions = torch.nonzero(emb.moving, as_tuple=True)[0]
    with torch.no_grad():
        path = build_paths(emb.real[positions], emb.base[positions],
                           weight.detach()[table_ids], kind=kind, anchors=steps, nbrs=nbrs,
                           strategy=strategy, upscale=upscale, state=state)
    state.progressed("path", steps, steps)
    sums = path_attribution(model, emb, path, matrix=matrix, batch_size=batch_size, state=state,
                            what="Discretized Integrated Gradients")
    f_input, f_baseline = endpoint_log_probs(model, emb)
    sequence = sums.sum(0)
    error = relative_completeness_error(float(sequence.sum()), float((f_input - f_baseline).sum()))
    return AttributionOutput(sequence, sums if matrix else None, f_input, f_baseline, error)


def dig(model: Any, tokenizer: Any, problem: AttributionInput, **kwargs: Any
        ) -> AttributionOutput:
    """DIG: anchors among the neighbours of the previously chosen word."""
    return _discretized("dig", model, tokenizer, problem, **kwargs)


def udig(model: Any, tokenizer: Any, problem: AttributionInput, **kwargs: Any
         ) -> AttributionOutput:
    """UDIG: anchors among the neighbours of uniform points on the straight line."""
    return _discretized("udig", model, tokenizer, problem, **kwargs)


def cost(size: Size, params: dict[str, Any]) -> Cost:
    points = 2 ** int(params.get("upscale", 1)) * (int(params.get("steps", 30)) + 1)
    backwards = points * (size.answer if params.get("matrix", True) else 1)
    return Cost(forwards=points + 1, backwards=backwards, tokens=size.prompt + size.answer - 1)


PARAMS = (
    Param("steps", 30, "anchors m on each path"),
    Param("nbrs", 50, "nearest vocabulary neighbours considered per anchor"),
    Param("strategy", "greedy", "greedy (closest to its monotone version) or maxcount",
          check=one_of("strategy", *STRATEGIES)),
    Param("upscale", 1, "midpoint insertions f: 2^f (m + 1) + 1 path points"),
    Param("baseline", "pad", "pad (pad, else eos embedding), zero, or token:ID"),
    Param("matrix", True, "also compute the per-answer-token matrix"),
    Param("batch_size", None, "path points per forward (None: fit to memory)"),
)
FORMULA = ("2^upscale x (steps + 1) + 1 forwards; 2^upscale x (steps + 1) x T backwards "
            "(x 1 with --no-matrix); over n + T - 1 tokens")
