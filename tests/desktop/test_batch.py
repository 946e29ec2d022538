"""`tokentrace batch`: every file written, a bad case skipped, an interrupted run resumes."""

from __future__ import annotations

import csv
import json
import signal
import subprocess
import sys
import time

from pypdf import PdfReader

from desktop.cli import main
from engine.jobs.batch import safe_name

GOOD = ["52 year old woman , ER positive , HER2 negative .",
        "45 year old woman , HER2 positive , grade 3 .",
        "70 year old man , left breast mass 2 cm , ER positive ."]


def _write_cases(path, texts):
    with path.open("w") as handle:
        for k, text in enumerate(texts):
            handle.write(json.dumps({"id": f"case {k}", "text": text}) + "\n")


def test_batch_writes_every_file_and_skips_a_bad_case(tiny_model_folder, tmp_path, capsys):
    cases = tmp_path / "cases.jsonl"
    _write_cases(cases, [*GOOD, "ER positive , " * 200])  # the last is too long for the model
    out = tmp_path / "out"
    code = main(["batch", "--cases", str(cases), "--out", str(out), "--model",
                 str(tiny_model_folder), "--max-new-tokens", "3", "--pdf",
                 "--quiet"])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert "3 cases explained, 0 already done, 1 skipped" in captured.out
    assert sorted(p.name for p in (out / "records").iterdir()) == sorted(
        f"{safe_name(f'case {k}')}.json" for k in range(3))
    assert len(list((out / "reports").glob("*.pdf"))) == 3
    failures = json.loads((out / "failures.json").read_text())
    assert list(failures) == ["case 3"] and "context" in failures["case 3"]
    with (out / "summary.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    assert [r["case"] for r in rows] == ["case 0", "case 1", "case 2"]
    assert all(float(r["attribute_s"]) > 0 and r["top_words"] for r in rows)
    summary = " ".join(" ".join(p.extract_text() for p in PdfReader(out / "summary.pdf").pages)
                       .split())
    assert "3 cases" in summary and "case 1" in summary


def test_interrupted_batch_resumes(tiny_model_folder, tmp_path, capsys):
    cases = tmp_path / "cases.csv"
    with cases.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["id", "text"])
        for k in range(4):
            writer.writerow([f"c{k}", GOOD[k % 3]])
    out = tmp_path / "out"
    command = [sys.executable, "-m", "desktop.cli", "batch", "--cases", str(cases), "--out",
               str(out), "--model", str(tiny_model_folder), "--max-new-tokens", "8",
               "--method", "ig", "--steps", "600", "--quiet"]  # slow enough to interrupt
    # SIGINT at its default even when this suite runs as a background job (which ignores it, and
    # a child would inherit that).
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               text=True,
                               preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    deadline = time.time() + 600  # generous: a loaded CI machine is slow
    while not list(out.glob("records/*.json")):
        assert time.time() < deadline and process.poll() is None
        time.sleep(0.2)
    process.send_signal(signal.SIGINT)
    _, err = process.communicate(timeout=60)
    assert process.returncode == 130, err
    assert "Run the same command again to resume" in err
    done = sorted(p.name for p in (out / "records").glob("*.json"))
    assert 1 <= len(done) < 4
    first = (out / "records" / done[0]).read_text()

    assert main(command[3:]) == 0  # the same command resumes
    assert f"{len(done)} already done" in capsys.readouterr().out
    assert len(list((out / "records").glob("*.json"))) == 4
    assert (out / "records" / done[0]).read_text() == first  # not recomputed

    # Other settings never reuse a record: every case is explained again, and the log says why.
    command[command.index("600")] = "2"
    assert main(command[3:]) == 0
    captured = capsys.readouterr()
    assert "4 cases explained, 0 already done" in captured.out
    assert "made with other settings" in captured.err
    assert (out / "records" / done[0]).read_text() != first


