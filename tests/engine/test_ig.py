"""Integrated Gradients: equality with Captum, completeness, batching, cancellation."""

from __future__ import annotations

import threading
import time

import pytest
import torch
from tiny import CASE, make_tiny_model, relative_difference

from benchmarks.peers import captum_ig
from engine.errors import Cancelled, InvalidSettingsError
from engine.generation import generate_answer
from engine.methods import AttributionInput, integrated_gradients
from engine.methods.base import Size
from engine.prompting import build_prompt
from engine.task import TaskState

SYSTEM = "you are clinical assistant"


def _problem(tokenizer, answer_ids) -> AttributionInput:
    prompt = build_prompt(tokenizer, CASE, system_prompt=SYSTEM)
    return AttributionInput(torch.tensor(prompt.token_ids), torch.tensor(prompt.attributable),
                            torch.tensor(answer_ids))


def _forced(tokenizer) -> list[int]:
    return tokenizer.encode("recommend surgery and endocrine therapy", add_special_tokens=False)


@pytest.mark.parametrize("baseline", ["pad", "token:7"])
@pytest.mark.parametrize("answer", ["forced", "generated"])
def test_ig_equals_captum(tiny_model, tiny_tokenizer, baseline, answer):
    if answer == "forced":
        answer_ids = _forced(tiny_tokenizer)
    else:
        prompt = build_prompt(tiny_tokenizer, CASE, system_prompt=SYSTEM)
        answer_ids = generate_answer(tiny_model, tiny_tokenizer, list(prompt.token_ids), 6,
                                     TaskState())
        assert len(answer_ids) >= 3
    problem = _problem(tiny_tokenizer, answer_ids)
    ours = integrated_gradients(tiny_model, tiny_tokenizer, problem, steps=12, baseline=baseline)
    baseline_id = tiny_tokenizer.pad_token_id if baseline == "pad" else 7
    sequence, matrix = captum_ig(tiny_model, tiny_tokenizer, problem.prompt_ids,
                                 problem.attributable, problem.answer_ids, baseline_id, 12)
    assert ours.per_token.shape == (len(answer_ids), len(problem.prompt_ids))
    assert relative_difference(ours.per_token, matrix) < 1e-6
    assert relative_difference(ours.sequence, sequence) < 1e-6
    # Template tokens never move, so they get exactly zero.
    assert torch.all(ours.sequence[~problem.attributable] == 0)
    assert ours.sequence[problem.attributable].abs().max() > 1e-3


def test_sequence_only_equals_matrix_sum_and_batching_changes_nothing(tiny_model, tiny_tokenizer):
    problem = _problem(tiny_tokenizer, _forced(tiny_tokenizer))
    full = integrated_gradients(tiny_model, tiny_tokenizer, problem, steps=10)
    fast = integrated_gradients(tiny_model, tiny_tokenizer, problem, steps=10, matrix=False,
                                batch_size=3)
    assert fast.per_token is None
    # Not 1e-15: Llama/Qwen2 RMSNorm computes in float32 even in a float64 model, so one
    # backward of the sum and the sum of T backwards round differently (about 1e-7).
    assert relative_difference(fast.sequence, full.per_token.sum(0)) < 1e-6
    assert relative_difference(fast.sequence, full.sequence) < 1e-6
    assert fast.completeness_error == pytest.approx(full.completeness_error, rel=1e-5)
    same = integrated_gradients(tiny_model, tiny_tokenizer, problem, steps=10, batch_size=1)
    assert relative_difference(same.per_token, full.per_token) < 1e-12


