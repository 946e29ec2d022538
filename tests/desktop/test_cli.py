"""The command line: every bad input ends with one clear line and its exit code."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest

from desktop.cli import main
from engine.errors import TokenTraceError

TARGET = ["--target", "endocrine therapy", "--quiet"]


@pytest.fixture
def files(tmp_path):
    binary = tmp_path / "scan.pdf"
    binary.write_bytes(b"%PDF-1.7\x00\x01\x02")
    latin1 = tmp_path / "latin1.txt"
    latin1.write_bytes("Patientin, 52 Jahre, Läsion".encode("latin-1"))
    huge = tmp_path / "huge.txt"
    huge.write_text("ER positive. " * 100_000)
    gguf = tmp_path / "broken.gguf"
    gguf.write_bytes(b"GGUF" + b"\x00" * 16)
    empty_dir = tmp_path / "empty-model"
    empty_dir.mkdir()
    return {"binary": binary, "latin1": latin1, "huge": huge, "gguf": gguf,
            "empty_dir": empty_dir, "missing": tmp_path / "missing.txt"}


CASES = [
    # (arguments, exit code, text the message must contain)
    (["explain", ""], 2, "the case is empty"),
    (["explain", "   \n"], 2, "the case is empty"),
    (["explain"], 2, "no case given"),
    (["explain", "x", "--case-file", "{binary}"], 2, "not both"),
    (["explain", "--case-file", "{binary}"], 2, "looks binary"),
    (["explain", "--case-file", "{latin1}"], 2, "is not UTF-8 text"),
    (["explain", "--case-file", "{missing}"], 2, "case file not found"),
    (["explain", "--case-file", "{huge}"], 2, "1.3 MB; a case file may be at most 1 MB"),
    (["explain", "ER positive", "--steps", "0"], 2, "--steps: must be at least 1, got 0"),
    (["explain", "ER positive", "--max-new-tokens", "-3"], 2, "must be at least 1, got -3"),
    (["explain", "ER positive", "--steps", "many"], 2, "expected a whole number, got 'many'"),
    (["explain", "ER positive", "--method", "shap"], 2, "unknown method 'shap'; choose one of"),
    (["explain", "ER positive", "--method", "ig", "--baseline", "mask"], 2,
     "unknown baseline 'mask'"),
    # A shared setting the method does not take is named, not silently dropped.
    (["explain", "ER positive", "--steps", "32"], 2,
     "ifr takes no --steps; it applies to ig, dig, udig, sig, ca-lig"),
    (["explain", "ER positive", "--method", "grad-ellm", "--baseline", "zero"], 2,
     "grad-ellm takes no --baseline; it applies to ig,"),
    (["batch", "--cases", "{missing}", "--out", "{missing}", "--batch-size", "4"], 2,
     "ifr takes no --batch-size"),
    (["explain", "ER positive", "--target", " "], 2, "forced answer (--target) is empty"),
    (["explain", "ER positive", "--model", "{missing}"], 3, "model not found"),
    (["explain", "ER positive", "--model", "{empty_dir}"], 3, "has no config.json"),
    (["explain", "ER positive", "--model", "{gguf}"], 3, "cannot read GGUF file"),
    (["explain", "ER positive", "--model", "{binary}"], 3, "is not a GGUF file"),
    (["explain", "ER positive", "--model", "{folder}", "--method", "ig",
      "--baseline", "token:100000"], 2,
     "the id must be an integer from 0 to"),
    (["explain", "ER positive " * 200, "--model", "{folder}"], 4,
     "the case with the system prompt makes a prompt of"),
    (["explain", "ER positive " * 200, "--model", "{folder}", "--raw-prompt"], 4,
     "the case makes a prompt of 400 tokens; with 64 answer tokens that is 464, more than "
     "this model's context of 256 tokens"),
    (["evaluate", "--cases", "{missing}", "--json", "{missing}", "--no-soft", "--plot", "p.png"],
     2, "--plot draws the pi-Soft curves, which --no-soft skips"),
    (["explain", "ER positive", "--reliability", "--option", "span=0:1"], 2,
     "judges explanations of the whole answer; this one explains answer tokens 0:1 only"),
    (["explain", "ER positive", "--model", "{folder}", "--target", "surgery <|im_end|>"], 2,
     "the forced answer (--target) holds '<|im_end|>', one of this model's control tokens"),
    (["batch", "--cases", "{missing}", "--out", "{missing}", "--threads", "100000"], 2,
     "--threads: must be at most 512, got 100000"),
    (["explain", "ER positive", "--max-new-tokens", "\u0663"], 2, "expected a whole number"),
    (["explain", "ER positive", "--raw-prompt", "--system", "Be brief."], 2,
     "--system has no place in a raw prompt"),
    (["whatif", "ER positive", "--remove", "ER", "--raw-prompt", "--system", "Be brief."], 2,
     "--system has no place in a raw prompt"),
    (["explain", "ER positive", "--json", "new/"], 2, "'new/' names a folder; give a file name"),
    (["frobnicate"], 2, "invalid choice: 'frobnicate'"),
    (["explain", "ER positive", "--reliability", "--check-precision", "int8"], 2,
     "invalid choice: 'int8'"),
    (["explain", "ER positive", "--check-precision", "model"], 2,
     "--check-precision sets the reliability check: add --reliability"),
    (["explain", "ER positive", "--method", "grad-ellm", "--option", "mode"], 2,
     "expected KEY=VALUE, got 'mode'"),
    (["explain", "ER positive", "--method", "grad-ellm", "--option", "steps=3"], 2,
     "method grad-ellm has no option 'steps'; its options: mode, layers"),
    (["explain", "ER positive", "--method", "heta", "--option", "samples=many"], 2,
     "option samples='many': expected int like 10"),
    (["explain", "ER positive", "--method", "grad-ellm", "--option", "mode=both", "--model",
      "{folder}"], 2, "unknown mode 'both'; choose paper or exact"),
    (["explain", "ER positive", "--method", "ca-lig", "--option", "layers=40", "--model",
      "{folder}"], 2, "layers '40': use last, all, every:K or indices from -2 to 1"),
    # A value no model could take is refused before the model loads (a model path that does
    # not exist shows it); before, only after loading it.
    (["explain", "ER positive", "--method", "grad-ellm", "--option", "mode=nonsense", "--model",
      "{missing}"], 2, "unknown mode 'nonsense'; choose paper or exact"),
    (["explain", "ER positive", "--method", "grad-ellm", "--option", "layers=-1;-2", "--model",
      "{missing}"], 2, "layers '-1;-2': use last, all, every:K or block indices separated by"),
    (["explain", "ER positive", "--option", "span=3:x", "--model", "{missing}"], 2,
     "span '3:x': use all or START:END with 0 <= START <= END (answer-token"),
    (["explain", "ER positive", "--option", "normalise=row", "--model", "{missing}"], 2,
     "unknown normalise 'row'; choose block or content"),
    (["explain", "ER positive", "--method", "dig", "--option", "strategy=best", "--model",
      "{missing}"], 2, "unknown strategy 'best'; choose greedy or maxcount"),
]


@pytest.mark.parametrize(("argv", "code", "message"), CASES,
                         ids=[" ".join(c[0])[:40] for c in CASES])
def test_bad_input_gets_one_line(argv, code, message, files, tiny_model_folder, capsys):
    values = {**files, "folder": tiny_model_folder}
    argv = [a.format(**values) for a in argv]
    try:
        returned = main(argv)
    except SystemExit as exit_:  # argparse's usage errors
        returned = exit_.code
    err = capsys.readouterr().err
    assert returned == code, err
    assert message in err
    assert err.count("\n") == 1 and err.startswith("tokentrace")
    assert "Traceback" not in err


def test_explain_prints_answer_words_and_figures(tiny_model_folder, tmp_path, capsys):
    out = tmp_path / "r.json"
    code = main(["explain", "52 year old woman , ER positive , HER2 negative .", "--model",
                 str(tiny_model_folder), *TARGET, "--json", str(out)])
    text = capsys.readouterr().out
    assert code == 0
    assert "endocrine therapy" in text and "most influential words" in text
    assert "Completeness error" in text and "peak RSS" in text
    record = json.loads(out.read_text())
    # The default method, chosen by evidence (docs/evaluation.md): single-pass FlashTrace.
    assert record["method"]["name"] == "ifr" and record["method"]["params"]["hops"] == 0
    assert record["prompt"]["case_text"] == "52 year old woman , ER positive , HER2 negative ."


@pytest.mark.parametrize("precision", ["auto", "model"])
def test_explain_with_the_reliability_check(tiny_model_folder, tmp_path, capsys, precision):
    out = tmp_path / "r.json"
    code = main(["explain", "52 year old woman , ER positive .", "--model",
                 str(tiny_model_folder), "--target", "endocrine therapy", "--quiet",
                 "--reliability", "--check-precision", precision, "--json", str(out)])
    text = capsys.readouterr().out
    check = json.loads(out.read_text())["reliability"]
    assert code == 0 and check["verdict"].capitalize() in text
    from engine.precision import native_bfloat16

    # auto: the bfloat16 twin of the float32 model where this CPU multiplies it natively.
    twin = precision == "auto" and native_bfloat16()
    assert check["precision"] == ("bfloat16-twin" if twin else "float32")


@pytest.mark.parametrize(("method", "options", "expected"), [
    ("grad-ellm", ["--option", "mode=exact", "--option", "layers=all"],
     {"mode": "exact", "layers": "all"}),
    ("udig", ["--steps", "3", "--option", "nbrs=4", "--option", "upscale=0"],
     {"steps": 3, "nbrs": 4, "upscale": 0, "strategy": "greedy"}),
    # The method's own defaults: SIG converges, within its own budget (not IG's 128 points).
    ("sig", [], {"steps": None, "max_steps": 16, "integration": "adaptive-simpson"}),
])
def test_explain_with_a_method_and_its_options(tiny_model_folder, tmp_path, capsys, method,
                                               options, expected):
    out = tmp_path / "r.json"
    code = main(["explain", "52 year old woman , ER positive .", "--model",
                 str(tiny_model_folder), "--target", "endocrine therapy", "--quiet",
                 "--method", method, *options, "--json", str(out)])
    text = capsys.readouterr().out
    assert code == 0
    record = json.loads(out.read_text())
    assert record["method"]["name"] == method
    assert expected.items() <= record["method"]["params"].items()
    assert f"{method} (" in text  # the terminal names the method and its settings
    assert any(abs(v) > 0 for v in record["attribution"]["sequence"])


def test_methods_json_lists_ig_with_cost(capsys):
    assert main(["methods", "--json"]) == 0
    entries = json.loads(capsys.readouterr().out)
    ig = next(e for e in entries if e["name"] == "ig")
    assert {p["name"] for p in ig["parameters"]} >= {"steps", "baseline", "matrix"}
    # Converged IG is estimated at its budget of 128 points (an upper bound).
    assert ig["cost"]["example"]["forwards"] == 129
    assert ig["cost"]["example"]["backwards"] == 128 * 64
    assert {e["name"] for e in entries} == {"ig", "feature-ablation", "shapley", "dig", "udig",
                                            "sig", "heta", "grad-ellm", "ca-lig", "flashtrace",
                                            "ifr", "input-x-gradient"}
    for entry in entries:
        assert entry["description"] and entry["cost"]["formula"], entry["name"]
        assert entry["cost"]["example"]["forwards"] >= 1, entry["name"]


OOM_SCRIPT = textwrap.dedent("""
    import resource, sys
    import engine, torch, transformers
    from transformers import LlamaForCausalLM  # import everything before the limit
    from desktop.cli import main
    import engine.explain, desktop.cli.terminal
    rss = int(open("/proc/self/statm").read().split()[0]) * resource.getpagesize()
    resource.setrlimit(resource.RLIMIT_AS, (rss + 200 * 2**20, resource.RLIM_INFINITY))
    sys.exit(main(sys.argv[1:]))
