"""Case files and the bundled demo cases."""

from __future__ import annotations

from pathlib import Path

import pytest

from engine.cases import load_cases
from engine.errors import InvalidInputError

DEMO = Path(__file__).resolve().parents[2] / "resources" / "cases" / "breast_cancer_cases.jsonl"
FIELDS = {"age", "sex", "menopausal_status", "tumour_size_cm", "grade", "er", "pr", "her2",
          "ki67_pct", "nodes"}


def test_demo_cases_cover_the_situations():
    cases = load_cases(DEMO)
    assert len(cases) == 20
    assert len({c.id for c in cases}) == 20
    for case in cases:
        assert set(case.fields) == FIELDS, case.id
        assert case.text.endswith("?") and case.title
        assert str(case.fields["age"]) in case.text
    text = " ".join(c.title.lower() for c in cases)
    for situation in ("hr-positive", "her2-positive", "triple-negative", "dcis", "lobular",
                      "male", "older", "brca", "metastatic"):
        assert situation in text, situation


def test_csv_cases_with_fields(tmp_path):
    path = tmp_path / "cases.csv"
    path.write_text("id,text,age,her2\na,ER positive case.,61,negative\nb,HER2 case.,45,3+\n")
    cases = load_cases(path)
    assert [c.id for c in cases] == ["a", "b"]
    assert cases[1].fields == {"age": "45", "her2": "3+"}


@pytest.mark.parametrize(("name", "content", "message"), [
    ("c.jsonl", '{"id": "a", "text": "x"}\n{broken\n', "line 2: not valid JSON"),
    ("c.jsonl", '{"id": "a", "text": "x"}\n{"id": "a", "text": "y"}\n', "duplicate case id"),
    ("c.jsonl", '{"id": "a"}\n', "needs an id and text"),
    ("c.jsonl", "\n\n", "holds no cases"),
    ("c.txt", "x", "case files are .jsonl or .csv"),
    ("c.csv", "id,text\n,missing id\n", "row 2: each case needs an id and text"),
    # Silently wrong before: the text cut at its first comma, the last duplicate winning.
    ("c.csv", "id,text\na,HER2 negative, ER positive\n", "line 2: 3 values for 2 columns"),
    ("c.csv", "id,text,her2,her2\na,x,negative,positive\n", "names 'her2' more than once"),
    ("c.jsonl", '{"id": "a", "text": "x", "text": "y"}\n', "'text' occurs more than once"),
    ("c.jsonl", '{"id": "a", "text": "x", "fields": {"er": "+", "er": "-"}}\n',
     "'er' occurs more than once"),
    ("c.jsonl", '{"id": "a", "text": "x", "fields": 0}\n', '"fields" must be an object'),
    ("c.jsonl", '{"id": "a", "text": "x", "fields": {"": "+"}}\n', "text on one line"),
    ("c.jsonl", '{"id": "a", "text": "x", "fields": {"er\\nher2": "+"}}\n', "text on one line"),
    ("c.jsonl", '{"id": "a", "text": "x", "title": ["x"]}\n', "a case title is text, not list"),
])
def test_bad_case_files(tmp_path, name, content, message):
    path = tmp_path / name
    path.write_text(content)
    with pytest.raises(InvalidInputError, match=message):
        load_cases(path)
    with pytest.raises(InvalidInputError, match="case file not found"):
        load_cases(tmp_path / "missing.jsonl")


def test_a_utf16_case_file_is_named_as_such(tmp_path):
    from engine.cases import read_case

    for encoding in ("utf-16", "utf-16-be"):
        path = tmp_path / f"{encoding}.txt"
        path.write_bytes(("\ufeff" if encoding.endswith("be") else "").encode(encoding)
                         + "A 52-year-old woman, ER positive.".encode(encoding))
        with pytest.raises(InvalidInputError, match=r"UTF-16 text.*save the case as UTF-8"):
            read_case(None, path)


def test_a_value_under_a_nameless_column_is_refused(tmp_path):
    # "HER2 negative" under an empty header cell was dropped, silently.
    path = tmp_path / "cases.csv"
    path.write_text('id,text,ER,\nc1,"breast cancer case",positive,HER2 negative\n')
    with pytest.raises(InvalidInputError, match="column 4"):
        load_cases(path)
    path.write_text('id,text,ER,\nc1,"breast cancer case",positive,\n')  # a trailing comma
    assert load_cases(path)[0].fields == {"ER": "positive"}


@pytest.mark.parametrize("case_id", ["c1: done in 0.4 s\ncase c1-retry", "c1\tx", "c1\x1b[2K"])
def test_a_case_id_with_a_line_break_or_control_character_is_refused(tmp_path, case_id):
    # A line break in an id printed a forged "done" line in the batch's log.
    import json

    path = tmp_path / "cases.jsonl"
    path.write_text(json.dumps({"id": case_id, "text": "ER positive"}) + "\n")
    with pytest.raises(InvalidInputError, match="printable text on one line"):
        load_cases(path)


def test_a_row_index_written_by_pandas_or_r_is_dropped(tmp_path):
    # df.to_csv() and write.csv() write a nameless first column of row numbers by default.
    path = tmp_path / "cases.csv"
    path.write_text(',id,text,ER\n0,c1,"breast cancer case",positive\n1,c2,"another",negative\n')
    assert [(c.id, c.fields) for c in load_cases(path)] == [("c1", {"ER": "positive"}),
                                                          ("c2", {"ER": "negative"})]
    path.write_text(',id,text\nx,c1,"breast cancer case"\n')  # not a row number: refused
    with pytest.raises(InvalidInputError, match="column 1"):
        load_cases(path)