def test_completeness_error_falls_with_steps_zero_baseline(tiny_tokenizer):
    model = make_tiny_model("qwen2", len(tiny_tokenizer), torch.float64, seed=3)
    problem = _problem(tiny_tokenizer, _forced(tiny_tokenizer))
    errors = [integrated_gradients(model, tiny_tokenizer, problem, steps=s, baseline="zero",
                                   matrix=False).completeness_error for s in (4, 32, 256)]
    assert errors[2] < errors[1] < errors[0]
    assert errors[2] < 1e-4
    out = integrated_gradients(model, tiny_tokenizer, problem, steps=256, baseline="zero")
    # Completeness per answer token too: each row sums to F_t(x) - F_t(baseline).
    rows = out.per_token.sum(1)
    torch.testing.assert_close(rows, out.f_input - out.f_baseline, rtol=1e-3, atol=1e-4)


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"steps": 0}, "steps must be at least 1"),
    ({"baseline": "mask"}, "unknown baseline 'mask'"),
    ({"baseline": "token:99999"}, "the id must be an integer from 0 to"),
    ({"batch_size": 0}, "batch size must be at least 1"),
])
def test_bad_settings_name_the_value(tiny_model, tiny_tokenizer, kwargs, message):
    problem = _problem(tiny_tokenizer, _forced(tiny_tokenizer))
    with pytest.raises(InvalidSettingsError, match=message):
        integrated_gradients(tiny_model, tiny_tokenizer, problem, **kwargs)


class _Recorder(TaskState):
    def __init__(self) -> None:
        super().__init__()
        self.events: list[tuple[str, int, int]] = []

    def progressed(self, stage: str, done: int, total: int) -> None:
        self.events.append((stage, done, total))


def test_progress_reaches_total(tiny_model, tiny_tokenizer):
    problem = _problem(tiny_tokenizer, _forced(tiny_tokenizer))
    state = _Recorder()
    integrated_gradients(tiny_model, tiny_tokenizer, problem, steps=6, batch_size=4, state=state)
    dones = [done for _, done, _ in state.events]
    assert dones == sorted(dones)
    assert state.events[-1][1] == state.events[-1][2] == 6 * (1 + len(problem.answer_ids))


def test_cancel_takes_effect_within_a_second(tiny_tokenizer):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=len(tiny_tokenizer), hidden_size=256, intermediate_size=1024,
                         num_hidden_layers=8, num_attention_heads=8, num_key_value_heads=2,
                         max_position_embeddings=512)
    model = LlamaForCausalLM(config).eval().requires_grad_(False)
    problem = _problem(tiny_tokenizer, _forced(tiny_tokenizer) * 4)
    state = TaskState()
    outcome: dict[str, object] = {}

    def run() -> None:
        try:
            integrated_gradients(model, tiny_tokenizer, problem, steps=512, state=state)
            outcome["result"] = "finished"
        except Cancelled:
            outcome["result"] = "cancelled"

    worker = threading.Thread(target=run)
    worker.start()
    time.sleep(0.5)
    assert worker.is_alive(), "the run must still be going when cancel is pressed"
    pressed = time.perf_counter()
    state.cancel()
    worker.join(timeout=5)
    assert not worker.is_alive()
    assert outcome["result"] == "cancelled"
    assert time.perf_counter() - pressed < 1.0


def test_estimate_scales_with_the_work_and_uses_measured_throughput():
    from engine.methods import get_method
    from engine.methods.base import estimate_seconds, measured_throughput

    spec = get_method("ig")
    small = spec.cost(Size(100, 80, 10), {"steps": 16, "matrix": False})
    large = spec.cost(Size(100, 80, 10), {"steps": 16, "matrix": True})
    assert (small.forwards, small.backwards, small.tokens) == (17, 16, 109)
    assert large.backwards == 160
    guess = estimate_seconds(small, 135_000_000, "cpu")
    assert estimate_seconds(large, 135_000_000, "cpu") > 5 * guess
    rate = measured_throughput(small, seconds=2.0)
    assert estimate_seconds(small, 135_000_000, "cpu", rate) == pytest.approx(2.0)


# ---- converged IG (the default) ----------------------------------------------------------


def _count_sequences(model) -> tuple[list[int], object]:
    """Sequences per forward pass (each interpolation point is one sequence)."""
    sizes: list[int] = []

    def hook(module, args, kwargs):
        embeds = kwargs.get("inputs_embeds")
        if embeds is not None:
            sizes.append(embeds.shape[0])

    return sizes, model.register_forward_pre_hook(hook, with_kwargs=True)


