"""The explanation record: exact JSON round trip, validation, atomic save."""

from __future__ import annotations

import json

import pytest

from engine.errors import InvalidInputError, OutputError
from engine.record import (
    SCHEMA_VERSION,
    Answer,
    Attribution,
    Explanation,
    Hardware,
    MethodInfo,
    ModelInfo,
    Prompt,
    Timings,
    Versions,
)


def make_record(matrix: bool = True) -> Explanation:
    return Explanation(
        versions=Versions("0.1.0", "2.13.0", "5.23.0", "0.9.0"),
        model=ModelInfo("tiny", "embedded", "ab" * 32, "float32", "cpu", 1234, 256),
        method=MethodInfo("ig", {"steps": 8, "baseline": "pad", "batch_size": None}),
        prompt=Prompt(text="<s> ER positive", case_text="ER positive", token_ids=(1, 5, 6),
                      tokens=("<s>", " ER", " positive"), attributable=(False, True, True),
                      offsets=((0, 3), (3, 6), (6, 15))),
        answer=Answer(text="Endocrine therapy", token_ids=(9, 10), tokens=("Endocrine", " therapy"),
                      forced=False, log_probs=(-0.1, -2.5)),
        attribution=Attribution(sequence=(0.0, 0.1 + 0.2, -1e-300),
                                per_token=((0.0, 0.1, 1 / 3), (0.0, 0.2, -1e-300)) if matrix
                                else None,
                                completeness_error=0.0123456789012345),
        timings=Timings(1.5, 0.25, 3.0),
        hardware=Hardware("CPU", 812.5, None),
    )


@pytest.mark.parametrize("matrix", [True, False])
def test_json_round_trip_is_exact(matrix, tmp_path):
    record = make_record(matrix)
    assert Explanation.from_json(record.to_json()) == record
    record.save(tmp_path / "r.json")
    assert Explanation.load(tmp_path / "r.json") == record
    data = json.loads((tmp_path / "r.json").read_text())
    assert data["schema_version"] == SCHEMA_VERSION
    assert set(data) >= {"created_at", "versions", "model", "method", "prompt", "answer",
                         "attribution", "timings", "hardware"}
    assert data["attribution"]["sequence"][1] == 0.1 + 0.2


def test_shapes_are_checked():
    record = make_record()
    with pytest.raises(ValueError, match="3 prompt tokens"):
        Explanation(**{**record.__dict__, "attribution": Attribution((0.0,), None, None)})
    with pytest.raises(ValueError, match="2 x 3"):
        Explanation(**{**record.__dict__,
                       "attribution": Attribution((0.0, 0.0, 0.0), ((0.0, 0.0, 0.0),), None)})


@pytest.mark.parametrize(("edit", "message"), [
    # Each crashed a view (exit 70) or showed nonsense before.
    (lambda d: d["prompt"].update(offsets=[]), "3 ids but 0 offsets"),
    (lambda d: d["attribution"].update(sequence=[0.0, 1.7e308, 1.7e308]), "larger than 1e\\+15"),
    (lambda d: d["attribution"].update(per_field={"er": 1.0}), "'er', which is not a field"),
    (lambda d: d["prompt"].update(attributable=[True, True, True]), "outside the case text"),
    # Each made File > Export PDF lay out for minutes on the window's thread (47 s for a model
    # name of 400,000 characters), or was shown as the answer while its tokens said otherwise.
    (lambda d: d["model"].update(name="x" * 400_000), "model name is 400,000 characters"),
    (lambda d: d["method"]["params"].update(note="y" * 1_000_000), "setting 'note' is 1,000,000"),
    (lambda d: d["hardware"].update(device_name="z" * 10_000), "device name is 10,000"),
    # Names as well as values (before: a long setting name or field name passed).
    (lambda d: d["method"]["params"].update({"k" * 400_000: "v"}),
     "name of setting 'kkk.*' is 400,000"),
    (lambda d: d["prompt"].update(fields=[["f" * 400_000, 0, 2]]),
     "name of field 'fff.*' is 400,000"),
    (lambda d: d["versions"].update(captum="9" * 400_000), "captum version is 400,000"),
    (lambda d: d.update(created_at="2" * 400_000), "creation time is 400,000"),
    (lambda d: d["hardware"].update(peak_rss_mb=1e300), "past a petabyte"),
    # Labelled "(raw)" before, over a chat template's prompt.
    (lambda d: d["prompt"].update(format="raw"), "a raw prompt is the case text alone"),
    (lambda d: d["answer"].update(text="Mastectomy now"), "not its tokens joined"),
])
def test_inconsistent_files_are_refused(edit, message):
    data = make_record(matrix=False).to_dict()
    edit(data)
    with pytest.raises(InvalidInputError, match=message):
        Explanation.from_json(json.dumps(data))


def test_an_opened_files_field_scores_are_its_token_scores_summed():
    # Before: a file edited to give "ER" a large share showed it, whatever its tokens' scores.
    data = make_record(matrix=False).to_dict()
    data["prompt"]["fields"] = [["er", 0, 2], ["status", 3, 11]]  # "ER", "positive"
    data["attribution"]["per_field"] = {"er": 9.0, "status": 9.0}
    opened = Explanation.from_json(json.dumps(data))
    assert opened.attribution.per_field == {"er": 0.1 + 0.2, "status": -1e-300}


@pytest.mark.parametrize(("text", "message"), [
    ("{not json", "invalid JSON"),
    ('{"schema_version": 2}', "schema_version 2"),
    ('{"schema_version": 1, "model": {}}', "not a valid explanation file"),
    ("[1, 2]", "schema_version None"),
])
def test_bad_files_get_one_clear_message(text, message):
    with pytest.raises(InvalidInputError, match=message):
        Explanation.from_json(text)


def test_crash_mid_save_leaves_the_old_file_intact(tmp_path, monkeypatch):
    import engine.record

    path = tmp_path / "r.json"
    make_record().save(path)
    before = path.read_text()

    def crash(fd):
        raise OSError("disk full")

    monkeypatch.setattr(engine.record.os, "fsync", crash)  # after the bytes are written
    with pytest.raises(OutputError, match="disk full"):  # one line naming the file
        make_record(matrix=False).save(path)
    assert path.read_text() == before
    assert [p.name for p in tmp_path.iterdir()] == ["r.json"]


def test_a_batch_record_made_with_another_chat_template_is_not_resumed():
    from dataclasses import replace

    from engine.explain import ExplainRequest
    from engine.jobs.batch import stale_reason

    base = make_record()
    record = replace(base, model=replace(base.model, template_sha256="a" * 64))
    request = ExplainRequest(record.prompt.case_text, method=record.method.name)
    assert stale_reason(record, request, record.model) is None
    assert stale_reason(record, request, replace(record.model, template_sha256="f" * 64)) == \
        "it was made with another chat template"
