"""Faithfulness metrics: the identities of METHODS.md, a model whose true evidence is known,
determinism under a seed."""

from __future__ import annotations

import types

import pytest
import torch
from tiny import CASE

from engine.errors import InvalidSettingsError
from engine.methods import AttributionInput
from engine.metrics import (
    METRICS,
    MetricSettings,
    faithfulness,
    keep_probabilities,
    random_scores,
    soft_metrics,
)
from engine.prompting import build_prompt


class EvidenceModel(torch.nn.Module):
    """A causal bag-of-words language model whose answer rests only on known token ids.

    The state at position t is the sum of the embeddings of tokens 0..t (padding masked out);
    only ``evidence`` ids have non-zero embeddings in the directions the head reads, so those
    tokens, and no others, move the answer's probability.
    """

    def __init__(self, vocab: int, evidence: list[int], width: int = 16) -> None:
        super().__init__()
        generator = torch.Generator().manual_seed(0)
        weight = 0.01 * torch.randn(vocab, width, generator=generator, dtype=torch.float64)
        weight[evidence] = 3 * torch.randn(len(evidence), width, generator=generator,
                                           dtype=torch.float64)
        self.embed = torch.nn.Embedding(vocab, width, _weight=weight)
        self.head = torch.nn.Linear(width, vocab, bias=False, dtype=torch.float64)
        with torch.no_grad():
            self.head.weight.copy_(torch.randn(vocab, width, generator=generator,
                                               dtype=torch.float64))
        self.layers = torch.nn.ModuleList([torch.nn.Identity()])
        self.config = types.SimpleNamespace(num_hidden_layers=1, hidden_size=width,
                                            intermediate_size=width, num_attention_heads=1,
                                            vocab_size=vocab)

    def get_input_embeddings(self) -> torch.nn.Embedding:
        return self.embed

    def forward(self, input_ids=None, inputs_embeds=None, attention_mask=None, logits_to_keep=0,
                **_unused):
        x = self.embed(input_ids) if inputs_embeds is None else inputs_embeds
        if attention_mask is not None:
            x = x * attention_mask[..., None]
        hidden = self.layers[0](x.cumsum(1))
        logits = self.head(hidden[:, -logits_to_keep:] if logits_to_keep else hidden)
        return types.SimpleNamespace(logits=logits)


def _problem(tokenizer) -> tuple[AttributionInput, list[int]]:
    prompt = build_prompt(tokenizer, CASE, system_prompt="you are clinical assistant")
    answer = tokenizer.encode("recommend endocrine therapy", add_special_tokens=False)
    problem = AttributionInput(torch.tensor(prompt.token_ids), torch.tensor(prompt.attributable),
                               torch.tensor(answer))
    evidence = tokenizer.convert_tokens_to_ids(["ER", "HER2", "carcinoma", "node"])
    return problem, evidence


def test_keep_probabilities_have_mean_pi():
    generator = torch.Generator().manual_seed(3)
    for s in (torch.rand(40, generator=generator, dtype=torch.float64),
              torch.zeros(7, dtype=torch.float64), torch.tensor([0.0, 0.0, 1.0, 0.2])):
        for pi in (0.1, 0.33, 0.5, 0.9):
            q = keep_probabilities(s, pi)
            assert float(q.mean()) == pytest.approx(pi, abs=1e-6)
            assert float(q.min()) >= 0 and float(q.max()) <= 1


@pytest.mark.parametrize("value, expected", [(1.0, 1.0), (0.0, 0.0)])
def test_soft_metrics_at_the_extremes(tiny_tokenizer, tiny_model, value, expected):
    problem, _ = _problem(tiny_tokenizer)
    n_case = int(problem.attributable.sum())
    s = torch.full((1, n_case), value, dtype=torch.float64)
    out = soft_metrics(tiny_model, problem, s, MetricSettings(samples=2, pis=(0.5,)))
    assert out["soft_ns"][0] == pytest.approx(expected, abs=1e-9)
    assert out["soft_nc"][0] == pytest.approx(expected, abs=1e-9)


def _greedy(model, prompt_ids: torch.Tensor, count: int) -> torch.Tensor:
    ids = prompt_ids.clone()
    for _ in range(count):
        logits = model(input_ids=ids[None], logits_to_keep=1).logits
        ids = torch.cat([ids, logits[0, -1].argmax()[None]])
    return ids[len(prompt_ids):]


def test_true_evidence_beats_random_on_every_metric(tiny_tokenizer):
    problem, evidence = _problem(tiny_tokenizer)
    model = EvidenceModel(len(tiny_tokenizer), evidence)
    # The model's own answer, as in the product: it rests on the evidence tokens.
    problem = AttributionInput(problem.prompt_ids, problem.attributable,
                               _greedy(model, problem.prompt_ids, 3))
    truth = torch.isin(problem.prompt_ids, torch.tensor(evidence)).double()
    truth = truth * problem.attributable
    assert truth.sum() >= 4
    settings = MetricSettings(samples=3)
    perfect = faithfulness(model, problem, truth, tiny_tokenizer.pad_token_id, settings)
    chance = faithfulness(model, problem, random_scores(truth.shape, seed=1),
                          tiny_tokenizer.pad_token_id, settings)
    assert set(perfect.values) == set(METRICS)
    assert perfect.values["log_odds"] < chance.values["log_odds"]
    assert perfect.values["comprehensiveness"] > chance.values["comprehensiveness"]
    assert perfect.values["sufficiency"] < chance.values["sufficiency"]
    for name in ("soft_ns", "pi_soft_nc", "pi_soft_ns"):
        assert perfect.values[name] > chance.values[name] + 0.1, name
    # Plain Soft-NC saturates here for both: dropping about half of every token's elements at
    # random already removes the evidence. The pi version tells them apart (above).
    assert perfect.values["soft_nc"] > 0.95 and chance.values["soft_nc"] > 0.95
    assert len(perfect.per_token["comprehensiveness"]) == len(problem.answer_ids)
    assert set(perfect.curves["pi_soft_ns"]) == set(settings.pis)
    assert set(perfect.by_percent["sufficiency"]) == set(settings.percents)