def test_batch_from_fields_reports_per_field(tiny_model_folder, tmp_path, capsys):
    cases = tmp_path / "cases.jsonl"
    with cases.open("w") as handle:
        for k, her2 in enumerate(["negative", "positive"]):
            handle.write(json.dumps({"id": f"f{k}", "text": "unused", "fields": {
                "age": 50 + k, "er": "positive", "her2": her2}}) + "\n")
    out = tmp_path / "out"
    assert main(["batch", "--cases", str(cases), "--out", str(out), "--from-fields", "--model",
                 str(tiny_model_folder), "--target", "endocrine therapy",
                 "--quiet"]) == 0
    record = json.loads((out / "records" / f"{safe_name('f1')}.json").read_text())
    assert set(record["attribution"]["per_field"]) == {"age", "er", "her2"}
    assert "HER2: positive" in record["prompt"]["case_text"]
    with (out / "summary.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    assert all("%" in r["top_fields"] for r in rows)


def test_explain_fields_file(tiny_model_folder, tmp_path, capsys):
    fields = tmp_path / "fields.json"
    fields.write_text(json.dumps({"age": 61, "er": "positive", "her2": "negative"}))
    assert main(["explain", "--fields-file", str(fields), "--model", str(tiny_model_folder),
                 "--target", "endocrine therapy", "--quiet"]) == 0
    assert "Attribution per clinical field" in capsys.readouterr().out


def test_a_folder_that_is_not_a_batch_s_is_never_overwritten(tiny_model_folder, tmp_path, capsys):
    cases = tmp_path / "cases.jsonl"
    _write_cases(cases, GOOD[:1])
    mine = tmp_path / "Documents"
    mine.mkdir()
    (mine / "summary.csv").write_text("my own table\n")
    argv = ["batch", "--cases", str(cases), "--model", str(tiny_model_folder),
            "--max-new-tokens", "2", "--quiet"]
    assert main([*argv, "--out", str(mine)]) == 6
    assert "not a TokenTrace batch folder" in capsys.readouterr().err
    assert (mine / "summary.csv").read_text() == "my own table\n"
    # A records.json of the user's own is not a batch's index (before: replaced).
    (mine / "summary.csv").unlink()
    (mine / "records.json").write_text('{"patients": ["A", "B"]}')
    assert main([*argv, "--out", str(mine)]) == 6
    assert "records.json is not a TokenTrace batch index" in capsys.readouterr().err
    assert (mine / "records.json").read_text() == '{"patients": ["A", "B"]}'
    # A file where the batch writes a folder (or the reverse): one line now, not a skip per case.
    odd = tmp_path / "odd"
    (odd / "records.json").mkdir(parents=True)
    assert main([*argv, "--out", str(odd)]) == 6
    assert "is a folder; the batch writes a file there" in capsys.readouterr().err
    # A batch's own folder, even one whose every case failed, is resumed.
    out = tmp_path / "out"
    assert main([*argv, "--out", str(out)]) == 0
    assert json.loads((out / "records.json").read_text())
    assert main([*argv, "--out", str(out)]) == 0
    capsys.readouterr()
    record_file = next((out / "records").glob("*.json"))
    data = json.loads(record_file.read_text())
    data["answer"]["text"] = "Mastectomy now"  # an edited record does not stand for the case
    record_file.write_text(json.dumps(data))
    assert main([*argv, "--out", str(out)]) == 0
    assert "explained again: its record cannot be read" in capsys.readouterr().err
    assert json.loads(record_file.read_text())["answer"]["text"] != "Mastectomy now"


def test_a_batch_in_which_every_case_fails_exits_1(tiny_model_folder, tmp_path, capsys):
    cases = tmp_path / "cases.jsonl"
    _write_cases(cases, ["ER positive , " * 200] * 2)  # too long for the model, both
    out = tmp_path / "out"
    assert main(["batch", "--cases", str(cases), "--out", str(out), "--model",
                 str(tiny_model_folder), "--max-new-tokens", "2", "--quiet"]) == 1
    assert "no case could be explained" in capsys.readouterr().err
    assert len(json.loads((out / "failures.json").read_text())) == 2


def test_a_case_explained_again_that_fails_leaves_the_summary(tiny_model_folder, tmp_path,
                                                               capsys):
    cases = tmp_path / "cases.jsonl"
    _write_cases(cases, GOOD[:2])
    out = tmp_path / "out"
    argv = ["batch", "--cases", str(cases), "--out", str(out), "--model",
            str(tiny_model_folder), "--max-new-tokens", "2", "--quiet"]
    assert main(argv) == 0
    # Case 1's text is edited so that it no longer fits the model: its old record, made for
    # the old text, stays on disk but must not stand in the summary for the new text.
    _write_cases(cases, [GOOD[0], "ER positive , " * 200])
    assert main(argv) == 0
    err = capsys.readouterr().err
    assert "case 1: explained again: its case text differs" in err
    assert "case 1: skipped" in err
    with (out / "summary.csv").open() as handle:
        assert [r["case"] for r in csv.DictReader(handle)] == ["case 0"]
    assert list(json.loads((out / "failures.json").read_text())) == ["case 1"]


def test_a_pipe_where_the_batch_writes_its_summary_is_refused_first(tiny_model_folder, tmp_path,
                                                                    capsys):
    import os

    cases = tmp_path / "cases.jsonl"
    _write_cases(cases, GOOD[:1])
    out = tmp_path / "out"
    argv = ["batch", "--cases", str(cases), "--out", str(out), "--model",
            str(tiny_model_folder), "--max-new-tokens", "2", "--quiet", "--pdf"]
    assert main(argv) == 0
    (out / "summary.pdf").unlink()
    os.mkfifo(out / "summary.pdf")  # writing it would wait for a reader for ever
    assert main(argv) == 6
    assert "summary.pdf is a device, pipe or socket" in capsys.readouterr().err
    assert not (out / "summary.pdf").is_file()

