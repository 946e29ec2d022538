"""Information-flow attribution in one forward pass: ``ifr`` and ``flashtrace``.

Information flow routes (IFR; Ferrando & Voita 2024) as FlashTrace computes them (Pan et al.,
ICML 2026, arXiv 2602.01914; package ``flashtrace``). For block l and a *sink* (one position,
or a weighted sum of positions s with weights w_s), let

    y   = sum_s w_s x_mid[s]                     the residual stream after attention
    r   = sum_s w_s x_prev[s]                    the residual stream before the block
    c_jh = (sum_s w_s A_h[s, j]) (norm(x_prev[j]) W_V,h) W_O,h   head h's share from token j

with A_h the attention probabilities and norm the block's input RMSNorm/LayerNorm. Each part's
*proximity* to the whole is max(0, |y|_1 - |y - part|_1); token j's importance in block l is
sum_h prox(c_jh) / (sum_jh prox(c_jh) + prox(r)), and its score is the sum over blocks. The value
and output biases are left out (they belong to no token), as in the package.

``flashtrace`` aggregates the sink over the answer span in one pass (stop tokens "," "." and
whitespace-only tokens get weight 0 and score 0, as the package does) and then *hops* through the
answer's own tokens: hop k re-aggregates the sink over the answer positions, weighted by how much
hop k-1 attributed to each of them, and its prompt scores are added scaled by the share of the
total that flowed through the answer so far. ``ifr`` is the single-span IFR (no hops, no
stop-token filtering).

Sink positions (``sink``): ``answer`` (the package's) puts the sink on the answer tokens'
own positions (position n + t holds y_t); ``predicting`` (our variant) puts it on the positions
whose outputs predict the answer tokens (n - 1 + t, where F_t = log p(y_t | x, y_<t) is read).

Equal to the ``flashtrace`` package on the same ids, chat template included: its stop-token
filter covers the template's tokens too (tests: tiny Llama and Qwen2). Differences, on purpose:

- Fused with the answer: keys and values come from the model's key/value cache, and after
  generation the prompt's part of it is the cache generation left (``prompt_cache``), so only the
  answer positions run again; the package runs a second full forward over prompt and answer.
- Attention probabilities are formed only for the sink rows, from the cached keys (the package
  stores every layer's full map, or recomputes every row with its own rotary code).
- Contributions are formed in float32 even for bfloat16 weights.
- An answer made only of stop tokens falls back to uniform weights (the package returns zeros);
  a forced answer is not given an extra end-of-sequence token.

Kept from the package: its stop-token filtering (``stop_tokens``, on for ``flashtrace``), no
special treatment of attention sinks (the first token's scores are shown like any other; it is a
template token in the window, never coloured), and chunking of the source tokens to bound memory
(here by bytes, about 64 MiB per block).

Cost: one forward over [x, y], or over the answer alone with generation's cache (no backward);
then per block O(L x heads x d) for each hop, and O(T x L x heads x d) for the per-token matrix.
"""

from __future__ import annotations

import math
import sys
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from engine.errors import InvalidSettingsError
from engine.methods._attention import attention_module, head_layout
from engine.methods.base import (
    AttributionInput,
    AttributionOutput,
    Cost,
    Param,
    Size,
    cache_keyword,
    cancellable,
    decoder_layers,
    one_of,
)
from engine.task import TaskState

SINKS = ("answer", "predicting")
NORMALISE = ("block", "content")
STOP_TOKENS = frozenset({",", "."})
CHUNK_BYTES = 64 * 2**20  # working memory of one block's contribution tensor


def is_stop_token(text: str) -> bool:
    """The package's stop tokens: "," "." and whitespace-only tokens (after stripping)."""
    stripped = text.strip()
    return stripped == "" or stripped in STOP_TOKENS


