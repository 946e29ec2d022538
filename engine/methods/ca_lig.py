"""Context-Aware Layer-wise Integrated Gradients (``ca-lig``, Mersha & Kalita 2026).

No code or equations are public; this is our reading, stated in full.

For answer token t (target position p = n - 1 + t) and each chosen block l:

1. LIG^l_t: Integrated Gradients on block l's input, from its activation in the baseline run
   (case tokens at the baseline embedding) to its activation in the real run, Gauss-Legendre
   points, summed over hidden dims: one score per position of the context. Completeness holds
   per block: sum over positions of LIG^l_t = F_t(x) - F_t(baseline), for every l.
2. G^l_t: gradient-weighted attention of block l (Chefer et al. 2021), the mean over heads of
   (dF_t/dA_h * A_h)^+, row p.
3. r^l_t = lambda LIG^l_t + (1 - lambda) G^l_t * (sum LIG^l_t / sum G^l_t): the attention term
   is rescaled to the same total as the IG term, so both speak in log-probability units.
4. Relevance rollout: relevance at block l's input is carried down to the tokens through the
   attention of the blocks below, rho <- rho A_hat^(l-1), A_hat = rownorm(0.5 mean_h A + 0.5 I)
   (Abnar & Zuidema), adding r^l on the way at each chosen block; the result is averaged over
   the chosen blocks. Rows of A_hat sum to 1, so the total is kept: the scores over the whole
   context sum to the mean over blocks of sum LIG^l_t, i.e. F_t(x) - F_t(baseline) up to the
   quadrature error, which is the completeness error reported.

Signed. Part of the relevance lands on template and earlier answer positions, which are not
shown, so the case tokens' scores need not sum to F_t(x) - F_t(baseline). Blocks after the
injection point run on the interpolation batch; blocks before it run once on the real input.

Cost: |layers| x steps forwards (through blocks l..L only) and |layers| x steps x T backwards,
plus 3 forwards and T backwards for the attention; over n + T - 1 tokens.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import torch

from engine.errors import InvalidSettingsError
from engine.methods._attention import (
    capture_attention,
    check_layers,
    eager_attention,
    parse_layers,
)
from engine.methods._paths import (
    EmbeddedProblem,
    accumulation_dtype,
    embed_problem,
    endpoint_log_probs,
    gauss_legendre,
    integrate,
    path_points,
    relative_completeness_error,
)
from engine.methods.base import (
    AttributionInput,
    AttributionOutput,
    Cost,
    MethodSpec,
    Param,
    Size,
    answer_log_probs,
    auto_batch_size,
    cancellable,
    check_steps,
    decoder_layers,
)
from engine.task import SubTask, TaskState


@contextlib.contextmanager
def _replaced_input(block: torch.nn.Module, hidden: torch.Tensor) -> Iterator[None]:
    """Feed ``hidden`` to ``block`` in place of what the block below computed."""

    def swap(module: Any, args: tuple, kwargs: dict) -> tuple[tuple, dict]:
        if args:
            return (hidden, *args[1:]), kwargs
        return args, {**kwargs, "hidden_states": hidden}

    handle = block.register_forward_pre_hook(swap, with_kwargs=True)
    try:
        yield
    finally:
        handle.remove()


def block_inputs(model: Any, emb: EmbeddedProblem, layers: list[int]
                 ) -> dict[int, tuple[torch.Tensor, torch.Tensor]]:
    """(real, baseline) input activations [L, d] of each chosen block."""
    blocks = decoder_layers(model)
    found: dict[int, torch.Tensor] = {}
    handles = []
    for index in layers:
        def keep(module: Any, args: tuple, kwargs: dict, index: int = index) -> None:
            found[index] = (args[0] if args else kwargs["hidden_states"]).detach()
        handles.append(blocks[index].register_forward_pre_hook(keep, with_kwargs=True))
    try:
        with torch.no_grad():
            answer_log_probs(model, torch.stack([emb.real, emb.base]), emb.answer_ids)
    finally:
        for handle in handles:
            handle.remove()
    return {index: (found[index][0], found[index][1]) for index in layers}


def layer_integrated_gradients(model: Any, emb: EmbeddedProblem, layer: int, steps: int,
                               batch_size: int | None, state: TaskState,
                               inputs: tuple[torch.Tensor, torch.Tensor] | None = None
                               ) -> torch.Tensor:
    """LIG^l [T, L]: IG of each F_t on block ``layer``'s input, summed over hidden dims."""
    real, base = inputs or block_inputs(model, emb, [layer])[layer]
    block = decoder_layers(model)[layer]
    weights, alphas = gauss_legendre(steps)
    device = real.device
    acc = accumulation_dtype(device)
    delta = real - base
    delta_acc = delta.to(acc)

    def forward(hidden: torch.Tensor) -> torch.Tensor:
        with _replaced_input(block, hidden):
            return answer_log_probs(model, emb.real[None], emb.answer_ids)

    def points(start: int, stop: int) -> torch.Tensor:
        return path_points(base, delta, alphas[start:stop])

    def reduce(grad: torch.Tensor, start: int, stop: int) -> torch.Tensor:
        w = weights[start:stop].to(device, acc).view(-1, 1, 1)
        return ((grad.to(acc) * w).sum(0) * delta_acc).sum(-1)

    n_answer = len(emb.answer_ids)
    return integrate(forward, points, reduce, steps, n_answer=n_answer, width=real.shape[0],
                     matrix=True, batch_size=batch_size,
                     estimate=lambda: auto_batch_size(model, real.shape[0], n_answer, steps),
                     state=state, model=model, what=f"layer IG on block {layer}")


