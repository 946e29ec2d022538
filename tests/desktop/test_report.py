"""The PDF report: real PDF, text that matters, highlight colours, pagination, metadata."""

from __future__ import annotations

import dataclasses
import re

import pytest
from pypdf import PdfReader
from test_qt_overlay import long_record

from desktop.cli import main
from desktop.present import NEGATIVE, POSITIVE
from desktop.report import write_pdf
from engine.errors import OutputError


def _fill_colours(data: bytes) -> set[tuple[int, int, int]]:
    """RGB fill colours set in a PDF content stream (Qt writes them as "r g b scn")."""
    found = re.findall(rb"([\d.]+) ([\d.]+) ([\d.]+) (?:scn|rg)\b", data)
    return {tuple(round(float(v) * 255) for v in triple) for triple in found}


def test_report_holds_case_answer_method_and_provenance(tmp_path):
    base = long_record(120)
    record = dataclasses.replace(base, model=dataclasses.replace(base.model, sha256="3fa9" * 16))
    path = write_pdf(record, tmp_path / "report.pdf")
    reader = PdfReader(path)
    text = " ".join(page.extract_text() for page in reader.pages)
    squashed = " ".join(text.split())
    assert "Decision support, not a diagnosis" in squashed
    assert " ".join(record.prompt.case_text.split()[:6]) in squashed
    assert "ig" in squashed and "Completeness error" in squashed
    assert record.model.sha256 in squashed.replace(" ", "")  # may wrap inside its table cell
    assert reader.metadata.title.startswith("TokenTrace report")
    assert "TokenTrace" in reader.metadata.creator


def test_long_case_paginates_and_draws_the_highlight_colours(tmp_path):
    record = long_record(3000)
    reader = PdfReader(write_pdf(record, tmp_path / "long.pdf"))
    assert len(reader.pages) >= 3
    drawing = b"".join(page.get_contents().get_data() for page in reader.pages)
    colours = _fill_colours(drawing)
    # The strongest words and the legend ends are painted in the scale's end colours, and
    # many intermediate shades are used for the other words.
    assert POSITIVE in colours and NEGATIVE in colours
    assert len(colours) > 50


def test_explain_pdf_from_the_command_line(tiny_model_folder, tmp_path, capsys):
    out = tmp_path / "r.pdf"
    code = main(["explain", "52 year old woman , ER positive , HER2 negative .", "--model",
                 str(tiny_model_folder), "--target", "endocrine therapy",
                 "--quiet", "--pdf", str(out)])
    assert code == 0, capsys.readouterr().err
    text = " ".join(" ".join(p.extract_text() for p in PdfReader(out).pages).split())
    assert "endocrine therapy" in text and "tiny-llama" in text


