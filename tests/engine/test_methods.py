"""The seed papers' methods against the identities of METHODS.md, on tiny real models."""

from __future__ import annotations

import pytest
import torch
from tiny import CASE, make_tiny_model, relative_difference

from engine.errors import Cancelled, InvalidSettingsError
from engine.methods import METHODS, AttributionInput, integrated_gradients
from engine.methods._attention import eager_attention, parse_layers
from engine.methods._discretized import (
    build_paths,
    dig,
    nearest,
    path_attribution,
    udig,
    word_piece_ids,
)
from engine.methods._paths import embed_problem, endpoint_log_probs
from engine.methods.base import Size, answer_log_probs
from engine.methods.ca_lig import (
    attention_relevance,
    block_inputs,
    context_aware_lig,
    fuse_and_roll,
    layer_integrated_gradients,
)
from engine.methods.grad_ellm import grad_ellm, raw_scores
from engine.methods.heta import (
    HessianVectorProducts,
    _sequence_embeddings,
    attention_flow,
    curvature,
    heta,
    information,
)
from engine.methods.sig import sequential_integrated_gradients
from engine.prompting import build_prompt
from engine.task import TaskState


def _problem(tokenizer) -> AttributionInput:
    prompt = build_prompt(tokenizer, CASE, system_prompt="you are clinical assistant")
    answer = tokenizer.encode("recommend surgery and endocrine therapy", add_special_tokens=False)
    return AttributionInput(torch.tensor(prompt.token_ids), torch.tensor(prompt.attributable),
                            torch.tensor(answer))


def _between(x: torch.Tensor, a: torch.Tensor, b: torch.Tensor, tol: float = 1e-12) -> bool:
    return bool(((x >= torch.minimum(a, b) - tol) & (x <= torch.maximum(a, b) + tol)).all())


# ---- DIG and UDIG ------------------------------------------------------------------------


def _paths(model, tokenizer, kind, strategy, upscale, anchors=6):
    problem = _problem(tokenizer)
    emb = embed_problem(model, tokenizer, problem, "pad")
    positions = torch.nonzero(emb.moving, as_tuple=True)[0]
    weight = model.get_input_embeddings().weight.detach()
    ids = word_piece_ids(tokenizer, weight.shape[0])
    path = build_paths(emb.real[positions], emb.base[positions], weight[ids], kind=kind,
                       anchors=anchors, nbrs=8, strategy=strategy, upscale=upscale)
    return emb, positions, path