@dataclass
class _Block:
    """What one block's span aggregates need, captured in the forward (float32, batch dropped).

    ``values`` [L, kv_heads, head_dim] the value vectors of every position (without the value
    bias, which belongs to no token); ``x_prev`` / ``x_mid`` [P, d] the residual stream before
    the block and after attention at the sink rows; ``probs`` [heads, P, L] the attention
    probabilities of the sink rows.
    """

    values: torch.Tensor
    x_prev: torch.Tensor
    x_mid: torch.Tensor
    probs: torch.Tensor

    def rows(self, chosen: slice) -> _Block:
        return _Block(self.values, self.x_prev[chosen], self.x_mid[chosen],
                      self.probs[:, chosen])


def _rotary(attn: nn.Module) -> Any:
    """The rotary function of the block's own modeling module (Llama, Qwen2, Mistral ...)."""
    function = getattr(sys.modules[type(attn).__module__], "apply_rotary_pos_emb", None)
    if function is None:
        raise InvalidSettingsError(
            f"{type(attn).__name__} has no rotary position embedding that this method can read")
    return function


def sink_queries(attn: nn.Module, normed: torch.Tensor, position_embeddings: Any) -> torch.Tensor:
    """Queries [1, heads, P, head_dim] of the sink rows, as the block makes them: q projection,
    q norm where the block has one, its rotary embedding."""
    layout = head_layout(attn)
    q = attn.q_proj(normed).view(1, normed.shape[0], -1, layout.head_dim).transpose(1, 2)
    if hasattr(attn, "q_norm"):
        q = attn.q_norm(q)
    cos, sin = position_embeddings
    q, _ = _rotary(attn)(q, q, cos, sin)
    return q


def sink_attention(attn: nn.Module, queries: torch.Tensor, keys: torch.Tensor,
                   rows: torch.Tensor) -> torch.Tensor:
    """Attention probabilities [heads, P, L] of query positions ``rows`` over the L cached keys
    (after rotary embedding, as the block's cache holds them): scaling, causal (and
    sliding-window) mask, float32 softmax."""
    layout = head_layout(attn)
    keys = keys.repeat_interleave(layout.group, dim=1)
    scores = torch.matmul(queries, keys.transpose(2, 3)) * attn.scaling
    positions = torch.arange(keys.shape[2], device=rows.device).view(1, -1)
    blocked = positions > rows.view(-1, 1)
    window = getattr(attn, "sliding_window", None)
    if window:
        blocked |= positions <= rows.view(-1, 1) - window
    scores = scores.masked_fill(blocked, float("-inf"))
    return torch.softmax(scores.float(), dim=-1)[0]


def _forward(model: nn.Module, ids: torch.Tensor, rows: torch.Tensor, answer_from: int,
             prompt_cache: Any, on_block: Any) -> torch.Tensor:
    """One forward that calls ``on_block(index, _Block)`` for every block; returns the logits
    [T, V] that predict the answer tokens (``ids[answer_from:]``).

    The keys and values of every position are read from the forward's key/value cache. With
    ``prompt_cache`` (the cache generation left, covering at least the prompt) the forward only
    runs from the first sink row on: the prompt is not recomputed.
    """
    from transformers import DynamicCache

    layers = decoder_layers(model)
    start = min(int(rows.min()), answer_from - 1)
    cache = DynamicCache(config=model.config)
    if prompt_cache is not None and prompt_cache.get_seq_length() >= start:
        for index, layer in enumerate(prompt_cache.layers[:len(layers)]):
            cache.update(layer.keys[..., :start, :], layer.values[..., :start, :], index)
    else:
        start = 0
    local = rows - start
    pending: dict[int, dict[str, Any]] = {}
    handles = []
    for index, layer in enumerate(layers):
        attn = attention_module(layer)

        def before_layer(module: nn.Module, args: Any, kwargs: Any, index: int = index) -> None:
            hidden = args[0] if args else kwargs["hidden_states"]
            pending[index] = {"x_prev": hidden[0, local].float()}

        def before_attn(module: nn.Module, args: Any, kwargs: Any, index: int = index,
                        attn: nn.Module = attn) -> None:
            normed = (args[0] if args else kwargs["hidden_states"])[0]
            embeddings = kwargs.get("position_embeddings")
            if embeddings is None and len(args) > 1:
                embeddings = args[1]
            if embeddings is None:
                raise InvalidSettingsError(
                    f"{type(attn).__name__} receives no rotary position embedding; this method "
                    "needs a Llama-style decoder")
            cos, sin = embeddings
            pending[index]["queries"] = sink_queries(attn, normed[local],
                                                     (cos[:, local], sin[:, local]))

        def before_mlp_norm(module: nn.Module, args: Any, index: int = index,
                            attn: nn.Module = attn) -> None:
            part = pending.pop(index)
            stored = cache.layers[index]
            values = stored.values[0].transpose(0, 1).float()  # [L, kv_heads, head_dim]
            bias = getattr(attn.v_proj, "bias", None)
            if bias is not None:
                values = values - bias.float().view(1, values.shape[1], -1)
            probs = sink_attention(attn, part["queries"], stored.keys, rows)
            on_block(index, _Block(values, part["x_prev"], args[0][0, local].float(), probs))

        handles.append(layer.register_forward_pre_hook(before_layer, with_kwargs=True))
        handles.append(attn.register_forward_pre_hook(before_attn, with_kwargs=True))
        handles.append(layer.post_attention_layernorm.register_forward_pre_hook(before_mlp_norm))
    try:
        n_answer = ids.shape[0] - answer_from
        logits = model(input_ids=ids[start:].unsqueeze(0), use_cache=True,
                       logits_to_keep=n_answer + 1,
                       **{cache_keyword(model): cache}).logits[0, :n_answer]
    finally:
        for handle in handles:
            handle.remove()
    return logits


