"""Hostile inputs against what is shown and saved: model weights, batch identities, records.

Each test fails on the code before the integrity work (issue 15): a model folder without its
weights loaded with random ones; ids that sanitise alike shared one record; a rerun reused
records made for other text or settings; an edited record loaded as if computed.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil

import pytest
from safetensors.torch import load_file, save_file

from engine.errors import InvalidInputError, InvalidSettingsError, ModelLoadError, TokenTraceError
from engine.explain import ExplainRequest, explain
from engine.jobs.batch import BatchSettings, run_batch, safe_name
from engine.models import ModelRequest, load_model
from engine.record import Explanation

CASE = "52 year old woman , ER positive , HER2 negative ."


@pytest.fixture(scope="module")
def loaded(tiny_model_folder):
    return load_model(ModelRequest(str(tiny_model_folder)))


def _folder_with_weights(source, target, change):
    shutil.copytree(source, target)
    weights = load_file(target / "model.safetensors")
    change(weights)
    save_file(weights, target / "model.safetensors", metadata={"format": "pt"})
    return target


def test_missing_or_unexpected_weights_are_refused_with_exit_3(tiny_model_folder, tmp_path):
    def drop(weights):
        del weights[next(k for k in weights if k.endswith("mlp.up_proj.weight"))]

    missing = _folder_with_weights(tiny_model_folder, tmp_path / "missing", drop)
    with pytest.raises(ModelLoadError, match=r"1 missing \(e\.g\. .*up_proj") as caught:
        load_model(ModelRequest(str(missing)))
    assert caught.value.exit_code == 3
    extra = _folder_with_weights(tiny_model_folder, tmp_path / "extra",
                                 lambda w: w.update(surplus=w[next(iter(w))].clone()))
    with pytest.raises(ModelLoadError, match=r"1 unexpected \(e\.g\. surplus\)"):
        load_model(ModelRequest(str(extra)))


@pytest.mark.parametrize("ids", [
    ("a/b", "a_b"),
    ("x" * 130 + "1", "x" * 130 + "2"),  # share the old 120-character prefix
    ("Patient-A", "patient-a"),  # one file on case-insensitive file systems
    ("Müller", "M_ller", "Mëller"),
])
def test_case_ids_never_share_a_file(ids):
    names = [safe_name(i) for i in ids]
    assert len({n.lower() for n in names}) == len(ids)
    assert all(n.isascii() and "/" not in n and len(n) <= 80 for n in names)


def _cases(path, cases):
    path.write_text("".join(json.dumps({"id": i, "text": t}) + "\n" for i, t in cases))
    return path


def test_batch_keeps_one_record_per_patient_and_rechecks_on_resume(loaded, tmp_path):
    cases = _cases(tmp_path / "cases.jsonl", [("a/b", CASE), ("a_b", "70 year old man .")])
    settings = BatchSettings(cases, tmp_path / "out",
                             ExplainRequest("placeholder", max_new_tokens=2, matrix=False))
    result = run_batch(settings, loaded)
    assert result.explained == 2
    records = {p.name: Explanation.load(p) for p in (tmp_path / "out/records").iterdir()}
    assert records[f"{safe_name('a/b')}.json"].prompt.case_text == CASE
    assert records[f"{safe_name('a_b')}.json"].prompt.case_text == "70 year old man ."
    # The same id with edited text: recomputed, and the log says why.
    _cases(cases, [("a/b", CASE.replace("negative", "positive")), ("a_b", "70 year old man .")])
    lines = []
    again = run_batch(settings, loaded, log=lines.append)
    assert (again.explained, again.resumed) == (1, 1)
    assert any("a/b" in line and "case text differs" in line for line in lines)
    record = Explanation.load(tmp_path / "out/records" / f"{safe_name('a/b')}.json")
    assert "HER2 positive" in record.prompt.case_text


def test_records_carry_provenance_and_an_edited_case_is_refused(loaded, tmp_path):
    record = explain(ExplainRequest(CASE, max_new_tokens=2, matrix=False), loaded)
    tokenizer_json = loaded.tokenizer.backend_tokenizer.to_str()
    assert record.model.tokenizer_sha256 == hashlib.sha256(tokenizer_json.encode()).hexdigest()
    assert len(record.model.template_sha256) == 64
    assert record.prompt.case_sha256 == hashlib.sha256(CASE.encode()).hexdigest()
    path = tmp_path / "r.json"
    record.save(path)
    assert Explanation.load(path) == record
    path.write_text(path.read_text().replace("HER2 negative", "HER2 positive"))
    with pytest.raises(InvalidInputError, match="altered"):
        Explanation.load(path)


def test_pipes_and_folders_are_refused_before_any_read(tmp_path):
    import os

    from engine.cases import load_cases, read_case, read_fields

    fifo = tmp_path / "case.fifo"
    os.mkfifo(fifo)  # reading it would block forever
    for read in (lambda p: read_case(None, p), load_cases, read_fields):
        with pytest.raises(InvalidInputError, match="not a regular file"):
            read(fifo)
        with pytest.raises(InvalidInputError, match="is a folder"):
            read(tmp_path)


def test_audit_log_appends_one_line_per_explanation_and_export(loaded, tmp_path, monkeypatch):
    from engine.audit import audited

    log = tmp_path / "audit" / "tokentrace.jsonl"
    monkeypatch.setenv("TOKENTRACE_AUDIT_LOG", str(log))
    record = explain(ExplainRequest(CASE, max_new_tokens=2, matrix=False), loaded)
    audited("export", record, file="report.pdf")
    lines = [json.loads(line) for line in log.read_text().splitlines()]
    assert [line["event"] for line in lines] == ["explain", "export"]
    first = lines[0]
    assert first["case_sha256"] == record.prompt.case_sha256 and CASE not in log.read_text()
    assert first["model_sha256"] == loaded.info.sha256
    assert first["tokenizer_sha256"] == loaded.info.tokenizer_sha256
    assert first["template_sha256"] == loaded.info.template_sha256
    assert first["method"] == record.method.name and first["user"] is not None
    assert lines[1]["file"] == "report.pdf"
    explain(ExplainRequest(CASE, max_new_tokens=2, matrix=False), loaded)
    assert len(log.read_text().splitlines()) == 3  # appended, never rewritten
    monkeypatch.setenv("TOKENTRACE_AUDIT_LOG", str(tmp_path))  # a folder: cannot be written
    with pytest.raises(TokenTraceError, match="audit log"):
        explain(ExplainRequest(CASE, max_new_tokens=2, matrix=False), loaded)
    pipe = tmp_path / "audit.fifo"  # waited for a reader for ever before
    os.mkfifo(pipe)
    monkeypatch.setenv("TOKENTRACE_AUDIT_LOG", str(pipe))
    with pytest.raises(TokenTraceError, match="audit log"):
        explain(ExplainRequest(CASE, max_new_tokens=2, matrix=False), loaded)
    reader = os.open(pipe, os.O_RDONLY | os.O_NONBLOCK)  # with a reader: still not a file
    try:
        with pytest.raises(TokenTraceError, match="is not a regular file"):
            explain(ExplainRequest(CASE, max_new_tokens=2, matrix=False), loaded)
    finally:
        os.close(reader)


@pytest.mark.parametrize("flag", ["--json", "--pdf"])
def test_no_output_replaces_the_audit_log(loaded, tmp_path, monkeypatch, capsys, flag):
    # `--json audit.jsonl` replaced the hospital's log with a record, with exit 0.
    from desktop.cli import main
    from desktop.session import ViewState, save_session
    from engine.record import write_text_atomic

    log = tmp_path / "audit.jsonl"
    monkeypatch.setenv("TOKENTRACE_AUDIT_LOG", str(log))
    record = explain(ExplainRequest(CASE, max_new_tokens=2, matrix=False), loaded)
    before = log.read_text()
    assert main(["explain", CASE, "--quiet", flag, str(tmp_path / "." / "audit.jsonl")]) == 2
    assert "is also the audit log (TOKENTRACE_AUDIT_LOG)" in capsys.readouterr().err
    os.link(log, tmp_path / "other-name.json")  # another name of the same file
    with pytest.raises(TokenTraceError, match="is the audit log"):
        write_text_atomic(tmp_path / "other-name.json", "{}")
    with pytest.raises(TokenTraceError, match="is the audit log"):  # the window's Save
        save_session(log, record, ViewState(None, "word", False, 10), ())
    assert log.read_text() == before


@pytest.mark.parametrize(("arguments", "message"), [
    (["--method", "ig", "--steps", "100000000"], "steps must be from 1 to 4096"),
    (["--max-new-tokens", "1000000000"], "max new tokens must be from 1 to 4096"),
    (["--method", "shapley", "--option", "samples=1000000000000"], "samples must be from 1"),
    (["--method", "ig", "--option", "target_error=2"], "target_error must be from"),
    (["--method", "flashtrace", "--option", "hops=-1"], "hops must be from 0 to 16"),
])
def test_bounds_are_checked_before_the_model_loads(tmp_path, capsys, arguments, message):
    from desktop.cli import main

    code = main(["explain", CASE, "--model", str(tmp_path / "not-there"), "--quiet",
                 *arguments])
    err = capsys.readouterr().err
    assert code == 2 and message in err and "model not found" not in err
    assert len(err.strip().splitlines()) == 1


def test_unwritable_outputs_fail_before_any_compute_with_exit_6(tmp_path, capsys,
                                                                 tiny_model_folder):
    from desktop.cli import main

    blocker = tmp_path / "a-file"
    blocker.write_text("in the way")  # a folder that is a file: nothing can be written in it
    for arguments in (["explain", CASE, "--json", str(blocker / "r.json")],
                      ["explain", CASE, "--pdf", str(blocker / "r.pdf")]):
        code = main([*arguments, "--model", str(tmp_path / "not-there"), "--quiet"])
        err = capsys.readouterr().err
        assert code == 6 and "cannot write the" in err and "model not found" not in err
    cases = _cases(tmp_path / "cases.jsonl", [("c0", CASE)])
    code = main(["batch", "--cases", str(cases), "--out", str(blocker / "out"), "--model",
                 str(tmp_path / "not-there"), "--quiet"])
    assert code == 6 and "batch output" in capsys.readouterr().err
    code = main(["evaluate", "--cases", str(cases), "--json", str(blocker / "e.json"),
                 "--model", str(tmp_path / "not-there"), "--quiet"])
    assert code == 6 and "evaluation output" in capsys.readouterr().err
    # A run that fails (here: no such model) leaves no folder made for its outputs behind.
    for option, name in (("--json", "r.json"), ("--pdf", "r.pdf")):
        code = main(["explain", CASE, option, str(tmp_path / "new" / "a" / name), "--model",
                     str(tmp_path / "not-there"), "--quiet"])
        assert code == 3 and not (tmp_path / "new").exists()
    code = main(["batch", "--cases", str(cases), "--out", str(tmp_path / "new" / "out"),
                 "--model", str(tmp_path / "not-there"), "--quiet"])
    assert code == 3 and not (tmp_path / "new").exists()


def test_a_record_that_cannot_be_saved_is_a_failure_and_the_batch_goes_on(loaded, tmp_path):
    cases = _cases(tmp_path / "cases.jsonl", [("c0", CASE), ("c1", "70 year old man .")])
    out = tmp_path / "out"
    (out / "records").mkdir(parents=True)
    (out / "records" / f"{safe_name('c0')}.json").mkdir()  # a folder in the record's way
    lines = []
    result = run_batch(BatchSettings(cases, out, ExplainRequest(
        "placeholder", max_new_tokens=2, matrix=False)), loaded, log=lines.append)
    assert (result.explained, result.failed) == (1, 1)
    failures = json.loads((out / "failures.json").read_text())
    assert "cannot write" in failures["c0"]
    assert any("c0: not saved" in line for line in lines)


@pytest.mark.parametrize(("name", "content", "message"), [
    ("deep.jsonl", '{"id": "a", "text": "x", "fields": ' + "[" * 100_000 + "]" * 100_000 + "}\n",
     "nested too deeply"),
    ("list-fields.jsonl", '{"id": "a", "text": "ER positive", "fields": ["ER"]}\n',
     '"fields" must be an object'),
    ("nested-fields.jsonl", '{"id": "a", "text": "ER positive", "fields": {"ER": {"x": 1}}}\n',
     '"fields" must be an object'),
    ("no-id.csv", "case,text\nc1,ER positive\n", "no 'id' column"),
    ("long-field.csv", 'id,text\nc1,"' + "ER positive " * 100_000 + '"\n', "at most 1,000,000"),
    ("huge-id.jsonl", '{"id": ' + "9" * 5000 + ', "text": "ER positive"}\n', "not valid JSON"),
    ("null-id.jsonl", '{"id": null, "text": "ER positive"}\n', "not NoneType"),
    ("object-id.jsonl", '{"id": {"a": 1}, "text": "ER positive"}\n', "not dict"),
    ("nan-field.jsonl", '{"id": "a", "text": "ER positive", "fields": {"age": NaN}}\n',
     "finite numbers"),
])
def test_hostile_case_lists_get_one_clear_message(tmp_path, name, content, message):
    from engine.cases import load_cases

    path = tmp_path / name
    path.write_text(content)
    with pytest.raises(InvalidInputError, match=re.escape(message)):
        load_cases(path)


def test_line_separators_inside_json_strings_are_text_not_line_ends(tmp_path):
    from engine.cases import load_cases

    path = tmp_path / "cases.jsonl"
    text = "ER positive\u2028HER2 negative\u2029grade 2\x85node negative"
    path.write_text(json.dumps({"id": "a", "text": text}, ensure_ascii=False) + "\n"
                    + json.dumps({"id": "b", "text": "ER negative"}) + "\n")
    cases = load_cases(path)
    assert [c.id for c in cases] == ["a", "b"] and cases[0].text == text
    quoted = tmp_path / "cases.csv"
    quoted.write_text('id,text\na,"line one\nline two"\nb,ER negative\n')
    assert [c.text for c in load_cases(quoted)] == ["line one\nline two", "ER negative"]


def _set(path, value):
    """A function that writes ``value`` at ``path`` (keys and indices) in a record's dict."""
    def change(data):
        *parents, last = path
        for key in parents:
            data = data[key]
        data[last] = value(data[last]) if callable(value) else value
    return change