""")


@pytest.mark.parametrize("fixed_batch", [True, False])
def test_out_of_memory_is_reported_or_avoided(tiny_model_folder, fixed_batch):
    """A real allocation failure, under an address-space limit."""
    case = "ER positive , HER2 negative , grade 2 . " * 12
    argv = ["explain", case, "--model", str(tiny_model_folder), "--target",
            "endocrine therapy " * 8, "--method", "ig", "--steps", "256", "--quiet",
            "--no-matrix"]
    if fixed_batch:
        argv += ["--batch-size", "256"]
    done = subprocess.run([sys.executable, "-c", OOM_SCRIPT, *argv], capture_output=True,
                          text=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"})
    if fixed_batch:
        assert done.returncode == 5, done.stderr
        assert "out of memory" in done.stderr and "smaller --batch-size" in done.stderr
        assert done.stderr.count("\n") == 1
    else:  # the automatic batch size halves until it fits, and the run completes
        assert done.returncode == 0, done.stderr


def test_whatif_and_sensitivity_from_the_command_line(tiny_model_folder, tmp_path, capsys):
    from pypdf import PdfReader

    from engine.whatif import WhatIf

    case = "52 year old woman . ER positive , HER2 negative . left breast mass 2 cm ."
    model = ["--model", str(tiny_model_folder), "--max-new-tokens", "4", "--quiet"]
    code = main(["whatif", case, *model, "--replace", "HER2 negative=HER2 positive",
                 "--remove-sentence", "1", "--json", str(tmp_path / "w.json"),
                 "--pdf", str(tmp_path / "w.pdf")])
    out = capsys.readouterr().out
    assert code == 0
    assert "What if: replace “HER2 negative” with “HER2 positive”; remove sentence 1" in out
    found = WhatIf.load(tmp_path / "w.json")
    assert found.edited_case == "ER positive , HER2 positive . left breast mass 2 cm ."
    assert [e.kind for e in found.edits] == ["replace", "remove-sentence"]
    text = " ".join(" ".join(p.extract_text().split()) for p in PdfReader(tmp_path / "w.pdf").pages)
    assert "What if: replace" in text and "Original answer:" in text

    code = main(["sensitivity", case, *model, "--json", str(tmp_path / "s.json")])
    assert code == 0 and "What removing each sentence does" in capsys.readouterr().out
    ranking = json.loads((tmp_path / "s.json").read_text())["sentences"]
    assert sorted(r["sentence"] for r in ranking) == [1, 2, 3]
    assert [r["fall"] for r in ranking] == sorted((r["fall"] for r in ranking), reverse=True)

    assert main(["whatif", case, *model]) == 2  # no edit
    assert "give at least one edit" in capsys.readouterr().err
    assert main(["whatif", case, *model, "--remove", "PR positive"]) == 2
    assert "“PR positive” is not in the case" in capsys.readouterr().err


def test_the_terminal_never_prints_control_characters_from_the_data():
    """A case or a folder name holding escape sequences cannot retitle or clear the terminal,
    or colour text, when printed; rich's own colours still reach it."""
    import io

    from rich.text import Text

    from desktop.cli.terminal import SafeConsole
    from desktop.cli.text import printable

    hostile = "A woman \x1b]0;PWNED\x07\x1b[2J\x1b[31mER\u202epositive\x9b1m\tnode\n"
    assert printable(hostile) == ("A woman \ufffd]0;PWNED\ufffd\ufffd[2J\ufffd[31mER\ufffd"
                                  "positive\ufffd1m\tnode\n")
    out = io.StringIO()
    console = SafeConsole(file=out, force_terminal=True, color_system="truecolor", width=200)
    console.print(Text(hostile, style="bold"))
    written = out.getvalue()
    assert "\x07" not in written and "\x1b]" not in written and "\x1b[2J" not in written
    assert "\x1b[31m" not in written and "\u202e" not in written and "\x9b" not in written
    assert "\x1b[1m" in written  # rich's own bold
    # Square brackets are text, never rich's markup: before, "[/]" was exit 70, "[name
    # redacted]" vanished and "[link=...]" wrote a hyperlink to the terminal.
    out = io.StringIO()
    console = SafeConsole(file=out, force_terminal=True, color_system="truecolor", width=200)
    marked = ("Patient [name redacted] [/] [bold]x[/bold] [link=https://evil.example/x]y[/link]"
              " :smile:")
    console.print(marked)
    written = out.getvalue()
    assert marked in written and "\x1b]8;" not in written and "\x1b[1m" not in written
    # A form feed or carriage return is shown, not dropped (before: "HER2 negativeER positive").
    from rich.table import Table

    out = io.StringIO()
    console = SafeConsole(file=out, width=200)
    table = Table()
    table.add_column("sentence")
    table.add_row("HER2 negative\fER positive\rER negative\r\nPR positive")
    console.print(table)
    assert "HER2 negative\ufffdER positive\ufffdER negative" in out.getvalue()
    assert "PR positive" in out.getvalue() and "negative\ufffd\n" not in out.getvalue()
    # Invisible characters that hide a difference are shown; joiners some scripts need stay.
    assert printable("ER\u200b \u200epositive\ufeff \u061c \u2060 \u200c\u200d") == \
        "ER\ufffd \ufffdpositive\ufffd \ufffd \ufffd \u200c\u200d"


