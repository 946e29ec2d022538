"""Word grouping of token scores."""

from __future__ import annotations

import itertools

import pytest

from engine.grouping import top_spans, word_scores


def test_clinical_words_stay_whole_and_scores_add_up():
    text = "HER2 negative, Ki-67 60% (IHC 0)."
    # Tokens: "HER", "2", " negative", ",", " Ki", "-", "67", " 60", "%", " (", "IHC", " 0", ")."
    cuts = [0, 3, 4, 13, 14, 17, 18, 20, 23, 24, 26, 29, 31, 33]
    offsets = list(itertools.pairwise(cuts))
    scores = [1.0, 2.0, -0.5, 0.1, 0.25, 0.25, 0.5, 3.0, 1.0, 0.0, 0.7, 0.3, 0.2]
    spans = word_scores(text, offsets, scores, [True] * len(offsets))
    by_text = {s.text: s.score for s in spans}
    assert by_text["HER2"] == pytest.approx(3.0)
    assert by_text["Ki-67"] == pytest.approx(1.0)
    assert by_text["60%"] == pytest.approx(4.0)
    assert sum(s.score for s in spans) == pytest.approx(sum(scores))
    assert [s.text for s in top_spans(spans, 2)] == ["60%", "HER2"]


def test_unattributable_tokens_are_left_out():
    spans = word_scores("ER positive", [(0, 2), (2, 11)], [5.0, 1.0], [False, True])
    assert [(s.text, s.score) for s in spans] == [("positive", 1.0)]


def test_sentences_sum_their_tokens():
    from engine.grouping import sentence_scores

    text = "ER positive. HER2 negative.\nNodes 0"
    offsets = [(0, 2), (2, 11), (11, 12), (12, 17), (17, 26), (26, 27), (28, 33), (33, 35)]
    scores = [1.0, 2.0, 0.5, -1.0, -2.0, 0.25, 4.0, 1.0]
    spans = sentence_scores(text, offsets, scores, [True] * len(offsets))
    assert [s.text for s in spans] == ["ER positive.", "HER2 negative.", "Nodes 0"]
    assert [s.score for s in spans] == [3.5, -2.75, 5.0]


@pytest.mark.parametrize("text", ["58 वर्षीय महिला, स्तन कैंसर", "ผู้ป่วยหญิง อายุ",
                                  "receptor de estro\u0301geno, an\u0303os", "மார்பக புற்றுநோய்"])
def test_a_combining_mark_belongs_to_its_word(text):
    # Vowel signs and decomposed accents are marks, not letters: "महिला" was listed as "मह"
    # and "estrógeno" (decomposed) as "estro" and "geno", the marks' shares dropped.
    offsets = [(k, k + 1) for k in range(len(text))]
    spans = word_scores(text, offsets, [1.0] * len(text), [True] * len(text))
    words = [s.text for s in spans if s.text != ","]
    assert words == [w.strip(",") for w in text.split()]
    assert sum(s.score for s in spans) == len(text) - text.count(" ")  # no character dropped


def test_sentences_of_scripts_without_spaces_after_their_ends():
    from engine.grouping import sentence_scores

    text = "ER阳性。HER2阴性。下一步？"
    offsets = [(k, k + 1) for k in range(len(text))]
    spans = sentence_scores(text, offsets, [1.0] * len(text), [True] * len(text))
    assert [s.text for s in spans] == ["ER阳性。", "HER2阴性。", "下一步？"]


def test_superscripts_stay_in_their_word():
    # The regex module's \w has no superscript digits: "mg/m²" was cut into "mg/m" and "²".
    text = "docetaxel 75 mg/m\u00b2 and neutrophils 1.5 x 10\u2079/L"
    offsets = [(k, k + 1) for k in range(len(text))]
    spans = word_scores(text, offsets, [1.0] * len(text), [True] * len(text))
    assert [s.text for s in spans] == ["docetaxel", "75", "mg/m\u00b2", "and", "neutrophils",
                                       "1.5", "x", "10\u2079/L"]