HOSTILE_RECORDS = [  # (what was altered, the change, what the one line says)
    ("a token id is text", _set(("prompt", "token_ids", 0), "1"), "expected an integer"),
    ("a flag is a number", _set(("prompt", "attributable", 0), 1), "expected true or false"),
    ("a score is text", _set(("attribution", "sequence", 0), "0.5"), "expected a number"),
    ("a score is infinite", _set(("attribution", "sequence", 0), float("inf")), "not a finite"),
    ("a score is NaN", _set(("attribution", "sequence", 0), float("nan")), "not a finite"),
    ("the model is a list", _set(("model",), []), "Model.* is a list"),
    ("a negative token id", _set(("answer", "token_ids", 0), -1), "negative"),
    ("an id beyond the vocabulary", _set(("answer", "token_ids", 0), 10**9), "vocabulary of"),
    ("fewer answer tokens than ids", _set(("answer", "tokens"), lambda t: t[:-1]), "answer has"),
    ("an empty answer", _set(("answer",), lambda a: {**a, "token_ids": [], "tokens": [],
                                                     "log_probs": []}), "no tokens"),
    ("a log-probability above 0", _set(("answer", "log_probs", 0), 3.0), "above 0"),
    ("a span beyond the prompt", _set(("prompt", "offsets", -1), [0, 10**6]), "outside"),
    ("a field beyond the case", _set(("prompt", "fields"), [["ER", 0, 10**6]]), "outside"),
    ("an unknown verdict", _set(("reliability",), None), None),  # absent is fine
    ("a negative completeness error", _set(("attribution", "completeness_error"), -1.0),
     "completeness error"),
    ("a setting that is a list", _set(("method", "params", "steps"), [1, 2]),
     "method setting is a list"),
    ("a field name that is a number", _set(("attribution", "per_field"), {"ER": "x"}),
     "expected a number"),
    ("a time of 400 digits", _set(("timings", "load_s"), 10**400), "too large"),
    ("an infinite time", _set(("timings", "generate_s"), float("inf")), "timing"),
    ("a memory peak of NaN", _set(("hardware", "peak_rss_mb"), float("nan")), "peak memory"),
    ("a negative memory peak", _set(("hardware", "peak_rss_mb"), -5.0), "peak memory"),
    ("an infinite completeness error", _set(("attribution", "completeness_error"),
                                            float("inf")), "completeness error"),
]


