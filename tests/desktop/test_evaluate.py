"""``tokentrace evaluate``: the table over three cases, resume, and bad settings."""

from __future__ import annotations

import csv
import json

import pytest

from desktop.cli import main
from engine.metrics import METRICS

CASES = [
    {"id": "a", "text": "52 year old woman , left breast mass 2 cm , ER positive , HER2 "
                        "negative ."},
    {"id": "b", "text": "45 year old premenopausal woman , BRCA1 carrier , invasive ductal "
                        "carcinoma grade 3 , ER negative , PR negative , HER2 negative ."},
    {"id": "c", "text": "70 year old man , lobular carcinoma , 1 axillary node positive ."},
]


@pytest.fixture
def case_file(tmp_path):
    path = tmp_path / "cases.jsonl"
    path.write_text("\n".join(json.dumps(c) for c in CASES) + "\n")
    return path


def _evaluate(folder, case_file, out, *extra):
    return main(["evaluate", "--cases", str(case_file), "--model", str(folder),
                 "--methods", "ig,grad-ellm,random", "--option", "ig.steps=4",
                 "--option", "grad-ellm.layers=all",
                 "--max-new-tokens", "3", "--samples", "1", "--json", str(out / "eval.json"),
                 "--csv", str(out / "eval.csv"), "--markdown", str(out / "eval.md"), *extra])


def test_evaluate_writes_the_table_plot_and_resumes(tiny_model_folder, case_file, tmp_path,
                                                     capsys):
    assert _evaluate(tiny_model_folder, case_file, tmp_path) == 0
    printed = capsys.readouterr().out
    assert "Faithfulness" in printed and "3 cases, 3 methods" in printed
    report = json.loads((tmp_path / "eval.json").read_text())
    for method in ("ig", "grad-ellm", "random"):
        assert set(report["summary"][method]) == set(METRICS)
        assert report["cases"][method] == 3
        assert all(isinstance(v, float) for v in report["summary"][method].values())
        assert set(report["spread"][method]) == set(METRICS)
    assert len(report["results"]) == 9 and not report["failures"]
    assert report["summary"]["random"]["log_odds"] != report["summary"]["ig"]["log_odds"]
    rows = list(csv.DictReader((tmp_path / "eval.csv").open()))
    assert [r["method"] for r in rows] == ["ig", "grad-ellm", "random"]
    assert float(rows[0]["comprehensiveness_mean"]) == pytest.approx(
        report["summary"]["ig"]["comprehensiveness"], rel=1e-5)
    table = (tmp_path / "eval.md").read_text()
    assert table.count("\n") == 5 and "| random | 3 |" in table and "**" in table
    plot = tmp_path / "eval-pi-curves.png"
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and plot.stat().st_size > 5000

    progress = tmp_path / "eval.json.progress.jsonl"
    assert len(progress.read_text().splitlines()) == 9
    # Same command again: nothing is recomputed, the same summary is written.
    assert _evaluate(tiny_model_folder, case_file, tmp_path) == 0
    assert len(progress.read_text().splitlines()) == 9
    again = json.loads((tmp_path / "eval.json").read_text())
    assert again["summary"] == report["summary"]
    # A batch size changes no result: still nothing recomputed.
    assert _evaluate(tiny_model_folder, case_file, tmp_path, "--option", "ig.batch_size=2") == 0
    assert len(progress.read_text().splitlines()) == 9
    # A line altered to hold text or NaN where figures belong (exit 70, or "inf s/case", before)
    # is not a result: that case and method run again.
    lines = progress.read_text().splitlines()
    altered = json.loads(lines[0])
    altered.update(values=[], seconds="inf")
    broken = json.loads(lines[1])
    broken["values"] = {key: "nan" for key in broken["values"]}
    # ... or a list as its fingerprint, or pi curves at other points (exit 70 before), and a
    # line of bytes that are not UTF-8 (exit 70 before: the whole file failed to read).
    unhashable = json.loads(lines[2])
    unhashable["fingerprint"] = []
    shifted = json.loads(lines[3])
    shifted["curves"] = {name: {"0.15": 0.5} for name in shifted["curves"]}
    assert shifted["curves"]
    # ... or figures no metric gives (exit 70 before: an overflow in the mean), or only some
    # of the metrics (averaged over fewer cases before, under the same case count).
    huge = json.loads(lines[4])
    huge.update(seconds=1.7e308, values={key: 1.7e308 for key in huge["values"]})
    partial = json.loads(lines[5])
    partial.update(values={"log_odds": 99.0}, curves={})
    progress.write_bytes(("\n".join(json.dumps(line) for line in (
        altered, broken, unhashable, shifted, huge, partial)) + "\n").encode()
        + b"\xff\xfe{\n" + ("\n".join(lines[6:]) + "\n").encode())
    assert _evaluate(tiny_model_folder, case_file, tmp_path) == 0
    assert len(progress.read_text(errors="replace").splitlines()) == 16
    assert json.loads((tmp_path / "eval.json").read_text())["summary"] == report["summary"]
    # Other metric settings are other results: computed anew.
    assert _evaluate(tiny_model_folder, case_file, tmp_path, "--seed", "3") == 0
    assert len(progress.read_text(errors="replace").splitlines()) == 25


@pytest.mark.parametrize(("extra", "message"), [
    (["--methods", "ig,magic"], "unknown method 'magic'"),
    # Ran twice, and each case counted twice in its mean ("random, 2 cases" of 1).
    (["--methods", "random,ifr,random"], "random is listed more than once in --methods"),
    (["--option", "steps=3"], "evaluate options name their method"),
    (["--option", "heta.samples=2"], "options given for methods not evaluated: heta"),
    (["--option", "ig.depth=2"], "method ig has no option 'depth'"),
    # 7 GB and exit 70 after 89 s, and an overflow after the model loaded, before.
    (["--samples", "1000000000"], "samples must be from 1 to 1,000 (got 1,000,000,000)"),
    (["--seed", "1000000000000000000000000"], "the seed must be from 0 to 2,147,483,647"),
    (["--no-json"], "give --json OUT and/or --csv OUT"),
])
def test_evaluate_bad_settings_get_one_line(tiny_model_folder, case_file, tmp_path, capsys,
                                            extra, message):
    argv = ["evaluate", "--cases", str(case_file), "--model", str(tiny_model_folder)]
    if extra != ["--no-json"]:
        argv += ["--json", str(tmp_path / "e.json"), *extra]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1
