"""The bfloat16 twin the reliability check scores its word deletions with."""

from __future__ import annotations

import gc
import weakref
from dataclasses import replace

import pytest
import torch
from tiny import CASE, make_tiny_model, make_tiny_tokenizer

from engine import precision
from engine.explain import ExplainRequest, explain
from engine.metrics import deletion_aopc
from engine.models import ModelRequest, load_model
from engine.precision import TWIN, bfloat16_twin, scoring_model, wants_twin
from engine.record import Explanation
from engine.reliability import antithetic_rankings, check_reliability, problem_of

GIB = 2**30


@pytest.fixture(scope="module")
def loaded(tiny_model_folder):
    return load_model(ModelRequest(str(tiny_model_folder)))


@pytest.mark.parametrize(("dtype", "device", "twin_gib", "free_gib", "native", "wanted"), [
    (torch.float32, "cpu", 1, 8, True, True),
    (torch.float32, "cpu", 1, 8, False, False),  # emulated bfloat16 is slower than float32
    (torch.float32, "cpu", 3, 8, True, False),  # more than a quarter of the free memory
    (torch.bfloat16, "cpu", 1, 8, True, False),  # already rounded
    (torch.float64, "cpu", 1, 8, True, False),  # asked for on purpose
    (torch.float32, "cuda", 1, 80, True, False),  # a GPU runs the model's own precision
])
def test_when_the_twin_is_used(dtype, device, twin_gib, free_gib, native, wanted):
    assert wants_twin(dtype, torch.device(device), twin_gib * GIB, free_gib * GIB,
                      native) is wanted


def test_the_twin_rounds_parameters_only_and_leaves_the_model_alone():
    model = make_tiny_model("llama", len(make_tiny_tokenizer()), torch.float32)
    model.config.tie_word_embeddings = True
    model.tie_weights()
    before = {name: p.clone() for name, p in model.named_parameters()}
    twin = bfloat16_twin(model)
    assert bfloat16_twin(model) is twin  # made once
    assert all(p.dtype == torch.bfloat16 for p in twin.parameters())
    assert twin.get_output_embeddings().weight is twin.get_input_embeddings().weight
    for name, p in model.named_parameters():  # the model keeps its float32 weights
        assert p.dtype == torch.float32 and torch.equal(p, before[name])
        assert torch.equal(dict(twin.named_parameters())[name].float(),
                           p.to(torch.bfloat16).float())
    for (name, ours), (_, theirs) in zip(model.named_buffers(), twin.named_buffers(),
                                         strict=True):  # rotary frequencies stay exact
        assert theirs.dtype == ours.dtype and torch.equal(theirs, ours), name
    ids = torch.randint(3, 90, (3, 20))
    with torch.no_grad():
        exact = model(input_ids=ids, logits_to_keep=5).logits.log_softmax(-1)
        rounded = twin(input_ids=ids, logits_to_keep=5).logits.float().log_softmax(-1)
    assert rounded.shape == exact.shape
    assert 0 < (rounded - exact).abs().max() < 0.1  # rounded, and only rounded


def test_the_twin_goes_with_its_model_and_copies_no_hooks():
    model = make_tiny_model("llama", len(make_tiny_tokenizer()), torch.float32)
    layer = model.model.layers[0]
    handle = layer.register_forward_pre_hook(lambda module, args: None)  # a run's hook
    twin = weakref.ref(bfloat16_twin(model))
    handle.remove()
    assert not twin().model.layers[0]._forward_pre_hooks  # the twin never runs a run's hooks
    model = weakref.ref(model)
    gc.collect()
    assert model() is None and twin() is None


def test_a_check_in_bfloat16_is_the_twin_s_figures_and_near_float32(loaded, monkeypatch):
    monkeypatch.setattr(precision, "native_bfloat16", lambda: True)  # the rule on any CPU
    record = explain(ExplainRequest(CASE, target="recommend endocrine therapy"), loaded)
    rounded = check_reliability(loaded.model, loaded.tokenizer, record, close_pairs=0)
    exact = check_reliability(loaded.model, loaded.tokenizer, record, close_pairs=0,
                              precision="model")
    assert (rounded.precision, exact.precision) == (TWIN, "float32")
    scores = torch.tensor(record.attribution.sequence, dtype=torch.float64)
    (comp, suff), *chance = deletion_aopc(bfloat16_twin(loaded.model), problem_of(record, "cpu"),
                                          [scores, *antithetic_rankings(scores.shape, 1)],
                                          rounded.percents)
    assert (rounded.comprehensiveness, rounded.sufficiency) == pytest.approx((comp, suff),
                                                                             abs=1e-9)
    assert rounded.random_comprehensiveness == pytest.approx(
        (chance[0][0] + chance[1][0]) / 2, abs=1e-9)
    # The tiny random model's answer probabilities barely move (AOPCs of 1e-6 to 1e-4), so
    # the rounding is judged in absolute terms here; docs/evaluation.md judges it on real cases.
    for name in ("comprehensiveness", "random_comprehensiveness", "sufficiency",
                 "random_sufficiency"):
        assert getattr(rounded, name) == pytest.approx(getattr(exact, name), abs=1e-5), name
        assert getattr(rounded, name) != getattr(exact, name), name
    # The second method runs on the model itself: the same agreement either way.
    assert rounded.rank_correlation == exact.rank_correlation
    checked = Explanation.from_json(replace(record, reliability=rounded).to_json())
    assert checked.reliability == rounded


def test_the_model_s_own_precision_when_asked(loaded):
    assert scoring_model(loaded.model, "model") == (loaded.model, "float32")
    with pytest.raises(ValueError, match="unknown check precision"):
        scoring_model(loaded.model, "int8")