@pytest.mark.parametrize(("what", "change", "message"), HOSTILE_RECORDS,
                         ids=[row[0] for row in HOSTILE_RECORDS])
def test_hostile_records_get_one_clear_line(loaded, what, change, message):
    data = _record(loaded).to_dict()
    change(data)
    if message is None:
        assert Explanation.from_dict(data).reliability is None
        return
    with pytest.raises(InvalidInputError, match=message) as caught:
        Explanation.from_dict(data)
    assert "\n" not in str(caught.value)


RELIABILITY = {"verdict": "strong", "summary": "Trustworthy here: ...", "comprehensiveness": 0.3,
               "random_comprehensiveness": 0.1, "sufficiency": 0.01, "random_sufficiency": 0.05,
               "second_method": "ifr", "rank_correlation": 0.6, "random_draws": 2,
               "seconds": 7.5}


@pytest.mark.parametrize(("field", "value", "message"), [
    ("verdict", "excellent", "unknown reliability verdict"),
    ("random_sufficiency", float("nan"), "not a finite number"),
    ("rank_correlation", 7.0, "out of its range"),
    ("random_draws", 0, "out of its range"),
    ("random_draws", 10**30, "out of its range"),
    ("sufficiency_draws", -1, "out of its range"),
    ("sufficiency_draws", 10**30, "out of its range"),
    ("sufficiency_draws", 2.0, "expected an integer, got a number"),
    ("seconds", float("inf"), "out of its range"),
    ("seconds", -1.0, "out of its range"),
    ("precision", "int4", "unknown reliability precision"),
    ("precision", 5, "expected text, got an integer"),
    ("precision", None, "expected text, got null"),
])
def test_reliability_figures_no_check_can_give_are_refused(loaded, field, value, message):
    data = _record(loaded).to_dict()
    data["reliability"] = {**RELIABILITY, field: value}
    with pytest.raises(InvalidInputError, match=message) as caught:
        Explanation.from_dict(data)
    assert "\n" not in str(caught.value)