def test_the_window_and_the_pdf_show_a_bidirectional_override_not_obey_it():
    # Before: "HER2 \u202eevitagen\u202c" read "HER2 negative" in the PDF and the window.
    from desktop.present import html_text

    assert html_text("HER2 \u202eevitagen\u202c <b>") == "HER2 \ufffdevitagen\ufffd &lt;b&gt;"


def test_an_error_naming_a_hostile_path_prints_no_escape(tmp_path, capsys):
    from desktop.cli import main

    assert main(["explain", "--case-file", str(tmp_path / "missing\x1b]0;x\x07.txt")]) != 0
    err = capsys.readouterr().err
    assert "missing" in err and "\x1b" not in err and "\x07" not in err


def test_an_output_never_replaces_an_input_or_another_output(tmp_path, capsys):
    # Checked before the model loads (no model is named here that could load): exit 2, and
    # every file is as it was.
    case = tmp_path / "case.txt"
    case.write_text("52 year old woman , ER positive .")
    cases = tmp_path / "cases.jsonl"
    cases.write_text('{"id": "c1", "text": "ER positive ."}\n')
    (tmp_path / "out" / "records").mkdir(parents=True)
    inner = tmp_path / "out" / "records" / "cases.jsonl"
    inner.write_text(cases.read_text())
    alias = tmp_path / "alias.txt"
    alias.symlink_to(case)
    hard = tmp_path / "hard.txt"
    os.link(case, hard)  # another name of the same file, which no path comparison sees
    fields = tmp_path / "fields.json"
    fields.write_text('{"age": "52", "er": "positive"}')
    runs = [
        (["explain", "--case-file", str(case), "--json", str(hard)], "is also the case file"),
        (["whatif", "--fields-file", str(fields), "--remove", "positive", "--json",
          str(fields)], "is also the fields file"),
        (["sensitivity", "--fields-file", str(fields), "--json", str(fields)],
         "is also the fields file"),
        (["evaluate", "--cases", str(cases), "--json", str(tmp_path / "e.json"), "--plot",
          str(cases)], "is also the case list"),
        (["app", "--case-file", str(case), "--screenshot", str(case)], "is also the case file"),
        (["explain", "--case-file", str(case), "--json", str(alias)], "is also the case file"),
        (["explain", "--case-file", str(case), "--json", str(tmp_path / "x"), "--pdf",
          str(tmp_path / "sub" / ".." / "x")], "is also the record (--json)"),
        (["whatif", "--case-file", str(case), "--remove", "ER", "--json", str(case)],
         "is also the case file"),
        (["sensitivity", "--case-file", str(case), "--json", str(case)], "is also the case file"),
        (["evaluate", "--cases", str(cases), "--json", str(cases)], "is also the case list"),
        (["evaluate", "--cases", str(cases), "--json", str(tmp_path / "e"), "--csv",
          str(tmp_path / "e")], "is also the results (--json)"),
        (["batch", "--cases", str(inner), "--out", str(tmp_path / "out")],
         "lies in the records folder"),
    ]
    before = {p: p.read_bytes() for p in (case, cases, inner, fields)}
    for argv, message in runs:
        assert main(argv) == 2, argv
        err = capsys.readouterr().err
        assert message in err and len(err.strip().splitlines()) == 1, err
    assert {p: p.read_bytes() for p in before} == before
    summary = tmp_path / "out" / "summary.csv"
    summary.write_text("id,text\nc1,ER positive\n")
    assert main(["batch", "--cases", str(summary), "--out", str(tmp_path / "out")]) == 2
    assert "batch output summary.csv" in capsys.readouterr().err


