"""Faithfulness of an attribution: does the model's answer really rest on the top-scored words?

For answer token t, p_t = p(y_t | x, y_<t); the top k% are the highest-scored case tokens.

- log-odds (lower is better): log p_t with the top k% replaced by the baseline token, minus
  log p_t.
- comprehensiveness (higher is better): p_t minus p_t with the top k% deleted.
- sufficiency (lower is better): p_t minus p_t with only the top k% of the case kept (the
  template stays).
- Each as AOPC: the mean over k in ``PERCENTS``.
- Soft-NC / Soft-NS (Zhao & Aletras 2023, generative form as in ReAGent): scores min-max
  normalised to s_i in [0, 1] over the case (our reading); each embedding element of case token
  i kept with probability s_i (NS) or 1 - s_i (NC); D(p, q) = sqrt(sum_v (sqrt p_v -
  sqrt q_v)^2) / sqrt 2, the Hellinger distance over the whole next-token distribution (our
  reading: METHODS.md writes the sum without the square root, which ranges to sqrt 2, while
  1 - D is used as a similarity in [0, 1]); S0 = 1 - D with every case embedding zeroed;
  Soft-NS = max(0, (1 - D_NS) - S0) / (1 - S0), Soft-NC = D_NC / (1 - S0). Averaged over
  ``samples`` seeded masks.
- pi-Soft-NC / pi-Soft-NS (Grad-ELLM v2, our reading): keep (NS) or drop (NC) probabilities
  q_i = min(1, kappa (s_i + 1e-3)), kappa found by bisection so that mean q = pi; Soft-NS/NC at
  pi in ``PIS``; the area under each curve divided by the width of the pi range (so in [0, 1]).

Granularity ``sequence`` ranks case tokens by the sequence attribution, so one perturbed input
scores every answer token at once (one forward per perturbation); ``token`` ranks by each
answer token's own row (T inputs per perturbation, batched). Either way the metrics are
computed per answer token, then averaged.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch

from engine.defaults import PERCENTS
from engine.errors import InvalidSettingsError
from engine.methods.base import (
    CPU_SCORING_TOKENS_PER_PASS,
    AttributionInput,
    auto_batch_size,
    cache_keyword,
    cancellable,
    run_in_batches,
    run_in_sized_batches,
)
from engine.task import TaskState

PIS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)
METRICS = ("log_odds", "comprehensiveness", "sufficiency", "soft_nc", "soft_ns", "pi_soft_nc",
           "pi_soft_ns")
HIGHER_IS_BETTER = {"log_odds": False, "comprehensiveness": True, "sufficiency": False,
                    "soft_nc": True, "soft_ns": True, "pi_soft_nc": True, "pi_soft_ns": True}
SQRT2 = math.sqrt(2.0)


MAX_SAMPLES = 1_000  # random masks per Soft-NC/NS value (each is a forward per pi level)
MAX_SEED = 2**31 - 1


@dataclass(frozen=True)
class MetricSettings:
    percents: tuple[int, ...] = PERCENTS
    pis: tuple[float, ...] = PIS
    samples: int = 4
    seed: int = 0
    granularity: str = "sequence"  # or "token"
    soft: bool = True  # Soft-NC/NS and their pi versions (the costly part)

    def validate(self) -> None:
        if self.granularity not in ("sequence", "token"):
            raise InvalidSettingsError(
                f"unknown granularity {self.granularity!r}; choose sequence or token")
        if not 1 <= self.samples <= MAX_SAMPLES:
            raise InvalidSettingsError(f"samples must be from 1 to {MAX_SAMPLES:,} (got "
                                       f"{self.samples:,})")
        if not 0 <= self.seed <= MAX_SEED:
            raise InvalidSettingsError(f"the seed must be from 0 to {MAX_SEED:,} (got "
                                       f"{self.seed:,})")
        if not self.percents or any(not 0 < k <= 100 for k in self.percents):
            raise InvalidSettingsError("top-k percentages must be in (0, 100]")
        if any(not 0 < pi < 1 for pi in self.pis):
            raise InvalidSettingsError("pi values must be in (0, 1)")


@dataclass(frozen=True)
class Faithfulness:
    """Metric name -> value averaged over answer tokens; ``per_token`` the values per token;
    ``curves`` pi -> Soft-NC / Soft-NS (averaged over answer tokens)."""

    values: dict[str, float]
    per_token: dict[str, list[float]] = field(default_factory=dict)
    curves: dict[str, dict[float, float]] = field(default_factory=dict)
    by_percent: dict[str, dict[int, float]] = field(default_factory=dict)


def keep_probabilities(s: torch.Tensor, pi: float, iterations: int = 100) -> torch.Tensor:
    """q = min(1, kappa (s + 1e-3)) with kappa chosen by bisection so that mean(q) = pi."""
    s = s.double() + 1e-3
    low, high = 0.0, 1.0 / float(s.min())  # high: every q reaches 1, mean 1 >= pi
    for _ in range(iterations):
        kappa = (low + high) / 2
        if float(torch.clamp(kappa * s, max=1).mean()) < pi:
            low = kappa
        else:
            high = kappa
    return torch.clamp(high * s, max=1)


def normalise(scores: torch.Tensor) -> torch.Tensor:
    """Min-max to [0, 1] along the last axis (constant rows become 0.5)."""
    low = scores.amin(-1, keepdim=True)
    span = scores.amax(-1, keepdim=True) - low
    return torch.where(span > 0, (scores - low) / span.clamp_min(1e-30),
                       torch.full_like(scores, 0.5))


def hellinger(p_log: torch.Tensor, q_log: torch.Tensor) -> torch.Tensor:
    """Hellinger distance sqrt(sum_v (sqrt p_v - sqrt q_v)^2) / sqrt 2, in [0, 1], from
    log-probabilities [..., V]."""
    return ((p_log / 2).exp() - (q_log / 2).exp()).pow(2).sum(-1).sqrt() / SQRT2


class _Scorer:
    """Answer-token log-probabilities of perturbed prompts, batched to memory."""

    def __init__(self, model, problem: AttributionInput, batch_size: int | None,
                 state: TaskState) -> None:
        self.model, self.problem, self.state = model, problem, state
        self.batch_size = batch_size
        self.embedding = model.get_input_embeddings()
        self.answer = problem.answer_ids
        self.n_answer = len(problem.answer_ids)

    def _batched(self, count: int, length: int, work: Callable[[int, int], None]) -> None:
        run_in_batches(count, self.batch_size,
                       lambda: max(1, 2 * auto_batch_size(self.model, length, self.n_answer,
                                                          count)),
                       work, "the faithfulness check")

    def log_probs_of_ids(self, prompts: Sequence[torch.Tensor],
                         greedy: torch.Tensor | None = None) -> torch.Tensor:
        """log p(y_t | prompt', y_<t) [B, T] for prompts of any lengths.

        Every prompt shares with the unperturbed prompt the tokens before its first change (the
        chat template's head at least); those keys and values come from one forward over the
        unperturbed prompt, so each perturbed prompt runs only from its first change on. Rows
        run longest remainder first, so each batch is padded only to its own longest remainder
        (deleting or keeping the top words makes prompts of very different lengths). A prompt
        that occurs more than once runs once (an antithetic pair's "delete the top half" is the
        other's "keep the top half" when the case has an even number of tokens).
        """
        unique: dict[tuple[int, ...], int] = {}
        slots = [unique.setdefault(tuple(prompt.tolist()), len(unique)) for prompt in prompts]
        if len(unique) < len(prompts):
            found = None if greedy is None else torch.empty(len(unique), self.n_answer,
                                                            dtype=torch.bool)
            out = self.log_probs_of_ids([torch.tensor(ids, dtype=torch.long) for ids in unique],
                                        found)
            if greedy is not None:
                greedy[:] = found[slots]
            return out[slots]
        device = self.answer.device
        tails = self.answer[:-1]
        reference = self.problem.prompt_ids.cpu()
        prompts = [prompt.cpu() for prompt in prompts]
        # The first position that differs from the reference; at least the last prompt token
        # runs, since its logits predict the first answer token.
        shared = [min(_common_prefix(prompt, reference), len(prompt) - 1) for prompt in prompts]
        cache = self._prefix_cache(max(shared)) if max(shared) > 0 else None
        if cache is None:
            shared = [0] * len(prompts)
        order = sorted(range(len(prompts)), key=lambda i: -(len(prompts[i]) - shared[i]))
        out = torch.empty(len(prompts), self.n_answer, dtype=torch.float64)

        def work(start: int, stop: int) -> None:
            rows = order[start:stop]
            length = len(prompts[rows[0]]) - shared[rows[0]] + len(tails)
            past = max(shared[i] for i in rows)
            ids = torch.zeros(len(rows), length, dtype=torch.long)
            mask = torch.zeros(len(rows), past + length, dtype=torch.long)
            positions = torch.zeros(len(rows), length, dtype=torch.long)
            for row, i in enumerate(rows):
                rest = torch.cat([prompts[i][shared[i]:], tails.cpu()])
                ids[row, length - len(rest):] = rest
                # The reference's keys before this prompt's first change, then its own tokens
                # (right-aligned so that every row's answer sits at the same positions).
                mask[row, :shared[i]] = 1
                mask[row, past + length - len(rest):] = 1
                positions[row, length - len(rest):] = shared[i] + torch.arange(len(rest))
            extra = {}
            if cache is not None and past > 0:
                extra[cache_keyword(self.model)] = _expanded(cache, past, len(rows),
                                                             self.model.config)
            logits = self.model(input_ids=ids.to(device), attention_mask=mask.to(device),
                                position_ids=positions.to(device), use_cache=cache is not None,
                                logits_to_keep=self.n_answer, **extra).logits
            logp = torch.log_softmax(logits.to(torch.promote_types(logits.dtype,
                                                                   torch.float32)), -1)
            index = self.answer.view(1, -1, 1).expand(len(rows), -1, 1)
            out[rows] = logp.gather(-1, index).squeeze(-1).double().cpu()
            if greedy is not None:  # whether each answer token is the most likely one there
                greedy[rows] = (logp.argmax(-1) == self.answer.view(1, -1)).cpu()
            self.state.check()

        def rows_at(start: int) -> int:
            # Rows run longest first, so a batch's first row is its longest: later batches,
            # of shorter rows, hold more of them. Each row also holds a copy of the prefix's
            # keys and values (memory, not compute), and needs no activations for a backward.
            run = len(prompts[order[start]]) - shared[order[start]] + len(tails)
            return auto_batch_size(self.model, run + max(shared), self.n_answer,
                                   len(prompts) - start, run_len=run, memory_share=0.5,
                                   cpu_tokens=CPU_SCORING_TOKENS_PER_PASS)

        with torch.no_grad():
            run_in_sized_batches(len(prompts), self.batch_size, rows_at, work,
                                 "the faithfulness check")
        return out

    def _prefix_cache(self, length: int):
        """Keys and values of the unperturbed prompt's first ``length`` tokens, or None for a
        model whose cache is not one plain tensor per layer (sliding windows, for one)."""
        from transformers import DynamicCache, PreTrainedModel
        from transformers.cache_utils import DynamicLayer

        if not isinstance(self.model, PreTrainedModel):
            return None
        cache = DynamicCache(config=self.model.config)
        if any(type(layer) is not DynamicLayer for layer in cache.layers):
            return None
        ids = self.problem.prompt_ids[:length].view(1, -1)
        with torch.no_grad():
            self.model(input_ids=ids, use_cache=True, logits_to_keep=1,
                       **{cache_keyword(self.model): cache})
        return cache

    def distributions(self, count: int, length: int,
                      embeds_for: Callable[[int, int], torch.Tensor],
                      reduce: Callable[[torch.Tensor, int, int], None]) -> None:
        """Run embedded sequences ``embeds_for(start, stop)`` [b, L, d] for start:stop in
        range(count); ``reduce(log_probs [b, T, V], start, stop)`` takes each batch."""

        def work(start: int, stop: int) -> None:
            logits = self.model(inputs_embeds=embeds_for(start, stop), use_cache=False,
                                logits_to_keep=self.n_answer).logits
            reduce(torch.log_softmax(logits.to(torch.promote_types(logits.dtype,
                                                                   torch.float32)), -1),
                   start, stop)
            self.state.check()

        with torch.no_grad():
            self._batched(count, length, work)


def faithfulness(model, problem: AttributionInput, scores: torch.Tensor, baseline_id: int,
                 settings: MetricSettings | None = None, state: TaskState | None = None,
                 batch_size: int | None = None) -> Faithfulness:
    """Every metric for ``scores`` ([n] sequence or [T, n] per-token attribution)."""
    settings = settings or MetricSettings()
    settings.validate()
    state = state or TaskState()
    n, n_answer = len(problem.prompt_ids), len(problem.answer_ids)
    case = torch.nonzero(problem.attributable.cpu(), as_tuple=True)[0]
    if len(case) == 0:
        raise InvalidSettingsError("the case has no attributable tokens to evaluate")
    scores = scores.detach().double().cpu()
    if settings.granularity == "sequence" or scores.ndim == 1:
        rows = (scores if scores.ndim == 1 else scores.sum(0))[None]  # one ranking for all t
    else:
        if scores.shape != (n_answer, n):
            raise InvalidSettingsError("per-token scores must be [answer tokens, prompt tokens]")
        rows = scores
    case_scores = rows[:, case]  # [R, n_case], R = 1 or T
    scorer = _Scorer(model, problem, batch_size, state)
    prompt = problem.prompt_ids.cpu()
    pick = _picker(rows.shape[0] == 1)

    with cancellable(model, state):
        reference = scorer.log_probs_of_ids([prompt])[0]  # [T]
        p = reference.exp()
        order = case[case_scores.argsort(dim=-1, descending=True)]  # [R, n_case] positions
        values: dict[str, float] = {}
        per_token: dict[str, list[float]] = {}
        by_percent: dict[str, dict[int, float]] = {"log_odds": {}, "comprehensiveness": {},
                                                   "sufficiency": {}}
        kinds = ("replace", "delete", "keep")
        plan = [(k, kind) for k in settings.percents for kind in kinds]
        prompts = []
        for k, kind in plan:
            count = max(1, math.ceil(k / 100 * len(case)))
            for r in range(rows.shape[0]):
                prompts.append(_perturbed(prompt, order[r, :count], case, kind, baseline_id))
        state.progressed("evaluate", 1, 2)
        results = scorer.log_probs_of_ids(prompts).view(len(plan), rows.shape[0], n_answer)
        sums = {name: torch.zeros(n_answer, dtype=torch.float64) for name in by_percent}
        for (k, kind), logp in zip(plan, results, strict=True):
            got = pick(logp)
            name, value = {
                "replace": ("log_odds", got - reference),
                "delete": ("comprehensiveness", p - got.exp()),
                "keep": ("sufficiency", p - got.exp()),
            }[kind]
            by_percent[name][k] = float(value.mean())
            sums[name] += value / len(settings.percents)
        for name, total in sums.items():
            values[name] = float(total.mean())
            per_token[name] = total.tolist()
        curves: dict[str, dict[float, float]] = {}
        if settings.soft:
            soft = soft_metrics(model, problem, normalise(case_scores), settings, state,
                                batch_size)
            for name, (mean, tokens) in soft.items():
                if name.startswith("curve:"):
                    curves[name.removeprefix("curve:")] = mean  # type: ignore[assignment]
                else:
                    values[name], per_token[name] = mean, tokens  # type: ignore[assignment]
        state.progressed("evaluate", 2, 2)
    return Faithfulness(values, per_token, curves, by_percent)


DELETIONS = ("delete", "keep")  # comprehensiveness deletes the top words, sufficiency keeps them


def deletion_aopc(model, problem: AttributionInput, rankings: Sequence[torch.Tensor],
                  percents: Sequence[int] = PERCENTS, state: TaskState | None = None,
                  batch_size: int | None = None,
                  kinds: Sequence[str] = DELETIONS) -> list[tuple[float, ...]]:
    """For each whole-answer ranking [n], its AOPC for each of ``kinds`` ("delete":
    comprehensiveness, "keep": sufficiency; both by default, in that order), exactly as
    :func:`faithfulness` computes them, sharing one reference forward and one batched pass
    over every ranking's perturbed prompts (1 + len(kinds) x levels x rankings prompts: the
    reliability check's 31 by default)."""
    aopc = deletion_drops(model, problem, rankings, percents, state, batch_size, kinds).mean(1)
    return [tuple(float(value) for value in ranking) for ranking in aopc]


def deletion_drops(model, problem: AttributionInput, rankings: Sequence[torch.Tensor],
                   percents: Sequence[int] = PERCENTS, state: TaskState | None = None,
                   batch_size: int | None = None,
                   kinds: Sequence[str] = DELETIONS) -> torch.Tensor:
    """[R, K, len(kinds)]: for each ranking and each percent k, the mean drop of the answer
    tokens' probability when its top k% of the case is deleted (comprehensiveness) or kept
    alone (sufficiency); their mean over k is :func:`deletion_aopc`."""
    state = state or TaskState()
    prompts = perturbed_prompts(problem, rankings, percents, kinds)
    scorer = _Scorer(model, problem, batch_size, state)
    with cancellable(model, state):
        logp = scorer.log_probs_of_ids(prompts)
    p = logp[0].exp()
    drops = (p - logp[1:].exp()).view(len(rankings), len(percents), len(kinds), -1)
    return drops.mean(-1)


def perturbed_prompts(problem: AttributionInput, rankings: Sequence[torch.Tensor],
                      percents: Sequence[int] = PERCENTS,
                      kinds: Sequence[str] = DELETIONS) -> list[torch.Tensor]:
    """The unperturbed prompt, then for each ranking and percent k the prompt with its top k%
    of the case deleted and with only those kept, or those of ``kinds`` (ranking-major, then
    k, then the kinds)."""
    if not kinds or any(kind not in DELETIONS for kind in kinds):
        raise ValueError(f"deletion kinds must be some of {DELETIONS} (got {tuple(kinds)})")
    case = torch.nonzero(problem.attributable.cpu(), as_tuple=True)[0]
    if len(case) == 0:
        raise InvalidSettingsError("the case has no attributable tokens to evaluate")
    prompt = problem.prompt_ids.cpu()
    prompts = [prompt]
    for scores in rankings:
        order = case[scores.detach().double().cpu()[case].argsort(descending=True)]
        for k in percents:
            count = max(1, math.ceil(k / 100 * len(case)))
            prompts += [_perturbed(prompt, order[:count], case, kind, baseline_id=-1)
                        for kind in kinds]
    return prompts


def tokens_to_run(problem: AttributionInput, prompts: Sequence[torch.Tensor]) -> list[int]:
    """For each prompt, the tokens a forward runs when it starts from the prompt's first
    difference from ``problem``'s (the cached keys and values before it are shared): its own
    tokens from there, and the answer's."""
    reference = problem.prompt_ids.cpu()
    tails = len(problem.answer_ids) - 1
    return [len(prompt) - min(_common_prefix(prompt.cpu(), reference), len(prompt) - 1) + tails
            for prompt in prompts]


def answer_log_probs(model, problem: AttributionInput, prompts: Sequence[torch.Tensor], *,
                     state: TaskState | None = None, batch_size: int | None = None,
                     greedy: torch.Tensor | None = None) -> torch.Tensor:
    """log p(y_t | prompt', y_<t) [len(prompts), T] of ``problem``'s answer after each prompt
    (token ids of any lengths): batched, each prompt run only from its first difference from
    ``problem``'s prompt on, on that prompt's cached keys and values. With ``greedy`` (a bool
    tensor [len(prompts), T]) it is also filled with whether each answer token is the most
    likely next token there: the greedy answer after a prompt is the same answer exactly when
    its row is all true."""
    state = state or TaskState()
    with cancellable(model, state):
        return _Scorer(model, problem, batch_size, state).log_probs_of_ids(prompts, greedy)


def _common_prefix(a: torch.Tensor, b: torch.Tensor) -> int:
    """How many leading tokens ``a`` and ``b`` share."""
    n = min(len(a), len(b))
    differ = torch.nonzero(a[:n] != b[:n])
    return int(differ[0]) if len(differ) else n


def _expanded(cache, length: int, batch: int, config):
    """A fresh cache holding ``cache``'s first ``length`` positions for each of ``batch`` rows;
    ``cache`` itself is never extended. The rows are expanded views, but the cache's update
    concatenates them, so each batch holds its own copy of the prefix: the batch size is
    planned for the prefix's length as well (``_batched`` is given it)."""
    from transformers import DynamicCache

    rows = DynamicCache(config=config)
    for index, layer in enumerate(cache.layers):
        rows.update(layer.keys[..., :length, :].expand(batch, -1, -1, -1),
                    layer.values[..., :length, :].expand(batch, -1, -1, -1), index)
    return rows


def _picker(shared: bool) -> Callable[[torch.Tensor], torch.Tensor]:
    """[R, T] -> [T]: for each answer token t, the value under the ranking made for t."""
    return (lambda values: values[0]) if shared else (lambda values: values.diagonal())


def _perturbed(prompt: torch.Tensor, top: torch.Tensor, case: torch.Tensor, kind: str,
               baseline_id: int) -> torch.Tensor:
    if kind == "replace":
        changed = prompt.clone()
        changed[top] = baseline_id
        return changed
    keep = torch.ones(len(prompt), dtype=torch.bool)
    if kind == "delete":
        keep[top] = False
    else:  # keep only the top tokens of the case (and the template)
        keep[case] = False
        keep[top] = True
    return prompt[keep]


def soft_metrics(model, problem: AttributionInput, s: torch.Tensor,
                 settings: MetricSettings | None = None, state: TaskState | None = None,
                 batch_size: int | None = None) -> dict[str, tuple]:
    """Soft-NC/NS and pi-Soft-NC/NS: name -> (mean over answer tokens, per-token list), and
    ``curve:pi_soft_ns`` / ``curve:pi_soft_nc`` -> ({pi: value}, None).

    ``s`` [R, n_case] are scores in [0, 1] over the case tokens: one row shared by every answer
    token (R = 1) or one row per answer token (R = T).
    """
    settings = settings or MetricSettings()
    scorer = _Scorer(model, problem, batch_size, state or TaskState())
    pick = _picker(s.shape[0] == 1)
    case = torch.nonzero(problem.attributable.cpu(), as_tuple=True)[0]
    ids = torch.cat([problem.prompt_ids, problem.answer_ids[:-1]])
    with torch.no_grad():
        real = model.get_input_embeddings()(ids)  # [L, d]
    device, dtype = real.device, real.dtype
    rows, width = s.shape[0], real.shape[-1]
    on_device = case.to(device)

    # Every masked input of the evaluation: (name, keep probability per case token [R, n_case]).
    variants: list[tuple[str, torch.Tensor]] = [("reference", torch.ones_like(s)),
                                                ("zero", torch.zeros_like(s))]
    for _ in range(settings.samples):
        variants += [("ns", s), ("nc", 1 - s)]
    for pi in settings.pis:
        q = torch.stack([keep_probabilities(row, pi) for row in s])
        for _ in range(settings.samples):
            variants += [(f"ns@{pi}", q), (f"nc@{pi}", 1 - q)]
    count = len(variants) * rows

    def embeds_for(start: int, stop: int) -> torch.Tensor:
        # Each mask has its own seed, so batching (and redoing a batch) changes nothing.
        x = real.expand(stop - start, -1, -1).clone()
        for slot, flat in enumerate(range(start, stop)):
            variant, row = divmod(flat, rows)
            generator = torch.Generator().manual_seed(settings.seed * 1_000_003 + flat)
            draw = torch.rand(len(case), width, generator=generator, dtype=torch.float64)
            keep = (draw < variants[variant][1][row][:, None]).to(device, dtype)
            x[slot, on_device] = x[slot, on_device] * keep
        return x

    log_probs: dict[int, torch.Tensor] = {}
    distances = torch.empty(count, len(problem.answer_ids), dtype=torch.float64)

    def reduce(logp: torch.Tensor, start: int, stop: int) -> None:
        if start == 0:
            log_probs[0] = logp[0]  # the reference: nothing masked
        distances[start:stop] = hellinger(log_probs[0][None], logp).double().cpu()

    scorer.distributions(count, len(ids), embeds_for, reduce)
    picked = torch.stack([pick(d) for d in distances.view(len(variants), rows, -1)])  # [V, T]
    names = [name for name, _ in variants]

    def samples_of(name: str) -> torch.Tensor:  # [samples, T]
        return torch.stack([picked[i] for i, other in enumerate(names) if other == name])

    s0 = 1 - picked[names.index("zero")]
    room = (1 - s0).clamp_min(1e-12)

    def soft_ns(d: torch.Tensor) -> torch.Tensor:
        return (((1 - d) - s0).clamp_min(0) / room).mean(0)

    def soft_nc(d: torch.Tensor) -> torch.Tensor:
        return (d / room).clamp(0, 1).mean(0)

    pis = torch.tensor(settings.pis, dtype=torch.float64)

    def area(curve: torch.Tensor) -> torch.Tensor:  # [P, T] -> [T], divided by the pi range
        if len(pis) == 1:
            return curve[0]
        return torch.trapezoid(curve, pis, dim=0) / float(pis[-1] - pis[0])

    out: dict[str, tuple] = {}
    for name, metric in (("ns", soft_ns), ("nc", soft_nc)):
        plain = metric(samples_of(name))
        curve = torch.stack([metric(samples_of(f"{name}@{pi}")) for pi in settings.pis])
        out[f"soft_{name}"] = (float(plain.mean()), plain.tolist())
        out[f"pi_soft_{name}"] = (float(area(curve).mean()), area(curve).tolist())
        out[f"curve:pi_soft_{name}"] = (
            {pi: float(v) for pi, v in zip(settings.pis, curve.mean(1), strict=True)}, None)
    return out


def random_scores(shape: Sequence[int], seed: int) -> torch.Tensor:
    """The reference attribution: uniform random scores, seeded."""
    generator = torch.Generator().manual_seed(seed)
    return torch.rand(*shape, generator=generator, dtype=torch.float64)