@pytest.mark.parametrize(("field", "value", "verdict", "lead"), [
    (None, None, "strong", "Trustworthy here"),  # as the check saved it
    ("comprehensiveness", 0.15, "fair", "Use with care"),  # not twice chance's
    ("rank_correlation", 0.1, "fair", "Use with care"),  # the second method disagrees
    ("comprehensiveness", 0.105, "weak", "Do not rely"),  # a tie with chance
    ("verdict", "weak", "strong", "Trustworthy here"),  # an edited verdict
    ("summary", "Trustworthy <b>here</b>", "strong", "Trustworthy here:"),  # edited words
])
def test_an_opened_badge_says_what_its_figures_say(loaded, field, value, verdict, lead):
    data = _record(loaded).to_dict()
    data["reliability"] = {**RELIABILITY, **({field: value} if field else {})}
    check = Explanation.from_dict(data).reliability
    assert check.verdict == verdict and check.summary.startswith(lead)
    assert "<b>" not in check.summary and "rank correlation" in check.summary
    assert check.precision == ""  # saved before the precision was recorded: the model's own
    assert check.draws == (2, 2)  # saved before each figure had its own: they shared theirs


_RECORDS = {}


def _record(loaded):
    if "r" not in _RECORDS:
        _RECORDS["r"] = explain(ExplainRequest(CASE, max_new_tokens=2, matrix=False,
                                               method="input-x-gradient"), loaded)
    return _RECORDS["r"]