def attention_relevance(model: Any, emb: EmbeddedProblem, layers: list[int], state: TaskState
                        ) -> tuple[dict[int, torch.Tensor], list[torch.Tensor]]:
    """G^l [T, L] for the chosen blocks, and A_hat [L, L] of every block (float64, CPU)."""
    n_answer = len(emb.answer_ids)
    count = len(decoder_layers(model))
    targets = torch.arange(emb.n - 1, emb.n - 1 + n_answer)
    relevance: dict[int, list[torch.Tensor]] = {index: [] for index in layers}
    with eager_attention(model), capture_attention(model, range(count)) as capture, \
            cancellable(model, state), torch.enable_grad():
        x = emb.real[None].detach().requires_grad_(True)
        f = answer_log_probs(model, x, emb.answer_ids)[0]
        probs = [capture.tensors[index].probs for index in layers]
        for t in range(n_answer):
            grads = torch.autograd.grad(f[t], probs, retain_graph=t < n_answer - 1)
            for index, grad, prob in zip(layers, grads, probs, strict=True):
                row = (grad[0, :, targets[t]] * prob[0, :, targets[t]]).clamp_min(0).mean(0)
                relevance[index].append(row.detach().double().cpu())
            state.progressed("attention", t + 1, n_answer)
        rollout = []
        for index in range(count):
            mean = capture.tensors[index].probs[0].detach().mean(0).double().cpu()
            mixed = 0.5 * mean + 0.5 * torch.eye(mean.shape[0], dtype=torch.float64)
            rollout.append(mixed / mixed.sum(-1, keepdim=True))
    return {index: torch.stack(rows) for index, rows in relevance.items()}, rollout


def fuse_and_roll(lig: dict[int, torch.Tensor], relevance: dict[int, torch.Tensor],
                  rollout: list[torch.Tensor], mix: float) -> torch.Tensor:
    """Token relevance [T, L] from per-block LIG and attention relevance (steps 3 and 4)."""
    layers = sorted(lig)
    rho = torch.zeros_like(lig[layers[0]])
    for index in reversed(range(layers[-1] + 1)):
        if index in lig:
            scale = lig[index].sum(-1, keepdim=True) / relevance[index].sum(
                -1, keepdim=True).clamp_min(1e-30)
            rho = rho + mix * lig[index] + (1 - mix) * relevance[index] * scale
        if index > 0:
            rho = rho @ rollout[index - 1]
    return rho / len(layers)


def context_aware_lig(model: Any, tokenizer: Any, problem: AttributionInput, *, steps: int = 8,
                      layers: str = "every:4", mix: float = 0.5, baseline: str = "pad",
                      batch_size: int | None = None, state: TaskState | None = None
                      ) -> AttributionOutput:
    """CA-LIG per answer token over the prompt; see the module docstring."""
    state = state or TaskState()
    check_steps(steps, batch_size)
    if not 0 <= mix <= 1:
        raise InvalidSettingsError(f"mix (lambda) must be from 0 to 1 (got {mix})")
    chosen = parse_layers(layers, len(decoder_layers(model)))
    emb = embed_problem(model, tokenizer, problem, baseline)
    inputs = block_inputs(model, emb, chosen)
    relevance, rollout = attention_relevance(model, emb, chosen, state)
    units = steps * (1 + len(problem.answer_ids))  # what integrate() reports per block
    lig = {}
    for slot, index in enumerate(chosen):
        part = SubTask(state, "attribute", slot * units, len(chosen) * units)
        lig[index] = layer_integrated_gradients(model, emb, index, steps, batch_size, part,
                                                inputs[index])
    scores = fuse_and_roll(lig, relevance, rollout, mix)  # [T, L]
    f_input, f_baseline = endpoint_log_probs(model, emb)
    error = relative_completeness_error(float(scores.sum()), float((f_input - f_baseline).sum()))
    per_token = scores[:, :emb.n]
    return AttributionOutput(per_token.sum(0), per_token, f_input, f_baseline, error)


def _layer_count(spec: str, blocks: int = 30) -> int:
    """How many blocks ``layers`` names (``all`` assumes ``blocks``, the model being unknown)."""
    text = spec.strip().lower()
    if text.startswith("every:") and text.removeprefix("every:").isdigit():
        return max(1, int(text.removeprefix("every:")))
    if text == "all":
        return blocks
    return max(1, len([part for part in text.split(",") if part.strip()]))


def _cost(size: Size, params: dict[str, Any]) -> Cost:
    chosen = _layer_count(str(params.get("layers", "every:4")))
    steps = int(params.get("steps", 8))
    return Cost(forwards=chosen * steps + 3, backwards=chosen * steps * size.answer + size.answer,
                tokens=size.prompt + size.answer - 1)


SPEC = MethodSpec(
    name="ca-lig",
    description="Context-Aware Layer-wise IG: block-input IG fused with gradient-weighted "
                "attention, rolled out to the tokens",
    params=(
        Param("steps", 8, "Gauss-Legendre points per block"),
        Param("layers", "every:4", "blocks: every:K (K evenly spaced, the last included), all, "
                                   "last, or indices like 0,-1", check=check_layers),
        Param("mix", 0.5, "lambda: weight of the layer IG against the attention relevance"),
        Param("baseline", "pad", "pad (pad, else eos embedding), zero, or token:ID"),
        Param("batch_size", None, "interpolation points per forward (None: fit to memory)"),
    ),
    cost_formula="|layers| x steps + 3 forwards; |layers| x steps x T + T backwards; "
                 "over n + T - 1 tokens",
    cost=_cost,
    run=context_aware_lig,
)