def test_unwritable_pdf_path_is_one_clear_error(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(OutputError, match="cannot write the report"):
        write_pdf(long_record(30), blocker / "sub" / "r.pdf")


def test_a_report_that_cannot_take_its_name_is_one_clear_error(tmp_path, monkeypatch):
    # Before: the OSError of the final rename escaped as exit 70 (and in a batch, past its
    # per-case handling), leaving the complete file under a hidden name.
    import desktop.report.pdf

    def refused(source, target):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(desktop.report.pdf.os, "replace", refused)
    with pytest.raises(OutputError, match=r"cannot write the report .*r\.pdf: Permission denied"):
        write_pdf(long_record(3), tmp_path / "r.pdf")
    assert list(tmp_path.iterdir()) == []


def test_claims_section_quotes_the_evidence_flagged_claims_first(tiny_model_folder, tmp_path,
                                                                 capsys):
    import json

    from engine.record import Explanation

    case = "52 year old woman . ER positive , HER2 negative . left breast mass 2 cm ."
    code = main(["explain", case, "--model", str(tiny_model_folder), "--method", "ifr",
                 "--target", "ER positive . breast mass 2 cm", "--claims", "--quiet",
                 "--json", str(tmp_path / "r.json"), "--pdf", str(tmp_path / "r.pdf")])
    assert code == 0
    assert "What each statement rests on" in capsys.readouterr().out
    record = Explanation.load(tmp_path / "r.json")
    assert json.loads((tmp_path / "r.json").read_text())["claims"]["evidence_method"] == \
        "leave-one-out"  # 3 sentences: measured, not attributed
    claims = record.claims.claims
    assert [c.text for c in claims] == ["ER positive .", "breast mass 2 cm"]
    text = " ".join(" ".join(page.extract_text().split()) for page in PdfReader(
        tmp_path / "r.pdf").pages)
    section = text[text.index("What each statement rests on"):]
    where = {c.text: section.index(c.text) for c in claims}
    flagged = [where[c.text] for c in claims if not c.grounded]
    grounded = [where[c.text] for c in claims if c.grounded]
    assert all(f < g for f in flagged for g in grounded)
    for claim in claims:  # its top sentence is quoted with its share
        best = max(range(len(claim.evidence)), key=claim.evidence.__getitem__)
        start, end = record.claims.sentences[best]
        assert f"{100 * claim.evidence[best]:.0f}% \u201c{case[start:end]}\u201d" in section


def test_the_pdf_title_shows_no_bidirectional_override(tmp_path):
    # The body showed U+FFFD, the title (a viewer's title bar) read "negative" for "evitagen".
    base = long_record(30)
    text = "HER2 \u202eevitagen\u202c status"
    assert len(base.answer.tokens) == 1
    record = dataclasses.replace(base, answer=dataclasses.replace(base.answer, text=text,
                                                                   tokens=(text,)))
    title = PdfReader(write_pdf(record, tmp_path / "bidi.pdf")).metadata.title
    assert "\u202e" not in title and "\ufffd" in title


def test_characters_no_font_can_draw_are_named_not_left_as_boxes(tmp_path):
    # Chinese and emoji printed as empty boxes with no word of it ("HER2陰性" unreadable).
    from PySide6.QtGui import QFont, QTextDocument

    from desktop.report.pdf import unshown_characters
    from desktop.report.qt import ensure_gui_application, font_family

    ensure_gui_application()
    document = QTextDocument()
    document.setDefaultFont(QFont(font_family(), 10))
    document.setHtml("<p>ER positive, café, مريضة, \u03b2-blocker</p>")
    assert unshown_characters(document) == ""  # Latin, Arabic, Greek: the bundled font
    # Private-use characters: no font has them, on any machine (unlike Chinese or emoji, which
    # print as boxes only where no font has them, as on this one).
    unknown = "\U0010fffd\U000ffffd"
    document.setHtml(f"<p>HER2{unknown}\ufe0f\u200d x</p>")
    assert unshown_characters(document) == unknown  # a selector or joiner draws nothing
    base = long_record(30)
    case = f"HER2{unknown} breast"
    record = dataclasses.replace(base, prompt=dataclasses.replace(
        base.prompt, case_text=case, text=case, tokens=(case,), token_ids=(1,),
        offsets=((0, len(case)),), attributable=(True,), case_sha256="", format="raw",
        system_prompt=None, fields=()),
        attribution=dataclasses.replace(base.attribution, sequence=(1.0,), per_token=None,
                                        per_field={}))
    text = " ".join(" ".join(p.extract_text() for p in PdfReader(
        write_pdf(record, tmp_path / "r.pdf")).pages).split())
    assert "Some characters cannot be shown here" in text and "U+10FFFD, U+FFFFD" in text


def test_a_report_has_the_mode_of_a_plain_write_and_leaves_no_scratch_file(tmp_path):
    import os

    old = os.umask(0o022)
    try:
        path = write_pdf(long_record(30), tmp_path / "r.pdf")
    finally:
        os.umask(old)
    assert path.stat().st_mode & 0o777 == 0o644  # mkstemp's 0600 before
    assert [p.name for p in tmp_path.iterdir()] == ["r.pdf"]