def _contributions(attn: nn.Module, values: torch.Tensor, start: int, stop: int
                   ) -> torch.Tensor:
    """(v_j with head h's values) W_O,h for tokens ``start:stop``: [J, heads, d], float32."""
    layout = head_layout(attn)
    o_w = attn.o_proj.weight.float()
    chosen = values[start:stop].repeat_interleave(layout.group, dim=1)
    out_blocks = o_w.view(o_w.shape[0], layout.heads, layout.head_dim).permute(1, 2, 0)
    return torch.einsum("jhe,hed->jhd", chosen, out_blocks)


def _chunk(heads: int, width: int, sinks: int = 1) -> int:
    return max(1, CHUNK_BYTES // (4 * heads * width * sinks))


def span_importance(attn: nn.Module, block: _Block, weights: torch.Tensor,
                    content: torch.Tensor | None = None) -> torch.Tensor:
    """One block's token importances [L] for the sink sum_s w_s (position s); see the module
    docstring. ``weights`` [P] are normalised here (a zero vector gives zeros). With ``content``
    [L] bool, shares are of the flow from those positions alone (no residual, no template)."""
    w = weights.float() / (weights.float().sum() + 1e-12)
    y = (block.x_mid * w.view(-1, 1)).sum(0)
    resid = (block.x_prev * w.view(-1, 1)).sum(0)
    y_l1 = y.abs().sum()
    resid_prox = torch.clamp(y_l1 - (resid - y).abs().sum(), min=0.0)
    alpha = (block.probs * w.view(1, -1, 1)).sum(1)  # [heads, L]
    length = block.values.shape[0]
    heads = alpha.shape[0]
    numer = torch.zeros(length, dtype=torch.float32, device=y.device)
    step = _chunk(heads, y.shape[0])
    for start in range(0, length, step):
        stop = min(length, start + step)
        parts = _contributions(attn, block.values, start, stop)
        parts = parts * alpha[:, start:stop].T.unsqueeze(-1)
        prox = torch.clamp(y_l1 - (parts - y).abs().sum(-1), min=0.0)
        numer[start:stop] = prox.sum(-1)
    if content is not None:
        return numer / (numer[content].sum() + 1e-12)
    return numer / (numer.sum() + resid_prox + 1e-12)


def row_importance(attn: nn.Module, block: _Block, content: torch.Tensor | None = None
                   ) -> torch.Tensor:
    """One block's token importances [P, L] for every sink row on its own (``content`` as in
    :func:`span_importance`)."""
    y = block.x_mid  # [P, d]
    y_l1 = y.abs().sum(-1)
    resid_prox = torch.clamp(y_l1 - (block.x_prev - y).abs().sum(-1), min=0.0)
    length = block.values.shape[0]
    heads, rows = block.probs.shape[0], block.probs.shape[1]
    numer = torch.zeros(rows, length, dtype=torch.float32, device=y.device)
    step = _chunk(heads, y.shape[1], rows)
    for start in range(0, length, step):
        stop = min(length, start + step)
        parts = _contributions(attn, block.values, start, stop)  # [J, heads, d]
        alpha = block.probs[:, :, start:stop].permute(1, 2, 0)  # [P, J, heads]
        dist = (alpha.unsqueeze(-1) * parts.unsqueeze(0) - y.view(rows, 1, 1, -1)).abs().sum(-1)
        numer[:, start:stop] = torch.clamp(y_l1.view(-1, 1, 1) - dist, min=0.0).sum(-1)
    if content is not None:
        return numer / (numer[:, content].sum(-1, keepdim=True) + 1e-12)
    return numer / (numer.sum(-1, keepdim=True) + resid_prox.view(-1, 1) + 1e-12)


def parse_span(spec: str, n_answer: int | None) -> tuple[int, int]:
    """``all`` or ``START:END`` (answer-token indices from 0, END included). With ``n_answer``
    None (no answer yet) only the form is checked."""
    text = str(spec).strip().lower()
    limit = float("inf") if n_answer is None else n_answer
    if text == "all":
        return 0, (-1 if n_answer is None else n_answer - 1)
    try:
        start, end = (int(part) for part in text.split(":"))
    except ValueError:
        start, end = -1, -1
    if not 0 <= start <= end < limit:
        within = "" if n_answer is None else f" < {n_answer}"
        raise InvalidSettingsError(
            f"span {spec!r}: use all or START:END with 0 <= START <= END{within} "
            "(answer-token indices, END included)")
    return start, end


def information_flow(
    model: Any,
    tokenizer: Any,
    problem: AttributionInput,
    *,
    hops: int = 1,
    stop_tokens: bool = True,
    sink: str = "answer",
    span: str = "all",
    normalise: str = "block",
    matrix: bool = False,
    state: TaskState | None = None,
) -> AttributionOutput:
    """FlashTrace-style information flow from the prompt to an answer span, in one forward.

    Returns ``sequence`` [n] (the multi-hop scores of the prompt tokens for the span),
    ``per_token`` [T, n] (with ``matrix``: each answer token as its own sink, no hops) and
    ``f_input`` [T]. Scores are shares of each block's update, summed over blocks: >= 0.
    """
    state = state or TaskState()
    if hops < 0:
        raise InvalidSettingsError(f"hops must be 0 or more (got {hops})")
    if sink not in SINKS:
        raise InvalidSettingsError(f"unknown sink {sink!r}; choose {' or '.join(SINKS)}")
    if normalise not in NORMALISE:
        raise InvalidSettingsError(
            f"unknown normalise {normalise!r}; choose {' or '.join(NORMALISE)}")
    n, n_answer = problem.prompt_ids.shape[0], problem.answer_ids.shape[0]
    first, last = parse_span(span, n_answer)
    device = problem.prompt_ids.device
    ids = torch.cat([problem.prompt_ids, problem.answer_ids])
    length = ids.shape[0]
    offset = n if sink == "answer" else n - 1
    span_rows = torch.arange(offset + first, offset + last + 1, device=device)
    answer_rows = torch.arange(offset, offset + n_answer, device=device)
    rows = answer_rows if matrix else span_rows
    span_in_rows = slice(first, last + 1) if matrix else slice(0, len(span_rows))

    keep = torch.ones(length, dtype=torch.float32, device=device)
    weights = torch.ones(len(span_rows), dtype=torch.float32, device=device)
    if stop_tokens:
        pieces = [tokenizer.decode([int(i)]) for i in ids.tolist()]
        stops = torch.tensor([is_stop_token(p) for p in pieces], device=device)
        # Template tokens too, as the package does given the same ids: a blank line of the
        # chat template gets no share, so the case's shares are the package's.
        keep[stops] = 0.0
        # The package reads each sink's stop flag from the answer token at the sink position.
        span_tokens = torch.arange(n + first, n + last + 1, device=device)
        flagged = stops[span_tokens]
        if not bool(flagged.all()):
            weights[flagged] = 0.0

    content = None
    if normalise == "content":  # the case and the answer; not the template, not the residual
        content = torch.ones(length, dtype=torch.bool, device=device)
        content[:n] = problem.attributable
    layers = decoder_layers(model)
    total_layers = len(layers)
    base_total = torch.zeros(length, dtype=torch.float32, device=device)
    per_token = torch.zeros(n_answer, length, dtype=torch.float32, device=device) \
        if matrix else None
    stored: list[_Block] = []

    def on_block(index: int, block: _Block) -> None:
        state.progressed("attribute", index + 1, total_layers * (1 + hops))
        attn = attention_module(layers[index])
        span_block = block.rows(span_in_rows)
        base_total.add_(span_importance(attn, span_block, weights, content))
        if per_token is not None:
            per_token.add_(row_importance(attn, block, content))
        if hops:
            stored.append(span_block)

    with torch.no_grad(), cancellable(model, state):
        logits = _forward(model, ids, rows, n, problem.prompt_cache, on_block)
    log_probs = torch.log_softmax(logits.double(), dim=-1)
    f_input = log_probs.gather(-1, problem.answer_ids.view(-1, 1)).squeeze(-1).cpu()

    base_total = torch.nan_to_num(base_total) * keep
    observed = torch.zeros(length, dtype=torch.float32, device=device)
    observed[:n] = 1.0  # the prompt, all of it (also the sink row of a "predicting" span)
    observed *= keep
    total = base_total * observed
    current = base_total
    ratio = _through_span(current, span_rows)
    with torch.no_grad():
        for hop in range(hops):
            through = current[span_rows]
            if float(through.sum()) <= 0.0 or ratio <= 0.0:
                break
            hop_total = torch.zeros(length, dtype=torch.float32, device=device)
            for index, block in enumerate(stored):
                state.check()
                hop_total.add_(span_importance(attention_module(layers[index]), block, through,
                                               content))
                state.progressed("attribute", total_layers * (1 + hop) + index + 1,
                                 total_layers * (1 + hops))
            hop_total = torch.nan_to_num(hop_total) * keep
            total += hop_total * observed * ratio
            ratio *= _through_span(hop_total, span_rows)
            current = hop_total
    sequence = total[:n].double().cpu()
    rows_out = None
    if per_token is not None:
        rows_out = (torch.nan_to_num(per_token) * keep)[:, :n].double().cpu()
    return AttributionOutput(sequence, rows_out, f_input)


def _through_span(total: torch.Tensor, span_rows: torch.Tensor) -> float:
    """Share of ``total`` that sits on the span's own positions."""
    denominator = float(total.sum())
    return float(total[span_rows].sum()) / (denominator + 1e-12) if denominator > 0 else 0.0


def cost(size: Size, params: dict[str, Any]) -> Cost:
    # The block-wise contributions cost about one attention pass per hop (and T for the matrix).
    extra = int(params.get("hops", 0)) + (size.answer if params.get("matrix") else 0)
    return Cost(forwards=1 + math.ceil(extra / 8), backwards=0, tokens=size.prompt + size.answer)


PARAMS = (
    Param("sink", "answer", "answer (the package's: the answer tokens' positions) or predicting "
                            "(the positions that predict them)", check=one_of("sink", *SINKS)),
    Param("span", "all", "answer tokens to explain: all or START:END (from 0, END included)",
          check=lambda spec: parse_span(spec, None)),
    Param("normalise", "block", "block (the package's: shares of each block's whole update) or "
                                "content (shares of the flow from the case and the answer "
                                "only, so blocks where attention sinks dominate count alike)",
          check=one_of("normalise", *NORMALISE)),
    Param("matrix", False, "also compute the per-answer-token matrix (each token its own sink)"),
)