@pytest.mark.parametrize("target", [None, "endocrine therapy"])
def test_a_model_that_computes_nan_is_named_broken(tmp_path, capsys, target):
    # Exit 70 ("a log-probability is above 0 or not a number") before, or, generating, "the
    # model gave an empty answer" (greedy decoding over NaN picks token 0, the end of text).
    import torch
    from tiny import make_tiny_model, make_tiny_tokenizer

    folder = tmp_path / "nan-norm"
    model = make_tiny_model("llama", 256, torch.float32)
    with torch.no_grad():
        model.model.norm.weight.fill_(float("nan"))
    model.save_pretrained(folder)
    make_tiny_tokenizer().save_pretrained(folder)
    capsys.readouterr()
    argv = ["explain", "52 year old woman , ER positive .", "--model", str(folder),
            "--max-new-tokens", "2", "--quiet", "--json", str(tmp_path / "r.json")]
    assert main(argv + (["--target", target] if target else [])) == 3
    err = capsys.readouterr().err
    assert "computes values that are not numbers" in err and len(err.splitlines()) == 1
    assert not (tmp_path / "r.json").exists()


@pytest.mark.parametrize(("edit", "case", "message"), [
    # A pattern that backtracks until the regex engine gives up: a Rust panic (a BaseException
    # that `except Exception` missed) gave a traceback here, and a window that waited for ever.
    (lambda tok: tok.update(pre_tokenizer={"type": "Split", "pattern": {"Regex": "(a|aa)+$"},
                                           "behavior": "Isolated", "invert": False}),
     "ER positive " + "a" * 60 + "c", "tokenizer failed on the case (Onig: Regex search error"),
    # A vocabulary without its unknown token: exit 70 at every case before, now at load.
    (lambda tok: (tok["model"].update(vocab={}), tok.update(added_tokens=[])), "ER positive",
     "tokenizer failed on the test text"),
])
def test_a_broken_tokenizer_is_one_line(tiny_model_folder, tmp_path, capsys, edit, case,
                                         message):
    import shutil

    folder = tmp_path / "broken-tokenizer"
    shutil.copytree(tiny_model_folder, folder)
    tok = json.loads((folder / "tokenizer.json").read_text())
    edit(tok)
    (folder / "tokenizer.json").write_text(json.dumps(tok))
    assert main(["explain", case, "--model", str(folder), "--max-new-tokens", "2",
                 "--quiet"]) == 3
    err = capsys.readouterr().err
    assert message in err and len(err.splitlines()) == 1, err