def test_converged_ig_meets_its_target_and_computes_each_point_once(tiny_tokenizer):
    model = make_tiny_model("qwen2", len(tiny_tokenizer), torch.float64, seed=3)
    problem = _problem(tiny_tokenizer, _forced(tiny_tokenizer))
    sizes, handle = _count_sequences(model)
    try:
        out = integrated_gradients(model, tiny_tokenizer, problem, baseline="zero",
                                   matrix=False, target_error=0.002, batch_size=2)
    finally:
        handle.remove()
    assert out.details["integration"] == "adaptive-simpson"
    assert out.details["converged"] is True
    assert out.completeness_error <= 0.002
    # Nested: every point once, plus one forward of the two endpoints.
    assert sum(sizes) == out.details["points"] + 2
    assert 9 <= out.details["points"] <= 128
    # Refinement converges to the same integral as a fine fixed rule.
    fine = integrated_gradients(model, tiny_tokenizer, problem, steps=256, baseline="zero",
                                matrix=False)
    assert fine.completeness_error < 1e-4
    assert relative_difference(out.sequence, fine.sequence) < 0.02


def test_converged_ig_refines_beyond_its_first_grid_when_needed(tiny_tokenizer):
    model = make_tiny_model("qwen2", len(tiny_tokenizer), torch.float64, seed=3)
    problem = _problem(tiny_tokenizer, _forced(tiny_tokenizer))
    loose = integrated_gradients(model, tiny_tokenizer, problem, baseline="zero", matrix=False,
                                 target_error=0.5)
    tight = integrated_gradients(model, tiny_tokenizer, problem, baseline="zero", matrix=False,
                                 target_error=1e-6, max_steps=65)
    assert loose.details["points"] == 9  # the first grid: 4 Simpson intervals
    assert tight.details["points"] > loose.details["points"]
    assert tight.completeness_error < loose.completeness_error or \
        loose.completeness_error < 1e-6


def test_converged_ig_says_when_the_budget_ran_out(tiny_model, tiny_tokenizer):
    problem = _problem(tiny_tokenizer, _forced(tiny_tokenizer))
    out = integrated_gradients(tiny_model, tiny_tokenizer, problem, target_error=1e-12,
                               max_steps=13)
    assert out.details["converged"] is False
    assert out.details["points"] == 13
    assert out.completeness_error > 1e-12
    # The error reported is the record's: |sum IG - (F(e) - F(b))| / |F(e) - F(b)|.
    expected = float((out.f_input - out.f_baseline).sum())
    assert out.completeness_error == pytest.approx(
        abs(float(out.sequence.sum()) - expected) / abs(expected), rel=1e-9)
    # The matrix uses the same points: its rows add up to the sequence.
    torch.testing.assert_close(out.per_token.sum(0), out.sequence, rtol=1e-6, atol=1e-9)


def test_explicit_steps_keep_gauss_legendre(tiny_model, tiny_tokenizer):
    problem = _problem(tiny_tokenizer, _forced(tiny_tokenizer))
    out = integrated_gradients(tiny_model, tiny_tokenizer, problem, steps=5, matrix=False)
    assert out.details == {"integration": "gausslegendre"}


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"target_error": 0.0}, "target error must be between 0 and 1"),
    ({"target_error": 1.5}, "target error must be between 0 and 1"),
    ({"max_steps": 5}, "max steps must be at least 9"),
])
def test_bad_convergence_settings(tiny_model, tiny_tokenizer, kwargs, message):
    problem = _problem(tiny_tokenizer, _forced(tiny_tokenizer))
    with pytest.raises(InvalidSettingsError, match=message):
        integrated_gradients(tiny_model, tiny_tokenizer, problem, **kwargs)


def test_path_points_in_bfloat16_are_captum_s():
    # Captum forms baseline + alpha * (input - baseline) with alpha a Python float; rounding
    # alpha to bfloat16's 8 bits first moved 16% of the values.
    from engine.methods._paths import path_points

    torch.manual_seed(0)
    base, real = torch.randn(2, 5, 64, dtype=torch.bfloat16)
    alphas = torch.rand(200, dtype=torch.float64)
    captum = torch.stack([base + float(a) * (real - base) for a in alphas])
    assert torch.equal(path_points(base, real - base, alphas), captum)