def test_a_record_that_does_not_fit_the_loaded_model_is_refused_before_it_runs(loaded):
    from engine.explain import answer_row
    from engine.reliability import check_reliability

    record = _record(loaded)
    assert record.model.vocab_size == loaded.model.get_input_embeddings().num_embeddings
    data = record.to_dict()
    data["model"]["vocab_size"] = 0  # an older record: no vocabulary size to check on load
    data["answer"]["token_ids"][0] = record.model.vocab_size + 5
    foreign = Explanation.from_dict(data)
    with pytest.raises(InvalidInputError, match="outside this model's vocabulary"):
        answer_row(foreign, 0, loaded)
    with pytest.raises(InvalidInputError, match="outside this model's vocabulary"):
        check_reliability(loaded.model, loaded.tokenizer, foreign)

    for name, value, message in [("name", "no-such-method", "unknown method"),
                                 ("params", {"steps": 10**9}, "steps must be"),
                                 ("params", {"steps": "all"}, "not a valid value")]:
        data = _record(loaded).to_dict()
        data["method"] = {"name": "ig", "params": {}}
        data["method"][name] = value
        with pytest.raises(TokenTraceError, match=message):
            answer_row(Explanation.from_dict(data), 0, loaded)


def test_pipes_in_model_folders_gguf_paths_and_saved_files_are_refused(tiny_model_folder,
                                                                      tmp_path):
    """Opening a FIFO blocks until someone writes to it: a model load or File > Open would hang
    beyond any cancel."""
    import os

    from desktop.session import load_session

    folder = tmp_path / "model"
    shutil.copytree(tiny_model_folder, folder)
    (folder / "tokenizer.json").unlink()
    os.mkfifo(folder / "tokenizer.json")
    with pytest.raises(ModelLoadError, match=r"tokenizer\.json is not a regular file"):
        load_model(ModelRequest(str(folder)))
    os.mkfifo(tmp_path / "model.gguf")
    with pytest.raises(ModelLoadError, match="not a regular file") as caught:
        load_model(ModelRequest(str(tmp_path / "model.gguf")))
    assert caught.value.exit_code == 3
    os.mkfifo(tmp_path / "session.json")
    with pytest.raises(InvalidInputError, match="not a regular file"):
        load_session(tmp_path / "session.json")
    with pytest.raises(InvalidInputError, match="not a regular file"):
        Explanation.load(tmp_path / "session.json")


