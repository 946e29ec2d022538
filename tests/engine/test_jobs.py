"""Batch and evaluate as functions with typed settings, called as a notebook or the window
would: no argument parsing, no terminal, no Qt."""

from __future__ import annotations

import json

import pytest

from engine.errors import Cancelled, InvalidSettingsError
from engine.evaluation import EvaluationSettings
from engine.explain import ExplainRequest
from engine.jobs.batch import BatchSettings, run_batch, safe_name
from engine.jobs.evaluate import EvaluateSettings, run_evaluation
from engine.metrics import MetricSettings
from engine.models import ModelRequest, load_model
from engine.task import TaskState

CASES = ["52 year old woman , ER positive , HER2 negative .",
         "45 year old woman , HER2 positive , grade 3 ."]


@pytest.fixture(scope="module")
def loaded(tiny_model_folder):
    return load_model(ModelRequest(str(tiny_model_folder)))


@pytest.fixture
def cases(tmp_path):
    path = tmp_path / "cases.jsonl"
    path.write_text("".join(json.dumps({"id": f"c{k}", "text": text}) + "\n"
                            for k, text in enumerate(CASES)))
    return path


def test_batch_job_writes_records_without_qt(loaded, cases, tmp_path):
    settings = BatchSettings(cases, tmp_path / "out",
                             ExplainRequest("placeholder", max_new_tokens=2, matrix=False))
    settings.validate()
    lines = []
    result = run_batch(settings, loaded, log=lines.append)
    assert (result.explained, result.resumed, result.failed) == (2, 0, 0)
    assert sorted(p.name for p in (tmp_path / "out" / "records").iterdir()) == sorted(
        f"{safe_name(f'c{k}')}.json" for k in range(2))
    assert (tmp_path / "out" / "summary.csv").read_text().count("\n") == 3
    assert not (tmp_path / "out" / "summary.pdf").exists()  # no report writer given
    assert len(lines) == 2
    again = run_batch(settings, loaded)
    assert (again.explained, again.resumed) == (0, 2)


def test_batch_job_refuses_pdfs_without_a_writer_and_stops_on_cancel(loaded, cases, tmp_path):
    template = ExplainRequest("placeholder", max_new_tokens=2, matrix=False)
    with pytest.raises(InvalidSettingsError, match="report writer"):
        run_batch(BatchSettings(cases, tmp_path / "a", template, pdf=True), loaded)
    state = TaskState()
    state.cancel()
    with pytest.raises(Cancelled):
        run_batch(BatchSettings(cases, tmp_path / "b", template), loaded, state)
    assert (tmp_path / "b" / "failures.json").is_file()  # what finished is kept


def test_evaluate_job_returns_the_report_and_writes_it(loaded, cases, tmp_path):
    settings = EvaluateSettings(
        cases, EvaluationSettings(methods=("ifr", "random"), max_new_tokens=2,
                                  metrics=MetricSettings(soft=False)),
        json=tmp_path / "eval.json")
    settings.validate()
    report = run_evaluation(settings, loaded)
    assert report["cases_evaluated"] == 2
    assert set(report["summary"]) == {"ifr", "random"}
    written = json.loads((tmp_path / "eval.json").read_text())
    assert written["summary"] == report["summary"]
    with pytest.raises(InvalidSettingsError, match="--json"):
        EvaluateSettings(cases, settings.evaluation).validate()


def test_evaluate_resume_recomputes_a_case_whose_text_changed(loaded, cases, tmp_path):
    settings = EvaluateSettings(
        cases, EvaluationSettings(methods=("random",), max_new_tokens=2,
                                  metrics=MetricSettings(soft=False)),
        json=tmp_path / "eval.json")
    run_evaluation(settings, loaded)
    lines = settings.progress_path.read_text().splitlines()
    assert len(lines) == 2
    run_evaluation(settings, loaded)  # nothing new: both reused
    assert len(settings.progress_path.read_text().splitlines()) == 2
    cases.write_text(cases.read_text().replace("HER2 positive", "HER2 negative"))
    run_evaluation(settings, loaded)  # the edited case is evaluated again
    assert len(settings.progress_path.read_text().splitlines()) == 3