def test_metrics_are_deterministic_under_a_seed_and_batching(tiny_tokenizer, tiny_model):
    problem, _ = _problem(tiny_tokenizer)
    scores = random_scores((len(problem.answer_ids), len(problem.prompt_ids)), seed=5)
    settings = MetricSettings(samples=2, pis=(0.2, 0.6), granularity="token")
    first = faithfulness(tiny_model, problem, scores, 0, settings)
    again = faithfulness(tiny_model, problem, scores, 0, settings, batch_size=3)
    for name in METRICS:
        assert first.values[name] == pytest.approx(again.values[name], rel=1e-9, abs=1e-12)
    other = faithfulness(tiny_model, problem, scores, 0,
                         MetricSettings(samples=2, pis=(0.2, 0.6), granularity="token", seed=9))
    assert other.values["soft_ns"] != first.values["soft_ns"]
    assert other.values["comprehensiveness"] == first.values["comprehensiveness"]
    sequence = faithfulness(tiny_model, problem, scores, 0, MetricSettings(samples=2, pis=(0.2,)))
    assert sequence.values["sufficiency"] != first.values["sufficiency"]


def test_impossible_metric_settings(tiny_tokenizer, tiny_model):
    problem, _ = _problem(tiny_tokenizer)
    scores = torch.zeros(len(problem.prompt_ids))
    for settings, message in ((MetricSettings(granularity="word"), "granularity"),
                              (MetricSettings(samples=0), "samples"),
                              (MetricSettings(percents=(0,)), "percentages"),
                              (MetricSettings(pis=(1.0,)), "pi")):
        with pytest.raises(InvalidSettingsError, match=message):
            faithfulness(tiny_model, problem, scores, 0, settings)


def test_perturbed_prompts_reuse_the_unchanged_prefix_exactly(tiny_tokenizer, tiny_model):
    """Each perturbed prompt runs only from its first change, on the unperturbed prompt's
    keys and values: the log-probabilities equal a plain forward over each whole prompt."""
    from engine.metrics import _perturbed, _Scorer
    from engine.task import TaskState

    problem, _ = _problem(tiny_tokenizer)
    case = torch.nonzero(problem.attributable, as_tuple=True)[0]
    prompt = problem.prompt_ids
    order = case[random_scores((len(prompt),), seed=3)[case].argsort(descending=True)]
    prompts = [prompt, prompt[:-1].clone()]
    for count in (1, 3, len(case) // 2):
        prompts += [_perturbed(prompt, order[:count], case, kind, 0)
                    for kind in ("replace", "delete", "keep")]
    prompts.append(_perturbed(prompt, case[-1:], case, "delete", 0))  # changes late
    shared = _Scorer(tiny_model, problem, None, TaskState()).log_probs_of_ids(prompts)
    for row, ids in enumerate(prompts):
        sequence = torch.cat([ids, problem.answer_ids[:-1]])
        with torch.no_grad():
            logits = tiny_model(input_ids=sequence[None], use_cache=False).logits[0]
        logp = torch.log_softmax(logits[len(ids) - 1:].double(), -1)
        expected = logp.gather(-1, problem.answer_ids.view(-1, 1)).squeeze(-1)
        assert torch.allclose(shared[row], expected, atol=1e-5), row


def test_a_prompt_given_twice_runs_once_with_the_same_result(tiny_tokenizer, tiny_model):
    """An antithetic pair's "delete the top half" is the other's "keep the top half" on a case
    of even length: such a prompt runs once, and every copy gets its figures."""
    from engine.metrics import _perturbed, _Scorer
    from engine.task import TaskState

    problem, _ = _problem(tiny_tokenizer)
    case = torch.nonzero(problem.attributable, as_tuple=True)[0][:-1]
    case = case[: len(case) // 2 * 2]  # even
    scores = random_scores((len(problem.prompt_ids),), seed=5)
    halves = [_perturbed(problem.prompt_ids, case[ranking[case].argsort(descending=True)]
                         [: len(case) // 2], case, kind, 0)
              for ranking, kind in ((scores, "delete"), (1 - scores, "keep"))]
    assert torch.equal(halves[0], halves[1])
    other = problem.prompt_ids[:-2].clone()
    rows: list[int] = []
    hook = tiny_model.register_forward_pre_hook(
        lambda _, args, kwargs: rows.append(len(kwargs["input_ids"])), with_kwargs=True)
    try:
        greedy = torch.ones(4, len(problem.answer_ids), dtype=torch.bool)  # to be written
        scorer = _Scorer(tiny_model, problem, None, TaskState())
        both = scorer.log_probs_of_ids([halves[0], other, halves[1], other], greedy)
        ran = sum(rows[1:])  # after the forward that caches the shared prefix
        rows.clear()
        alone = torch.zeros(2, len(problem.answer_ids), dtype=torch.bool)
        expected = scorer.log_probs_of_ids([halves[0], other], alone)
    finally:
        hook.remove()
    assert ran == 2
    torch.testing.assert_close(both, expected[[0, 1, 0, 1]], rtol=1e-6, atol=1e-8)
    assert not alone.all()  # so that an unwritten ``greedy`` would fail the next line
    assert torch.equal(greedy, alone[[0, 1, 0, 1]])