def test_a_full_disk_gives_one_line_exit_6_and_keeps_the_old_file(tiny_model_folder, tmp_path):
    """A real full disk: a 64 KiB tmpfs, filled, in a private mount namespace."""
    import subprocess
    import sys

    if subprocess.run(["unshare", "-rm", "sh", "-c", f"mount -t tmpfs tmpfs {tmp_path}"],
                      capture_output=True).returncode != 0:
        pytest.skip("needs unprivileged mount namespaces (unshare -rm) to mount a small tmpfs")
    cases = _cases(tmp_path / "cases.jsonl", [("c0", CASE), ("c1", "70 year old man .")])
    run = (f"{sys.executable} -m desktop.cli {{}} --model {tiny_model_folder} --method ifr "
           "--max-new-tokens 2 --quiet; echo exit=$?")
    script = "\n".join([
        "set -e", "mkdir full", "mount -t tmpfs -o size=64k tmpfs full",
        "echo '{\"old\": true}' > full/r.json",
        "head -c 1000000 /dev/zero > full/filler 2>/dev/null || true", "set +e",
        run.format(f"explain '{CASE}' --json full/r.json"),
        run.format(f"explain '{CASE}' --pdf full/r.pdf"),
        run.format(f"batch --cases {cases} --out full/out"),
        "cat full/r.json"])
    done = subprocess.run(["unshare", "-rm", "sh", "-c", script], cwd=tmp_path, text=True,
                          capture_output=True, timeout=300)
    exits = [line for line in done.stdout.splitlines() if line.startswith("exit=")]
    assert exits == ["exit=6"] * 3, done.stdout + done.stderr
    assert done.stdout.strip().endswith('{"old": true}')  # the old record is intact
    lines = done.stderr.strip().splitlines()
    assert "Traceback" not in done.stderr
    assert "cannot write full/r.json: No space left on device" in lines[0]
    assert "full/r.pdf" in lines[1] and "disk full" in lines[1]
    # The batch writes its index first, so a full disk stops it before any case is computed.
    assert len(lines) == 3 and "out/records.json: No space left on device" in lines[2]


@pytest.mark.parametrize(("content", "message"), [
    ('{"schema_version": 1, "x": ' + "[" * 200_000 + "]" * 200_000 + "}", "nested too deeply"),
    ('{"schema_version": 1, "x": ' + "9" * 5000 + "}", "invalid JSON"),
])
def test_json_no_parser_can_hold_gets_one_line(tmp_path, content, message):
    """Nesting deeper than Python's stack, or an integer of thousands of digits: one clear
    line from every reader of a user's JSON (an explanation, a session, a fields file)."""
    from desktop.session import load_session
    from engine.cases import read_fields

    with pytest.raises(InvalidInputError, match=message):
        Explanation.from_json(content)
    path = tmp_path / "hostile.json"
    path.write_text(content)
    for read in (Explanation.load, load_session, read_fields):
        with pytest.raises(InvalidInputError):
            read(path)


def test_a_fields_file_with_a_byte_order_mark_or_bad_values(tmp_path):
    from engine.cases import read_fields

    path = tmp_path / "fields.json"
    path.write_bytes(b"\xef\xbb\xbf" + b'{"age": 52}')
    assert read_fields(path) == {"age": 52}
    for bad in ('{"age": NaN}', '{"age": Infinity}', '{"age": [52]}', '{"age": {"y": 1}}'):
        path.write_text(bad)
        with pytest.raises(InvalidInputError, match="finite number"):
            read_fields(path)


