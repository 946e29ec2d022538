"""One answer token explained on its own equals its row of the per-token matrix."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch
from tiny import CASE, make_tiny_model, make_tiny_tokenizer

from engine.errors import Cancelled, InvalidSettingsError, ModelLoadError
from engine.explain import ExplainRequest, answer_row, explain
from engine.models import ModelRequest, load_model
from engine.task import TaskState

TARGET = "recommend endocrine therapy"
QUICK = {"ig": {"steps": 4}, "feature-ablation": {}, "shapley": {"samples": 2},
         "dig": {"steps": 3, "nbrs": 5, "upscale": 0}, "udig": {"steps": 3, "nbrs": 5},
         "sig": {"steps": 2}, "grad-ellm": {"mode": "exact"},
         "ca-lig": {"steps": 2, "layers": "all"},
         "flashtrace": {"hops": 1, "normalise": "content"},
         "ifr": {"sink": "predicting"}, "input-x-gradient": {}}


@pytest.fixture(scope="module")
def loaded(tiny_model_folder):
    return load_model(ModelRequest(str(tiny_model_folder)))


@pytest.mark.parametrize("method", sorted(QUICK))
def test_a_row_on_its_own_equals_the_matrix_row(loaded, method):
    options = tuple(QUICK[method].items())
    full = explain(ExplainRequest(CASE, method=method, target=TARGET, options=options), loaded)
    matrix = torch.tensor(full.attribution.per_token)
    assert matrix.shape[0] == 3 and matrix.abs().max() > 0
    without = explain(ExplainRequest(CASE, method=method, target=TARGET, options=options,
                                     matrix=False), loaded)
    if "matrix" in without.method.params:
        assert without.attribution.per_token is None
    for row in range(matrix.shape[0]):
        alone = torch.tensor(answer_row(without, row, loaded))
        assert alone.shape == matrix[row].shape
        scale = float(matrix[row].abs().max())
        # Within float32 rounding: relative to the row, and one float32 step of a sum near 1
        # (2^-23, met on an AVX-512 CPU for IFR's shares).
        tolerance = 1e-5 * scale + torch.finfo(torch.float32).eps
        assert float((alone - matrix[row]).abs().max()) <= tolerance, (method, row)
        # Template tokens stay at zero, as in the record's matrix.
        assert not alone[~torch.tensor(full.prompt.attributable)].any()


def test_a_record_with_the_matrix_is_read_not_recomputed(loaded):
    record = explain(ExplainRequest(CASE, steps=2, target=TARGET), loaded)
    cancelled = TaskState()
    cancelled.cancel()  # any model work would raise Cancelled
    assert answer_row(record, 1, loaded, cancelled) == record.attribution.per_token[1]


def test_bad_rows_other_models_and_cancellation(loaded, tmp_path):
    record = explain(ExplainRequest(CASE, steps=2, target=TARGET, matrix=False), loaded)
    with pytest.raises(InvalidSettingsError, match="answer token 4 does not exist"):
        answer_row(record, 3, loaded)
    with pytest.raises(InvalidSettingsError, match="does not exist"):
        answer_row(record, -1, loaded)
    cancelled = TaskState()
    cancelled.cancel()
    with pytest.raises(Cancelled):
        answer_row(record, 0, loaded, cancelled)
    other = make_tiny_model("qwen2", len(make_tiny_tokenizer()), torch.float32, seed=1)
    other.save_pretrained(tmp_path)
    make_tiny_tokenizer().save_pretrained(tmp_path)
    with pytest.raises(ModelLoadError, match="made with another model"):
        answer_row(record, 0, load_model(ModelRequest(str(tmp_path))))
    # The same weights in another precision would give another row under the record's name.
    in_float64 = replace(record, model=replace(record.model, dtype="float64"))
    with pytest.raises(ModelLoadError, match="made in float64, the model is loaded in float32"):
        answer_row(in_float64, 0, loaded)
