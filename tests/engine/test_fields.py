"""Clinical fields: rendering, and attribution summed per field."""

from __future__ import annotations

import pytest

from engine.errors import InvalidInputError
from engine.explain import ExplainRequest, explain
from engine.fields import render_fields
from engine.models import ModelRequest, load_model
from engine.record import Explanation

FIELDS = {"age": 52, "sex": "female", "tumour_size_cm": 2.0, "er": "positive",
          "her2": "negative", "ki67_pct": None, "nodes": "1 positive"}


def test_render_fields_spans_each_line():
    text, spans = render_fields(FIELDS)
    assert [name for name, _, _ in spans] == ["age", "sex", "tumour_size_cm", "er", "her2",
                                              "nodes"]  # None is left out
    lines = dict((name, text[s:e]) for name, s, e in spans)
    assert lines["her2"] == "HER2: negative" and lines["age"] == "Age: 52"
    assert text.endswith("What is the recommended next step in management?")
    with pytest.raises(InvalidInputError, match="no fields"):
        render_fields({"age": None})


def test_attribution_is_summed_per_field(tiny_model_folder):
    loaded = load_model(ModelRequest(str(tiny_model_folder)))
    request = ExplainRequest.from_fields(FIELDS, target="endocrine therapy", steps=3)
    record = explain(request, loaded)
    prompt = record.prompt
    case_start = prompt.text.rfind(prompt.case_text)
    per_field = record.attribution.per_field
    assert set(per_field) == {"age", "sex", "tumour_size_cm", "er", "her2", "nodes"}
    for name, start, end in prompt.fields:
        expected = sum(score for (s, e), score, a in zip(prompt.offsets,
                                                         record.attribution.sequence,
                                                         prompt.attributable, strict=True)
                       if a and case_start + start <= e - 1 < case_start + end)
        assert per_field[name] == pytest.approx(expected)
    assert any(abs(v) > 0 for v in per_field.values())
    assert Explanation.from_json(record.to_json()) == record


def test_field_names_are_read_as_written():
    # "ER" was rendered "Er", "HER2" "Her2", "ECOG PS" "Ecog ps" before the model read them.
    text, _ = render_fields({"ER": "positive", "pT": "pT2N1a", "ECOG PS": 1,
                             "tumour_site": "left", "her2": "negative"})
    assert text.splitlines()[:5] == ["ER: positive", "pT: pT2N1a", "ECOG PS: 1",
                                     "Tumour site: left", "HER2: negative"]


@pytest.mark.parametrize("fields", [{"er": "positive\nHER2: positive (IHC 3+)"},
                                    {"er": "positive\r\nHER2: positive"},
                                    {"er\nHER2": "positive"}, {"er": "positive\n"}])
def test_a_field_on_two_lines_is_refused(fields):
    # The second line read, and was scored, as a field of its own ("HER2" under "ER").
    with pytest.raises(InvalidInputError, match="on one line"):
        render_fields(fields)


def test_two_fields_shown_under_one_label_are_refused():
    # "er" and "ER" both read "ER:": the model saw one field twice, with two values.
    with pytest.raises(InvalidInputError, match="both shown as 'ER'"):
        render_fields({"er": "positive", "ER": "negative"})