@pytest.mark.parametrize("where", ["case", "target", "system"])
def test_text_that_is_not_unicode_is_refused_before_the_model_loads(where):
    broken = "A woman \udcff with a mass"  # what bytes that are not UTF-8 become in argv
    settings = {"case": {"case_text": broken}, "target": {"case_text": CASE, "target": broken},
                "system": {"case_text": CASE, "system_prompt": broken}}[where]
    with pytest.raises(InvalidInputError, match="not valid Unicode"):
        ExplainRequest(**settings).validate()


def test_an_output_never_replaces_a_pipe_or_device(tmp_path, loaded):
    import os
    import stat

    from engine.errors import OutputError
    from engine.record import check_writable, write_text_atomic

    fifo = tmp_path / "out.json"
    os.mkfifo(fifo)
    with pytest.raises(OutputError, match="device, pipe or socket"):
        check_writable(fifo)
    with pytest.raises(OutputError, match="device, pipe or socket"):
        write_text_atomic(fifo, "{}")
    with pytest.raises(OutputError, match="device, pipe or socket"):
        _record(loaded).save(fifo)
    assert stat.S_ISFIFO(fifo.stat().st_mode)  # still the pipe it was


def test_a_config_far_bigger_than_its_weights_is_refused_before_allocating(tiny_model_folder,
                                                                         tmp_path):
    """transformers would allocate every missing weight first: gigabytes for a config.json of
    a few lines. The folder is refused from the files' headers and a meta-device layout."""
    folder = tmp_path / "big"
    shutil.copytree(tiny_model_folder, folder)
    config = json.loads((folder / "config.json").read_text())
    config.update(hidden_size=4096, intermediate_size=16384, num_hidden_layers=64,
                  num_attention_heads=32, num_key_value_heads=32, head_dim=128)
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(ModelLoadError, match="asks for") as caught:
        load_model(ModelRequest(str(folder)))
    needed = int(re.search(r"asks for ([\d,]+)", str(caught.value))[1].replace(",", ""))
    assert needed > 10**10  # about 40 GB in float32, never allocated
    config["num_hidden_layers"] = 10**9
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(ModelLoadError, match="layers; refused"):
        load_model(ModelRequest(str(folder)))


def test_a_weight_whose_header_says_integers_is_refused(tiny_model_folder, tmp_path):
    """The same bytes under a header that says I32: the float bits were read as integers and
    the model ran on them (every score +0)."""
    import struct

    folder = tmp_path / "lying"
    shutil.copytree(tiny_model_folder, folder)
    weights = next(folder.glob("*.safetensors"))
    raw = weights.read_bytes()
    size = struct.unpack("<Q", raw[:8])[0]
    header = json.loads(raw[8:8 + size])
    header["lm_head.weight"]["dtype"] = "I32"  # same width, same offsets
    text = json.dumps(header, separators=(",", ":")).encode().ljust(size)
    assert len(text) == size
    weights.write_bytes(raw[:8] + text + raw[8 + size:])
    with pytest.raises(ModelLoadError, match=r"lm_head\.weight .* is stored as I32"):
        load_model(ModelRequest(str(folder)))


def test_an_edited_case_whose_ids_were_left_is_refused_where_it_meets_the_model(loaded):
    # "HER2 negative" edited to "positive" in the text, the tokens and the recomputed sha256,
    # its token ids left: it opened as genuine, coloured by the ids of "negative", and a what-if
    # on it ran on those ids.
    import hashlib

    from engine.reliability import check_tokenized

    record = explain(ExplainRequest(CASE, max_new_tokens=2, matrix=False), loaded)
    check_tokenized(record, loaded.tokenizer)  # the genuine record passes
    data = record.to_dict()
    prompt = data["prompt"]
    word, other = "negative", "positive"
    assert word in prompt["case_text"]
    swap = lambda text: text.replace(word, other)  # noqa: E731  (same length: spans hold)
    prompt["case_text"], prompt["text"] = swap(prompt["case_text"]), swap(prompt["text"])
    prompt["tokens"] = [swap(token) for token in prompt["tokens"]]
    prompt["case_sha256"] = hashlib.sha256(prompt["case_text"].encode()).hexdigest()
    forged = Explanation.from_dict(data)  # consistent in itself: only the tokenizer can tell
    with pytest.raises(InvalidInputError, match="not what its token ids say"):
        check_tokenized(forged, loaded.tokenizer)
    # Spans swapped between two tokens (one word's score shown on the other) fail on opening.
    data = record.to_dict()
    offsets = data["prompt"]["offsets"]
    k = next(i for i, a in enumerate(data["prompt"]["attributable"]) if a)
    offsets[k], offsets[k + 1] = offsets[k + 1], offsets[k]
    with pytest.raises(InvalidInputError, match="not its text's characters in order"):
        Explanation.from_dict(data)