def test_a_tokenizer_beyond_the_model_s_embedding_is_one_line(tmp_path, capsys):
    # Exit 70 (an index error inside the model) before.
    import torch
    from tiny import make_tiny_model, make_tiny_tokenizer

    folder = tmp_path / "small-vocab"
    make_tiny_model("llama", 50, torch.float32).save_pretrained(folder)
    make_tiny_tokenizer().save_pretrained(folder)
    assert main(["explain", "52 year old woman , ER positive .", "--model", str(folder),
                 "--max-new-tokens", "2", "--quiet"]) == 3
    err = capsys.readouterr().err
    assert "embedding has 50 rows: its tokenizer and weights do not belong together" in err
    assert len(err.strip().splitlines()) == 1


def test_a_replacement_may_hold_an_equals_sign_written_escaped():
    # Before: split at the first "=": 'Ki-67=30%=Ki-67=5%' replaced "Ki-67" with "30%=Ki-67=5%".
    import argparse

    from desktop.cli.whatif import _replacement

    assert _replacement(r"Ki-67\=30%=Ki-67\=5%") == ("Ki-67=30%", "Ki-67=5%")
    assert _replacement("HER2 negative=HER2 positive") == ("HER2 negative", "HER2 positive")
    assert _replacement("grade 3=") == ("grade 3", "")
    with pytest.raises(argparse.ArgumentTypeError, match=r"write an = inside OLD or NEW as \\="):
        _replacement(r"Ki-67\=30%")