@pytest.mark.parametrize("kind", ["dig", "udig"])
@pytest.mark.parametrize("strategy", ["greedy", "maxcount"])
@pytest.mark.parametrize("upscale", [0, 2])
def test_discretized_paths_are_monotone_with_the_right_endpoints(tiny_tokenizer, kind, strategy,
                                                                 upscale):
    model = make_tiny_model("llama", len(tiny_tokenizer), torch.float64)
    emb, positions, path = _paths(model, tiny_tokenizer, kind, strategy, upscale)
    assert path.shape == (2 ** upscale * 7 + 1, len(positions), emb.real.shape[1])
    torch.testing.assert_close(path[0], emb.base[positions], rtol=0, atol=0)
    torch.testing.assert_close(path[-1], emb.real[positions], rtol=0, atol=0)
    base = emb.base[positions]
    for k in range(len(path) - 1):
        assert _between(path[k], base, path[k + 1]), f"point {k} leaves [baseline, next point]"
    # The path is not the straight line: its inner points are anchored on real words.
    line = base + 0.5 * (path[-1] - base)
    assert (path[len(path) // 2] - line).abs().max() > 1e-3


def test_word_pieces_and_nearest_neighbours(tiny_tokenizer):
    model = make_tiny_model("qwen2", len(tiny_tokenizer), torch.float64)
    weight = model.get_input_embeddings().weight.detach()
    ids = word_piece_ids(tiny_tokenizer, weight.shape[0])
    assert not set(ids.tolist()) & set(tiny_tokenizer.all_special_ids)
    assert len(ids) == len(tiny_tokenizer) - len(tiny_tokenizer.all_special_ids)
    queries = torch.randn(13, weight.shape[1], dtype=torch.float64)
    found = nearest(queries, weight[ids], 5, chunk_elements=200)  # several chunks
    expected = torch.cdist(queries, weight[ids]).topk(5, largest=False).indices
    assert torch.equal(found, expected)
    banned = expected[:, :2]
    assert torch.equal(nearest(queries, weight[ids], 3, banned=banned), expected[:, 2:5])


def test_riemann_sum_along_a_path_is_exact_for_a_linear_function(tiny_tokenizer):
    model = make_tiny_model("llama", len(tiny_tokenizer), torch.float64)
    emb, _positions, path = _paths(model, tiny_tokenizer, "udig", "greedy", 1)
    weights = torch.randn(len(emb.answer_ids), *emb.real.shape, dtype=torch.float64)

    def linear(x: torch.Tensor) -> torch.Tensor:  # F_t = W_t . x, [B, T]
        return torch.einsum("bld,tld->bt", x, weights)

    sums = path_attribution(model, emb, path, matrix=True, batch_size=4, state=TaskState(),
                            what="test", forward=linear)
    exact = ((weights * emb.delta).sum(-1))[:, :emb.n]
    assert relative_difference(sums, exact) < 1e-12


@pytest.mark.parametrize("method", [dig, udig])
def test_discretized_ig_on_a_model(tiny_model, tiny_tokenizer, method):
    problem = _problem(tiny_tokenizer)
    out = method(tiny_model, tiny_tokenizer, problem, steps=6, nbrs=8, upscale=1)
    assert out.per_token.shape == (len(problem.answer_ids), len(problem.prompt_ids))
    assert torch.isfinite(out.per_token).all()
    assert torch.all(out.sequence[~problem.attributable] == 0)
    assert out.sequence[problem.attributable].abs().max() > 1e-4
    torch.testing.assert_close(out.sequence, out.per_token.sum(0))
    fast = method(tiny_model, tiny_tokenizer, problem, steps=6, nbrs=8, upscale=1, matrix=False,
                  batch_size=3)
    assert relative_difference(fast.sequence, out.sequence) < 1e-6
    assert out.completeness_error is not None and out.completeness_error >= 0
    with pytest.raises(InvalidSettingsError, match="strategy"):
        method(tiny_model, tiny_tokenizer, problem, strategy="closest")


# ---- SIG -----------------------------------------------------------------------------------


def test_sig_per_token_completeness(tiny_model, tiny_tokenizer):
    problem = _problem(tiny_tokenizer)
    out = sequential_integrated_gradients(tiny_model, tiny_tokenizer, problem, steps=64)
    emb = embed_problem(tiny_model, tiny_tokenizer, problem, "pad")
    positions = torch.nonzero(problem.attributable, as_tuple=True)[0]
    x = emb.real.expand(len(positions), -1, -1).clone()
    x[torch.arange(len(positions)), positions] = emb.base[positions]
    with torch.no_grad():
        dropped = answer_log_probs(tiny_model, x, problem.answer_ids).double()  # [n_case, T]
    expected = out.f_input[None] - dropped  # F_t(x) - F_t(x with row i at the baseline)
    found = out.per_token[:, positions].T
    torch.testing.assert_close(found, expected, rtol=1e-4, atol=1e-6)
    assert out.completeness_error < 1e-4
    coarse = sequential_integrated_gradients(tiny_model, tiny_tokenizer, problem, steps=4,
                                             matrix=False, batch_size=7)
    assert coarse.completeness_error > out.completeness_error


def test_converged_sig_meets_its_target_with_each_point_once(tiny_tokenizer):
    model = make_tiny_model("qwen2", len(tiny_tokenizer), torch.float64, seed=3)
    problem = _problem(tiny_tokenizer)
    n_case = int(problem.attributable.sum())
    sequences = []
    handle = model.register_forward_pre_hook(
        lambda module, args, kwargs: sequences.append(len(kwargs["inputs_embeds"])),
        with_kwargs=True)
    try:
        out = sequential_integrated_gradients(model, tiny_tokenizer, problem, matrix=False,
                                              target_error=0.001, max_steps=64, batch_size=16)
    finally:
        handle.remove()
    assert out.details["integration"] == "adaptive-simpson" and out.details["converged"]
    assert out.completeness_error <= 0.001
    # Nested: every (token, point) once, plus the two endpoints; no extra forwards for drops.
    assert sum(sequences) == out.details["points"] + 2
    assert out.details["points"] >= 9 * n_case
    # The same attribution as a fine fixed rule, and the identity it checks holds.
    fine = sequential_integrated_gradients(model, tiny_tokenizer, problem, steps=64,
                                           matrix=False)
    assert fine.completeness_error < 1e-4
    assert relative_difference(out.sequence, fine.sequence) < 0.01
    starved = sequential_integrated_gradients(model, tiny_tokenizer, problem, matrix=False,
                                              target_error=1e-9, max_steps=9)
    assert starved.details == {"integration": "adaptive-simpson", "points": 9 * n_case,
                               "converged": False}


def test_converged_sig_matrix_rows_add_up(tiny_model, tiny_tokenizer):
    problem = _problem(tiny_tokenizer)
    out = sequential_integrated_gradients(tiny_model, tiny_tokenizer, problem, max_steps=9)
    torch.testing.assert_close(out.per_token.sum(0), out.sequence)
    assert out.per_token.shape == (len(problem.answer_ids), len(problem.prompt_ids))


# ---- HETA ----------------------------------------------------------------------------------


def test_heta_parts_obey_their_identities(tiny_model, tiny_tokenizer):
    problem = _problem(tiny_tokenizer)
    case = problem.attributable
    flow = attention_flow(tiny_model, problem)
    torch.testing.assert_close(flow.sum(-1), torch.ones(len(problem.answer_ids),
                                                       dtype=torch.float64))
    assert torch.all(flow >= 0) and torch.all(flow[:, ~case] == 0)
    x = _sequence_embeddings(tiny_model, problem)
    s = curvature(tiny_model, problem, x, samples=3, seed=0, batch_size=5, state=TaskState())
    assert torch.all(s >= 0) and torch.all(s[~case] == 0) and torch.all(s[case] > 0)
    again = curvature(tiny_model, problem, x, samples=3, seed=0, batch_size=2, state=TaskState())
    torch.testing.assert_close(s, again)  # batching and seeding change nothing
    i = information(tiny_model, problem, x, batch_size=4, state=TaskState())
    assert torch.all(i >= 0) and torch.all(i[:, ~case] == 0) and i[:, case].max() > 0
    out = heta(tiny_model, tiny_tokenizer, problem, samples=2)
    assert torch.all(out.per_token >= 0) and out.sequence[case].sum() > 0
    assert out.per_token.shape == (len(problem.answer_ids), len(problem.prompt_ids))


def test_hessian_vector_product_matches_finite_differences_and_is_symmetric(tiny_tokenizer):
    model = make_tiny_model("qwen2", len(tiny_tokenizer), torch.float64, seed=1)
    problem = _problem(tiny_tokenizer)
    x = _sequence_embeddings(model, problem)
    generator = torch.Generator().manual_seed(0)
    u, v = (torch.randn(x.shape, generator=generator, dtype=x.dtype) for _ in range(2))
    with eager_attention(model):
        hu, hv = HessianVectorProducts(model, x, problem.answer_ids)(torch.stack([u, v]))

    def gradient(point: torch.Tensor) -> torch.Tensor:
        point = point.clone().requires_grad_(True)
        with torch.enable_grad():
            f = answer_log_probs(model, point[None], problem.answer_ids).sum()
            return torch.autograd.grad(f, point)[0]

    eps = 1e-4
    finite = (gradient(x + eps * v) - gradient(x - eps * v)) / (2 * eps)
    assert relative_difference(hv, finite) < 1e-3
    # Symmetry of the Hessian: u . Hv = v . Hu (float32 RMSNorm inside: about 1e-7).
    assert float((u * hv).sum()) == pytest.approx(float((v * hu).sum()), rel=1e-6)
    assert model.config._attn_implementation != "eager"  # restored after the context


# ---- Grad-ELLM -----------------------------------------------------------------------------


def test_grad_ellm_exact_mode_sums_to_g_dot_u(tiny_model, tiny_tokenizer):
    problem = _problem(tiny_tokenizer)
    raw, products, f = raw_scores(tiny_model, problem, [0, 1], "exact", TaskState())
    assert raw.shape == (2, len(problem.answer_ids), len(problem.prompt_ids) +
                         len(problem.answer_ids) - 1)
    assert products.abs().min() > 1e-6
    torch.testing.assert_close(raw.sum(-1), products, rtol=1e-10, atol=1e-12)
    out = grad_ellm(tiny_model, tiny_tokenizer, problem, mode="exact", layers="all")
    torch.testing.assert_close(out.per_token, raw.sum(0)[:, :len(problem.prompt_ids)])
    torch.testing.assert_close(out.f_input, f)


def test_grad_ellm_paper_mode(tiny_model, tiny_tokenizer):
    problem = _problem(tiny_tokenizer)
    out = grad_ellm(tiny_model, tiny_tokenizer, problem)  # last block
    assert torch.all(out.per_token >= 0) and out.per_token.max() > 0
    assert out.per_token.shape == (len(problem.answer_ids), len(problem.prompt_ids))
    both = grad_ellm(tiny_model, tiny_tokenizer, problem, layers="0,-1")
    first = grad_ellm(tiny_model, tiny_tokenizer, problem, layers="0")
    torch.testing.assert_close(both.per_token, first.per_token + out.per_token)


def test_grad_ellm_paper_mode_refuses_mismatched_widths(tiny_tokenizer):
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(vocab_size=len(tiny_tokenizer), hidden_size=32, intermediate_size=64,
                         num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                         head_dim=16, pad_token_id=0)
    model = LlamaForCausalLM(config).double()
    problem = _problem(tiny_tokenizer)
    with pytest.raises(InvalidSettingsError, match="use mode exact"):
        grad_ellm(model, tiny_tokenizer, problem, mode="paper")
    raw, products, _ = raw_scores(model, problem, [1], "exact", TaskState())
    torch.testing.assert_close(raw.sum(-1), products, rtol=1e-10, atol=1e-12)


def test_layer_specs():
    assert parse_layers("last", 30) == [29]
    assert parse_layers("every:4", 30) == [7, 14, 22, 29]
    assert parse_layers("0,-1,-1", 30) == [0, 29]
    assert parse_layers("all", 3) == [0, 1, 2]
    for bad in ("every:0", "31", "x", ""):
        with pytest.raises(InvalidSettingsError, match="layers"):
            parse_layers(bad, 30)


# ---- CA-LIG --------------------------------------------------------------------------------


def test_ca_lig_layer_ig_is_complete_per_block(tiny_model, tiny_tokenizer):
    problem = _problem(tiny_tokenizer)
    emb = embed_problem(tiny_model, tiny_tokenizer, problem, "pad")
    f_input, f_baseline = endpoint_log_probs(tiny_model, emb)
    for layer in (0, 1):
        lig = layer_integrated_gradients(tiny_model, emb, layer, 64, None, TaskState())
        torch.testing.assert_close(lig.sum(-1), f_input - f_baseline, rtol=1e-4, atol=1e-5)
    # On block 0 the block input is the embedding: layer IG is IG (hence Captum's IG).
    lig0 = layer_integrated_gradients(tiny_model, emb, 0, 12, None, TaskState())
    ig = integrated_gradients(tiny_model, tiny_tokenizer, problem, steps=12)
    assert relative_difference(lig0[:, :emb.n], ig.per_token) < 1e-6


def test_ca_lig_fusion_and_rollout_keep_the_total(tiny_model, tiny_tokenizer):
    problem = _problem(tiny_tokenizer)
    emb = embed_problem(tiny_model, tiny_tokenizer, problem, "pad")
    relevance, rollout = attention_relevance(tiny_model, emb, [0, 1], TaskState())
    for index in (0, 1):
        assert torch.all(relevance[index] >= 0) and relevance[index].sum() > 0
    inputs = block_inputs(tiny_model, emb, [0, 1])
    lig = {i: layer_integrated_gradients(tiny_model, emb, i, 8, None, TaskState(), inputs[i])
           for i in (0, 1)}
    for mix in (0.0, 0.5, 1.0):
        scores = fuse_and_roll(lig, relevance, rollout, mix)
        torch.testing.assert_close(scores.sum(-1), (lig[0].sum(-1) + lig[1].sum(-1)) / 2)
    out = context_aware_lig(tiny_model, tiny_tokenizer, problem, steps=64, layers="all")
    assert out.completeness_error < 1e-3
    assert out.per_token.shape == (len(problem.answer_ids), len(problem.prompt_ids))
    torch.testing.assert_close(out.sequence, out.per_token.sum(0))


# ---- all methods ---------------------------------------------------------------------------

QUICK = {"ig": {"steps": 4}, "feature-ablation": {}, "shapley": {"samples": 2},
         "dig": {"steps": 3, "nbrs": 5, "upscale": 0}, "udig": {"steps": 3, "nbrs": 5},
         "sig": {"steps": 2}, "heta": {"samples": 1}, "grad-ellm": {"mode": "exact"},
         "ca-lig": {"steps": 2, "layers": "all"}, "flashtrace": {"matrix": True},
         "ifr": {"matrix": True}, "input-x-gradient": {"matrix": True}}


def test_every_method_is_registered_with_a_cost(tiny_tokenizer):
    assert set(METHODS) == set(QUICK)
    for name, spec in METHODS.items():
        assert spec.description and spec.cost_formula, name
        cost = spec.cost(Size(prompt=100, case=80, answer=10), spec.defaults())
        longer = spec.cost(Size(prompt=200, case=180, answer=10), spec.defaults())
        assert cost.forwards >= 1 and cost.tokens == longer.tokens - 100, name
        assert (longer.forwards + longer.backwards) >= (cost.forwards + cost.backwards), name


class _Cancelling(TaskState):
    def progressed(self, stage: str, done: int, total: int) -> None:
        if done >= 1:
            self.cancel()


@pytest.mark.parametrize("name", sorted(QUICK))
def test_every_method_runs_reports_progress_and_cancels(tiny_tokenizer, name):
    model = make_tiny_model("qwen2", len(tiny_tokenizer), torch.float64)
    problem = _problem(tiny_tokenizer)
    spec = METHODS[name]
    out = spec.run(model, tiny_tokenizer, problem, **{**spec.defaults(), **QUICK[name]})
    assert out.sequence.shape == (len(problem.prompt_ids),)
    assert out.per_token.shape == (len(problem.answer_ids), len(problem.prompt_ids))
    assert torch.isfinite(out.per_token).all() and out.sequence.abs().max() > 0
    with pytest.raises(Cancelled):
        spec.run(model, tiny_tokenizer, problem, state=_Cancelling(),
                 **{**spec.defaults(), **QUICK[name]})
    assert model.config._attn_implementation != "eager"  # eager only ever temporarily


def test_every_method_takes_exactly_its_declared_options():
    """A method's keyword arguments are its Params (and the task state): a misspelled option
    is an error, never swallowed."""
    import inspect

    for name, spec in METHODS.items():
        signature = inspect.signature(spec.run)
        kinds = {p.kind for p in signature.parameters.values()}
        declared = {p.name for p in spec.params}
        if inspect.Parameter.VAR_KEYWORD in kinds:  # a thin wrapper: check what it forwards
            with pytest.raises(TypeError):
                spec.run(None, None, None, no_such_option=1)
            continue
        taken = set(list(signature.parameters)[3:]) - {"state"}
        assert declared <= taken, (name, declared - taken)


@pytest.mark.parametrize("name", sorted(QUICK))
def test_a_cancel_stops_every_method_before_its_first_decoder_block(tiny_tokenizer, name):
    """Set-up and endpoint passes are cancellable too: with the cancel already pressed, no
    decoder block runs at all (a pass over an 8,000-token note is seconds on a CPU)."""
    from engine.methods.base import decoder_layers

    model = make_tiny_model("qwen2", len(tiny_tokenizer), torch.float64)
    blocks = []
    for layer in decoder_layers(model):
        layer.register_forward_hook(lambda *_: blocks.append(1))
    state = TaskState()
    state.cancel()
    spec = METHODS[name]
    with pytest.raises(Cancelled):
        spec.attribute(model, tiny_tokenizer, _problem(tiny_tokenizer), state=state,
                       **{**spec.defaults(), **QUICK[name]})
    assert blocks == []


def test_a_layers_form_is_checked_without_building_it():
    # Before: checking "all" before a model loads built a list of 10^9 blocks (24 GB, killed).
    import tracemalloc

    from engine.methods._attention import check_layers

    tracemalloc.start()
    for form in ("last", "all", "ALL ", "every:1000000000", "-1,-2", "0, 5"):
        check_layers(form)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert peak < 1_000_000
    for form in ("x", "every:0", "every:x", "", ",", "1;2", "every:"):
        with pytest.raises(InvalidSettingsError, match="use last, all, every:K or block"):
            check_layers(form)