@pytest.mark.parametrize(("key", "value", "default"), [
    ("hops", "\u0663", 1), ("max_steps", "1_0", 128), ("beta", "\u0663", 0.5),
    ("layers", "\u0663", None)])
def test_option_numbers_are_ascii_digits(key, value, default):
    # int() and float() read Arabic-Indic digits and underscores: "hops=٣" ran with 3 hops.
    from engine.explain import coerce_option

    with pytest.raises(InvalidSettingsError, match=f"option {key}="):
        coerce_option(key, value, default)
    assert coerce_option(key, "3", default) == 3


@pytest.mark.parametrize("spec", ["token:\u0663", "token:1_0", "token: 5", "token:+5"])
def test_a_baseline_token_id_is_ascii_digits(spec):
    from engine.methods.base import parse_baseline

    with pytest.raises(InvalidSettingsError, match="the id must be an integer"):
        parse_baseline(spec, None, 100)
    assert parse_baseline("token:5", None, 100) == 5


@pytest.mark.parametrize(("name", "size"), [("config.json", 3 * 10**9),
                                            ("tokenizer.json", 3 * 10**9),
                                            ("generation_config.json", 20 * 10**6)])
def test_a_model_file_larger_than_any_model_has_is_refused_unread(tiny_model_folder, tmp_path,
                                                                  name, size):
    # A 3 GB config.json (sparse: no disk) took 6.6 GB of memory to read, then exit 3.
    import tracemalloc

    folder = tmp_path / "model"
    shutil.copytree(tiny_model_folder, folder)
    os.truncate(folder / name, size)
    tracemalloc.start()
    try:
        with pytest.raises(ModelLoadError, match=f"no model's {name} is larger than"):
            load_model(ModelRequest(str(folder)))
        assert tracemalloc.get_traced_memory()[1] < 50_000_000
    finally:
        tracemalloc.stop()


def test_outputs_with_the_longest_names_and_dangling_links_are_written(tmp_path):
    # A 250-byte name failed ("File name too long": the scratch file added 15 bytes); a link
    # to nothing was refused as "a device, pipe or socket".
    from engine.record import check_writable, write_text_atomic

    longest = os.pathconf(tmp_path, "PC_NAME_MAX")
    name = tmp_path / ("r" * (longest - 5) + ".json")
    check_writable(name)
    write_text_atomic(name, "{}")
    assert name.read_text() == "{}"
    with pytest.raises(TokenTraceError, match="File name too long"):  # before any work
        check_writable(tmp_path / ("r" * (longest + 1)))
    link = tmp_path / "link.json"
    link.symlink_to(tmp_path / "gone" / "nowhere.json")
    check_writable(link)
    write_text_atomic(link, "{}")
    assert link.is_file() and not link.is_symlink()
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([name.name, "link.json"])


def test_a_record_is_checked_against_its_text_not_a_new_rendering_of_the_template(loaded):
    # A template that prints today's date renders differently tomorrow: the record made today
    # must still be its own ids then.
    import copy

    from engine.reliability import check_tokenized

    record = explain(ExplainRequest(CASE, max_new_tokens=2, matrix=False), loaded)
    tokenizer = copy.deepcopy(loaded.tokenizer)
    tokenizer.chat_template = "Today is another day.\n" + tokenizer.chat_template
    check_tokenized(record, tokenizer)


def test_a_special_token_appended_at_the_end_has_an_empty_span_and_is_accepted(loaded):
    # A tokenizer that appends EOS gives it the span (0, 0) after the others.
    record = explain(ExplainRequest(CASE, max_new_tokens=2, matrix=False, raw_prompt=True),
                     loaded)
    data = record.to_dict()
    prompt = data["prompt"]
    prompt["token_ids"].append(0)
    prompt["tokens"].append("</s>")
    prompt["offsets"].append([0, 0])
    prompt["attributable"].append(False)
    data["attribution"]["sequence"].append(0.0)
    assert Explanation.from_dict(data).prompt.offsets[-1] == (0, 0)