@pytest.mark.parametrize("before", [True, False])
def test_debug_shows_the_traceback_before_or_after_the_command(tmp_path, before, capsys):
    # The README lists --debug among explain's options, and the error line sends users to it.
    missing = str(tmp_path / "no-such-model")
    args = ["explain", "ER positive", "--model", missing, "--quiet"]
    assert main(args) == 3 and "Traceback" not in capsys.readouterr().err
    with pytest.raises(TokenTraceError):
        main(["--debug", *args] if before else [*args, "--debug"])


@pytest.mark.parametrize(("arguments", "message"), [
    (["--method", "nosuch"], "unknown method 'nosuch'"),  # aborted the window (134) before
    (["--max-new-tokens", "999999"], "max new tokens must be from 1 to 4096"),  # was clamped
    (["--method", "ig", "--steps", "2000"], "the window takes at most 1024 steps"),
    (["--method", "ifr", "--steps", "4"], "ifr takes no --steps"),  # was dropped
])
def test_app_settings_are_checked_before_the_window_starts(tmp_path, capsys, arguments,
                                                           message):
    shot = tmp_path / "window.png"
    assert main(["app", *arguments, "--screenshot", str(shot)]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1 and not shot.exists()


@pytest.mark.parametrize("arguments", [
    ["explain", "--case-file", "a.txt", "--case-file", "b.txt"],  # explained b.txt alone
    ["explain", "ER positive", "--json=a.json", "--json", "b.json"],
    ["explain", "ER positive", "--method", "ifr", "--meth", "ig"],  # an abbreviation
    ["evaluate", "--cases", "c.jsonl", "--methods", "ig", "--methods", "ifr"],
])
def test_an_option_that_keeps_one_value_given_twice_is_refused(capsys, arguments):
    with pytest.raises(SystemExit) as exited:
        main(arguments)
    assert exited.value.code == 2
    err = capsys.readouterr().err
    assert "is given more than once" in err and err.count("\n") == 1


def test_repeatable_options_stay_repeatable():
    from desktop.cli import build_parser

    args = build_parser().parse_args(["explain", "x", "--option", "mode=exact", "--option",
                                      "layers=all", "--quiet", "--quiet"])
    assert args.option == [("mode", "exact"), ("layers", "all")]


def test_a_reader_that_goes_away_does_not_fail_a_saved_run(tiny_model_folder, tmp_path):
    # `tokentrace explain ... | head -1` exited 1 without a word, after saving the record.
    import subprocess
    import sys

    out = tmp_path / "r.json"
    run = subprocess.Popen(
        [sys.executable, "-m", "desktop.cli", "explain", "ER positive , HER2 negative .",
         "--model", str(tiny_model_folder), "--max-new-tokens", "2", "--json", str(out)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    run.stdout.readline()
    run.stdout.close()  # as head -1 does
    _, err = run.communicate(timeout=300)
    assert run.returncode == 0, err
    assert out.is_file() and b"Traceback" not in err
