"""The desktop window with a tiny real model: explain, inspect, cancel, errors, quitting."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import unicodedata
from dataclasses import replace

import pytest
from PySide6.QtCore import QSettings, Qt
from PySide6.QtWidgets import QWidget

from desktop.present import blend
from desktop.qt.estimates import LONG_RUN_SECONDS
from desktop.qt.main_window import MainWindow
from desktop.qt.requests import Kind
from engine.models import ModelRequest

CASE = "52 year old woman , left breast mass 2 cm , ER positive , HER2 negative ."


@pytest.fixture
def make_window(qtbot, tmp_path):
    windows: list[MainWindow] = []

    def make(source: str) -> MainWindow:
        settings = QSettings(str(tmp_path / "settings.ini"), QSettings.Format.IniFormat)
        window = MainWindow(ModelRequest(source), settings=settings)
        qtbot.addWidget(window)
        window.show()
        windows.append(window)
        return window

    yield make
    for window in windows:  # no thread may outlive its window
        window.close()
        assert not window.engine.thread.isRunning()
        assert not window.hardware.thread.isRunning()
    # Destroyed here, on the window's own thread: left to Python's garbage collector, a window
    # could be finalised on whichever thread next allocates (the next test's engine thread).
    import gc

    from PySide6.QtCore import QCoreApplication, QEvent

    for window in windows:
        window.deleteLater()
    QCoreApplication.sendPostedEvents(None, QEvent.Type.DeferredDelete)
    windows.clear()
    gc.collect()


@pytest.fixture
def ready_window(make_window, qtbot, tiny_model_folder):
    window = make_window(str(tiny_model_folder))
    with qtbot.waitSignal(window.model_ready, timeout=60_000):
        pass
    return window


def _use(window, method: str) -> None:
    panel = window.settings_panel
    panel.method.setCurrentIndex(panel.method.findData(method))


def _explain(window, qtbot, steps=4, max_new_tokens=4, timeout=60_000, matrix=None,
             method="ig"):
    window.case_edit.clear()
    qtbot.keyClicks(window.case_edit, CASE)  # typed, as a clinician would
    _use(window, method)
    window.settings_panel.steps.setValue(steps)
    window.settings_panel.max_new_tokens.setValue(max_new_tokens)
    if matrix is not None:
        window.settings_panel.matrix.setChecked(matrix)
    with qtbot.waitSignal(window.explanation_shown, timeout=timeout):
        window.explain_button.click()


def _click_answer_token(window, qtbot, row: int) -> None:
    """A real mouse click on answer token ``row`` in the answer view."""
    from PySide6.QtCore import Qt
    from PySide6.QtGui import QTextCursor

    record = window.record
    position = len("".join(record.answer.tokens[:row])) + len(record.answer.tokens[row]) // 2
    cursor = QTextCursor(window.answer_view.document())
    cursor.setPosition(max(position, 0))
    point = window.answer_view.cursorRect(cursor).center()
    qtbot.mouseClick(window.answer_view.viewport(), Qt.MouseButton.LeftButton, pos=point)


def test_explain_colours_tokens_and_answer_click_changes_chart(ready_window, qtbot):
    window = ready_window
    assert "tiny-llama" in window.model_label.text()
    _explain(window, qtbot, matrix=True)
    record = window.record
    assert record is not None and record.prompt.case_text == CASE
    units = window.overlay.units
    top = max(units, key=lambda u: abs(u.score))
    r, g, b = blend(top.score, max(abs(u.score) for u in units))
    assert f"background-color:#{r:02x}{g:02x}{b:02x}" in window.overlay.toHtml()
    assert top.text in window.overlay.toPlainText()
    whole = list(window.chart.heights)
    assert len(whole) == len(window.overlay.units) > 5
    assert window.answer_view.toPlainText() == record.answer.text

    _click_answer_token(window, qtbot, 0)
    assert window.selected_row == 0
    first = list(window.chart.heights)
    assert first != whole
    assert sum(first) == pytest.approx(sum(record.attribution.per_token[0]))
    assert "answer token 1" in window.overlay_title.text()
    window.whole_answer.click()
    assert list(window.chart.heights) == whole

    window.granularity.setCurrentText("sentence")
    assert len(window.chart.heights) < len(whole)
    window.chart.sorted_box.setChecked(True)
    heights = window.chart.heights
    assert [abs(h) for h in heights] == sorted((abs(h) for h in heights), reverse=True)


def test_without_the_matrix_a_clicked_answer_token_is_explained_on_its_own(ready_window,
                                                                           qtbot):
    window = ready_window
    assert not window.settings_panel.matrix.isChecked()  # the window's default: quick runs
    _explain(window, qtbot)  # the reliability check starts now
    record = window.record
    assert record.attribution.per_token is None
    whole = list(window.chart.heights)
    with qtbot.waitSignal(window.row_shown, timeout=60_000):
        _click_answer_token(window, qtbot, 1)
        assert "answer token 2" in window.overlay_title.text()
        assert "follows" in window.overlay_title.text()
        assert list(window.chart.heights) == whole  # the whole answer until the row comes
    assert window.record.reliability is not None  # the click did not cancel the check
    assert "answer token 2" in window.overlay_title.text()
    assert "follows" not in window.overlay_title.text()
    row = window.rows[1]
    assert sum(window.chart.heights) == pytest.approx(sum(row))
    window.whole_answer.click()
    assert list(window.chart.heights) == whole
    window.select_answer_token(1)  # known now: shown at once, nothing recomputed
    assert window.cancel_button.isEnabled() is False
    assert sum(window.chart.heights) == pytest.approx(sum(row))
    # The same row as the matrix computed up front for the same answer.
    _explain(window, qtbot, matrix=True)
    assert window.record.answer.token_ids == record.answer.token_ids
    assert row == pytest.approx(window.record.attribution.per_token[1], rel=1e-5, abs=1e-8)
    assert window.rows == {}  # rows belong to the explanation they were computed for


def test_the_default_is_single_pass_and_a_click_explains_its_token(ready_window, qtbot):
    window = ready_window
    panel = window.settings_panel
    assert panel.method.currentData() == "ifr"
    assert panel.steps.value() == 0 and panel.steps.text() == "auto"
    assert not panel.steps.isEnabled()  # ifr has no steps
    _use(window, "ig")
    assert panel.steps.isEnabled() and panel.steps.text() == "auto"  # ig converges by default
    assert panel.request(CASE).steps is None
    window.case_edit.setPlainText(CASE)
    _use(window, "ifr")
    panel.max_new_tokens.setValue(4)
    with qtbot.waitSignal(window.explanation_shown, timeout=60_000):
        window.explain_button.click()
    record = window.record
    assert record.method.name == "ifr" and record.attribution.per_token is None
    # Shares have no direction, and the legend says so (signed methods: pushed toward/against).
    assert "drew on" in window.legend.text() and "against" not in window.legend.text()
    qtbot.waitUntil(lambda: window.record.reliability is not None, timeout=60_000)
    assert window.record.reliability.second_method == "input-x-gradient"
    with qtbot.waitSignal(window.row_shown, timeout=60_000):
        _click_answer_token(window, qtbot, 2)
    row = window.rows[2]
    assert sum(window.chart.heights) == pytest.approx(sum(row))
    # The row is that token's own single-sink flow: the matrix's row for the same answer.
    panel.matrix.setChecked(True)
    panel.target.setText(record.answer.text)
    with qtbot.waitSignal(window.explanation_shown, timeout=60_000):
        window.explain_button.click()
    assert window.record.answer.token_ids == record.answer.token_ids
    assert row == pytest.approx(window.record.attribution.per_token[2], rel=1e-5, abs=1e-8)


def test_hover_links_chart_and_overlay(ready_window, qtbot):
    window = ready_window
    _explain(window, qtbot)
    window.chart.hovered.emit(2)
    assert window.overlay._highlighted == 2
    window.overlay.hovered.emit(3)
    assert window.chart._mark is not None


def test_hardware_panel_samples_while_visible(ready_window, qtbot):
    qtbot.waitUntil(lambda: ready_window.hardware.samples >= 1, timeout=5000)
    assert "MiB" in ready_window.hardware.labels["rss"].text()


def test_cancel_mid_run_within_a_second(ready_window, qtbot):
    window = ready_window
    window.case_edit.setPlainText(CASE)
    _use(window, "ig")
    window.settings_panel.steps.setValue(1024)
    window.settings_panel.max_new_tokens.setValue(16)
    # The worker's signals come from its thread; wait on what the GUI thread shows.
    window.explain_button.click()
    qtbot.waitUntil(lambda: window.stage_label.text().startswith("Attributing"), timeout=30_000)
    assert window.cancel_button.isEnabled()
    pressed = time.perf_counter()
    window.cancel_button.click()
    qtbot.waitUntil(lambda: window.stage_label.text() == "Cancelled", timeout=5000)
    assert time.perf_counter() - pressed < 1.0
    assert window.explain_button.isEnabled() and window.record is None
    assert window.last_error is None  # cancelling is not an error


def test_broken_model_path_shows_a_dialog(make_window, qtbot, tmp_path):
    window = make_window(str(tmp_path / "no-such-model"))
    with qtbot.waitSignal(window.failed, timeout=30_000):
        pass
    assert "model not found" in window.last_error
    assert window.error_box is not None and window.error_box.isVisible()
    assert window.model_label.text() == "No model loaded"


def test_empty_case_is_refused_without_running(ready_window):
    ready_window.case_edit.setPlainText("   ")
    ready_window.explain_button.click()
    assert "empty" in ready_window.last_error
    assert ready_window.explain_button.isEnabled()


def test_closing_while_running_quits_cleanly(ready_window, qtbot):
    window = ready_window
    window.case_edit.setPlainText(CASE)
    _use(window, "ig")  # long enough to close the window during it
    window.settings_panel.steps.setValue(1024)
    window.explain_button.click()
    qtbot.waitUntil(lambda: window.stage_label.text().startswith("Attributing"), timeout=30_000)
    started = time.perf_counter()
    window.close()
    assert not window.engine.thread.isRunning()
    assert time.perf_counter() - started < 2.0


def test_window_state_is_restored(make_window, qtbot, tiny_model_folder):
    first = make_window(str(tiny_model_folder))
    first.chart_dock.hide()
    first.close()
    second = make_window(str(tiny_model_folder))
    assert not second.chart_dock.isVisible()


@pytest.mark.parametrize("with_case", [True, False], ids=["explained", "start-up"])
def test_screenshot_command(tiny_model_folder, tmp_path, with_case):
    case = tmp_path / "case.txt"
    case.write_text(CASE)
    shot = tmp_path / "window.png"
    done = subprocess.run(
        [sys.executable, "-m", "desktop.cli", "app", "--model", str(tiny_model_folder),
         "--max-new-tokens", "3", "--screenshot", str(shot),
         *(["--case-file", str(case)] if with_case else [])],
        capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    from PySide6.QtGui import QImage

    image = QImage(str(shot))
    assert image.width() >= 800 and image.height() >= 600


@pytest.mark.parametrize(("problem", "code"), [("model", 3), ("screenshot", 6)])
def test_screenshot_command_ends_with_the_documented_exit_codes(tmp_path, problem, code):
    # A model that cannot be loaded is 3, an unwritable picture 6 and before the window opens,
    # as for every command (README, "Bad input"); both were 1.
    case = tmp_path / "case.txt"
    case.write_text(CASE)
    model = tmp_path / "no-such-model" if problem == "model" else "embedded"
    shot = tmp_path / ("window.png" if problem == "model" else "folder.png")
    if problem == "screenshot":
        shot.mkdir()  # a folder where the picture should go
    done = subprocess.run(
        [sys.executable, "-m", "desktop.cli", "app", "--model", str(model), "--case-file",
         str(case), "--screenshot", str(shot)],
        capture_output=True, text=True, timeout=300,
        env={**os.environ, "QT_QPA_PLATFORM": "offscreen"})
    assert done.returncode == code, done.stderr
    said = [line for line in done.stderr.splitlines() if line.startswith("tokentrace:")]
    assert len(said) == 1 and "Traceback" not in done.stderr


def test_app_without_display_says_how_to_run_headless(tmp_path):
    import os

    env = {k: v for k, v in os.environ.items()
           if k not in ("DISPLAY", "WAYLAND_DISPLAY", "QT_QPA_PLATFORM")}
    done = subprocess.run([sys.executable, "-m", "desktop.cli", "app"], capture_output=True,
                          text=True, env=env, timeout=120)
    assert done.returncode == 7  # the window cannot start here; make run falls back on it
    assert "QT_QPA_PLATFORM=offscreen" in done.stderr and "Traceback" not in done.stderr


def test_estimate_updates_and_learns_from_a_run(ready_window, qtbot):
    window = ready_window
    window.case_edit.setPlainText(CASE)
    panel = window.settings_panel
    _use(window, "ig")
    panel.matrix.setChecked(True)
    panel.steps.setValue(8)
    before = window.estimate_seconds()
    panel.steps.setValue(64)
    assert window.estimate_seconds() == pytest.approx(before * 8, rel=0.05)
    panel.matrix.setChecked(False)
    assert window.estimate_seconds() < before * 8
    assert panel.estimate.text().startswith("about")
    panel.steps.setValue(4)
    panel.matrix.setChecked(True)
    guess = window.estimate_seconds()
    _explain(window, qtbot, steps=4)
    measured = float(window._settings.value(window.estimates.key()))
    assert measured > 0 and guess > 0
    # Same case and settings: the estimate now comes from the measured rate (a machine twice
    # as fast would halve it), not from the guess.
    learned = window.estimate_seconds()
    window._settings.setValue(window.estimates.key(), 2 * measured)
    assert window.estimate_seconds() == pytest.approx(learned / 2, rel=0.01)


def test_a_long_run_estimate_names_the_single_change_that_makes_it_short(ready_window):
    window = ready_window
    window.case_edit.setPlainText(CASE)
    panel = window.settings_panel
    _use(window, "ig")
    panel.steps.setValue(32)
    panel.max_new_tokens.setValue(64)
    panel.matrix.setChecked(True)
    # A machine on which IG without the matrix takes one minute for this case.
    window._settings.setValue(window.estimates.key(), 1.0)
    per_pass = window.estimate_seconds(replace(panel.request(CASE), matrix=False))
    window._settings.setValue(window.estimates.key(), per_pass / 60)
    window._update_estimate()
    assert window.estimate_seconds() > 10 * LONG_RUN_SECONDS
    quicker = dict(window.quicker_settings())
    assert quicker["without the per-token matrix"] == pytest.approx(60)
    assert quicker["with ifr"] <= LONG_RUN_SECONDS
    assert "a long run; without the per-token matrix: about 60 s; with ifr" in \
        panel.estimate.text()
    panel.matrix.setChecked(False)
    assert "long run" not in panel.estimate.text()


def test_presentation_mode_enlarges_type_and_goes_back(ready_window):
    window = ready_window
    size = window.overlay.font().pointSizeF()
    window.presentation_action.trigger()
    assert window.presentation_action.isChecked()
    assert window.overlay.font().pointSizeF() == pytest.approx(size * 1.5)
    window.presentation_action.trigger()
    assert window.overlay.font().pointSizeF() == pytest.approx(size)
    assert not window.isFullScreen()


def test_hardware_sampling_pauses_while_hidden(ready_window, qtbot):
    panel = ready_window.hardware
    qtbot.waitUntil(lambda: panel.samples >= 1, timeout=5000)
    ready_window.hardware_dock.hide()
    qtbot.wait(300)  # let a sample already on its way arrive
    paused_at = panel.samples
    qtbot.wait(2500)
    assert panel.samples == paused_at
    ready_window.hardware_dock.show()
    qtbot.waitUntil(lambda: panel.samples > paused_at, timeout=5000)


def test_cases_menu_loads_a_demo_case(ready_window):
    actions = ready_window.cases_menu.actions()
    assert len(actions) == 21  # demo_case.txt and the 20 cases of breast_cancer_cases.jsonl
    male = next(a for a in actions if a.text() == "Male breast cancer")
    male.trigger()
    assert "68-year-old man" in ready_window.case_edit.toPlainText()


def test_export_pdf_from_the_window(ready_window, qtbot, tmp_path):
    from pypdf import PdfReader

    _explain(ready_window, qtbot)
    ready_window.export_pdf(tmp_path / "report.pdf")
    text = " ".join(" ".join(p.extract_text() for p in PdfReader(tmp_path / "report.pdf").pages)
                    .split())
    assert " ".join(ready_window.record.answer.text.split()) in text
    assert "Report written" in ready_window.statusBar().currentMessage()


def test_session_round_trip_reproduces_the_view(ready_window, make_window, qtbot, tmp_path,
                                                tiny_model_folder):
    window = ready_window
    _explain(window, qtbot, matrix=True)
    window.granularity.setCurrentText("token")
    window.select_answer_token(1)
    window.chart.sorted_box.setChecked(True)
    window.chart.top_k.setValue(7)
    heights = list(window.chart.heights)
    window.save_session(tmp_path / "session.json")

    other = make_window(str(tiny_model_folder))
    other.open_session(tmp_path / "session.json")
    assert other.record == window.record
    assert other.view_state() == window.view_state()
    assert list(other.chart.heights) == heights
    assert other.overlay.toPlainText() == window.overlay.toPlainText()


def test_session_from_another_version_gets_a_message(ready_window, tmp_path):
    newer = tmp_path / "newer.json"
    newer.write_text('{"tokentrace_session": 9, "record": {}}')
    ready_window.open_session(newer)
    assert "newer TokenTrace" in ready_window.last_error
    older = tmp_path / "older.json"
    older.write_text('{"tokentrace_session": 0}')
    ready_window.open_session(older)
    assert "cannot read" in ready_window.last_error


def test_method_picker_shows_defaults_options_and_runs_the_method(ready_window, qtbot):
    window = ready_window
    panel = window.settings_panel
    window.case_edit.setPlainText(CASE)
    panel.method.setCurrentText("sig")
    assert panel.steps.value() == 0 and panel.steps.isEnabled()  # "auto": SIG converges
    assert panel.steps.text() == "auto"
    ig_like = window.estimate_seconds()
    panel.method.setCurrentText("ca-lig")
    assert panel.steps.value() == 8  # the method's own default
    panel.method.setCurrentText("grad-ellm")
    assert not panel.steps.isEnabled() and not panel.matrix.isEnabled()
    assert "mode=paper" in panel.options.placeholderText()
    assert window.estimate_seconds() < ig_like  # one forward against n x steps of them
    panel.options.setText("mode=both")
    # Said as it is typed, before any run (before: only when the run started).
    assert "unknown mode 'both'; choose paper or exact" in panel.estimate.text()
    panel.options.setText("depth=3")
    assert "has no option 'depth'" in panel.estimate.text()
    panel.options.setText("mode=exact,layers=-1,-2")  # a comma inside a value stays
    assert panel.option_pairs() == (("mode", "exact"), ("layers", "-1,-2"))
    assert panel.estimate.text().startswith("about")
    panel.options.setText("mode=exact, layers=all")
    assert panel.option_pairs() == (("mode", "exact"), ("layers", "all"))
    assert panel.estimate.text().startswith("about")
    panel.max_new_tokens.setValue(3)
    with qtbot.waitSignal(window.explanation_shown, timeout=60_000):
        window.explain_button.click()
    record = window.record
    assert record.method.name == "grad-ellm"
    assert record.method.params["mode"] == "exact" and record.method.params["layers"] == "all"
    assert "Method grad-ellm (mode=exact, layers=all)" in window.completeness.text()
    panel.method.setCurrentText("heta")
    panel.options.setText("samples=4000")
    assert "long run" in panel.estimate.text()


def test_an_explanation_of_a_span_says_it_is_not_checked(ready_window, qtbot):
    window = ready_window
    window.settings_panel.claims.setChecked(False)
    _use(window, "ifr")
    window.settings_panel.options.setText("span=0:0")
    try:
        _explain(window, qtbot, method="ifr")
        assert window.record.reliability is None and window.badge.isVisible()
        assert "Not checked: the reliability check judges explanations of the whole answer" \
            in window.badge.text()
    finally:
        window.settings_panel.options.setText("")


def test_reliability_badge_follows_an_explanation(ready_window, qtbot, tmp_path):
    window = ready_window
    assert window.settings_panel.reliability.isChecked()  # on by default
    window.settings_panel.claims.setChecked(False)  # nothing follows the check here
    with qtbot.waitSignal(window.reliability_shown, timeout=60_000):
        _explain(window, qtbot)
    check = window.record.reliability
    assert check is not None and window.badge.isVisible()
    assert f"Reliability: {check.verdict.capitalize()}" in window.badge.text()
    assert f"{check.rank_correlation:.2f}" in window.badge.text()
    assert "vs random" in window.badge.toolTip()
    # Where the word deletions ran: the model's float32, or its bfloat16 twin on a CPU that
    # multiplies bfloat16 natively (engine/precision.py).
    assert check.precision in ("float32", "bfloat16-twin")
    assert "Word deletions scored" in window.badge.toolTip()
    assert window.explain_button.isEnabled() and not window.cancel_button.isEnabled()
    pdf = tmp_path / "checked.pdf"
    window.export_pdf(pdf)
    from pypdf import PdfReader

    text = " ".join(" ".join(page.extract_text().split()) for page in PdfReader(pdf).pages)
    text = unicodedata.normalize("NFKC", text)  # the font sets "fl" as one ligature glyph
    assert "How far to trust this explanation" in text and check.second_method in text
    assert "Word deletions scored" in text
    # In the model's own precision when asked: the explanation's float32, never the twin.
    window.settings_panel.exact_check.setChecked(True)
    with qtbot.waitSignal(window.reliability_shown, timeout=60_000):
        window.check_reliability()
    assert window.record.reliability.precision == "float32"
    assert "in float32, the model" in window.badge.toolTip()
    window.settings_panel.exact_check.setChecked(False)
    # Switched off, an explanation comes without a badge (and the precision has no say).
    window.settings_panel.reliability.setChecked(False)
    assert not window.settings_panel.exact_check.isEnabled()
    _explain(window, qtbot)
    assert window.record.reliability is None and not window.badge.isVisible()


# ---- races: late results never change what is on screen or saved ---------------------------


def test_a_late_reliability_check_never_replaces_an_opened_explanation(ready_window, qtbot,
                                                                      tmp_path):
    window = ready_window
    window.settings_panel.reliability.setChecked(False)
    _explain(window, qtbot, max_new_tokens=3)
    opened = window.record
    window.save_session(tmp_path / "first.json")
    _explain(window, qtbot, max_new_tokens=4)
    assert window.record.created_at != opened.created_at
    window.check_reliability()  # the check of the second explanation runs...
    assert window.requests.running is not None
    window.open_session(tmp_path / "first.json")  # ...while the first is opened
    # Wait on what the GUI thread sees: the check's result has arrived and was settled.
    qtbot.waitUntil(lambda: window.requests.running is None, timeout=60_000)
    assert window.record.created_at == opened.created_at
    assert window.record.reliability is None and not window.badge.text().startswith(
        "<b>Reliability")
    assert window.explain_button.isEnabled() and not window.cancel_button.isEnabled()
    saved = tmp_path / "saved.json"
    window.save_session(saved)
    assert json.loads(saved.read_text())["record"]["created_at"] == opened.created_at


def test_a_cancelled_check_of_a_replaced_explanation_leaves_the_badge_alone(ready_window, qtbot,
                                                                           tmp_path):
    window = ready_window
    window.settings_panel.reliability.setChecked(False)
    _explain(window, qtbot, max_new_tokens=3)
    window.save_session(tmp_path / "first.json")
    _explain(window, qtbot, max_new_tokens=24)
    window.check_reliability()  # the check of the second explanation runs...
    window.open_session(tmp_path / "first.json")  # ...the first is opened, with no check...
    window.cancel()  # ...and the check is cancelled
    qtbot.waitUntil(lambda: window.requests.running is None, timeout=60_000)
    assert window.stage_label.text() == "Cancelled"
    assert window.record.reliability is None and not window.badge.isVisible()


def test_esc_cancels_a_request_that_has_not_started_yet(ready_window, qtbot):
    window = ready_window
    window.settings_panel.reliability.setChecked(False)
    window.case_edit.setPlainText(CASE)
    _use(window, "ig")
    window.settings_panel.steps.setValue(1024)
    window.settings_panel.max_new_tokens.setValue(16)
    window.explain_button.click()
    qtbot.waitUntil(lambda: window.stage_label.text().startswith("Attributing"), timeout=30_000)
    window.explain_button.click()  # queued behind the run it supersedes
    window.cancel()  # Esc, before the queued run has started
    qtbot.waitUntil(lambda: window.stage_label.text() == "Cancelled", timeout=10_000)
    qtbot.wait(1500)  # the queued run would have started by now
    assert window.record is None and window.stage_label.text() == "Cancelled"
    assert window.explain_button.isEnabled()


def test_clicking_an_answer_token_never_cancels_a_model_load(ready_window, qtbot,
                                                            tiny_model_folder):
    window = ready_window
    window.settings_panel.reliability.setChecked(False)
    _explain(window, qtbot, matrix=False, method="ifr")
    with qtbot.waitSignal(window.model_ready, timeout=60_000):
        window.load_model(ModelRequest(str(tiny_model_folder)))
        window.select_answer_token(0)  # would have superseded the load
    assert not window.model_label.text().startswith("Loading")
    assert window.last_error is None


def test_closing_during_a_load_no_cancel_can_interrupt_never_tears_down_its_thread(
        make_window, qtbot, tiny_model_folder, monkeypatch):
    """Reading a large model's weights cannot be interrupted; closing then hides the window at
    once and closes it when the read returns, instead of destroying a running thread."""
    import engine.models

    read = engine.models._load_folder

    def slow_disk(*args):
        time.sleep(4.0)  # a large model's weights on a slow disk
        return read(*args)

    monkeypatch.setattr(engine.models, "_load_folder", slow_disk)
    window = make_window(str(tiny_model_folder))
    qtbot.waitUntil(lambda: window.stage_label.text() == "Loading model", timeout=10_000)
    started = time.perf_counter()
    window.close()
    assert time.perf_counter() - started < 3.0
    assert not window.isVisible() and window.engine.thread.isRunning()
    qtbot.waitUntil(lambda: not window.engine.thread.isRunning(), timeout=30_000)
    qtbot.waitUntil(lambda: not window.hardware.thread.isRunning(), timeout=5_000)


HOSTILE = "<img src='x'><b>bold</b>"


def test_text_from_an_opened_file_is_shown_as_text_never_as_html(ready_window, qtbot, tmp_path):
    from PySide6.QtWidgets import QLabel

    window = ready_window
    window.settings_panel.reliability.setChecked(False)
    _explain(window, qtbot, matrix=True)
    data = json.loads(window.record.to_json())
    data["model"].update(name=HOSTILE, source=HOSTILE, dtype=HOSTILE)
    data["hardware"]["device_name"] = HOSTILE
    data["method"]["params"]["note"] = HOSTILE
    data["answer"]["tokens"][0] = HOSTILE
    data["answer"]["text"] = "".join(data["answer"]["tokens"])  # edited consistently
    session = tmp_path / "hostile.json"
    session.write_text(json.dumps(data))
    window.open_session(session)
    assert window.last_error is None and window.record.model.name == HOSTILE
    window.select_answer_token(0)
    shown = [label for label in window.findChildren(QLabel) if "<img" in label.text()]
    assert shown, "the hostile text should be on screen somewhere"
    for label in shown:  # as text: either a plain-text label or escaped rich text
        assert label.textFormat() == Qt.TextFormat.PlainText, label.objectName() or label.text()
    for widget in window.findChildren(QWidget):
        assert "<img" not in widget.toolTip()
    assert HOSTILE in window.answer_view.toPlainText()  # the answer token, as typed


def _open_edited(window, qtbot, tmp_path, edit) -> None:
    """Explain (IFR, no matrix, nothing after), save the record edited by ``edit(data)`` and
    open it: it opens without a word."""
    window.settings_panel.reliability.setChecked(False)
    window.settings_panel.claims.setChecked(False)
    _explain(window, qtbot, method="ifr", matrix=False)
    data = json.loads(window.record.to_json())
    edit(data)
    opened = tmp_path / "edited.json"
    opened.write_text(json.dumps(data))
    window.open_session(opened)
    assert window.last_error is None


def test_an_opened_explanation_with_text_for_a_number_in_its_settings_is_one_line(
        ready_window, qtbot, tmp_path):
    # Clicking an answer token raised ValueError in the window's time estimate before.
    window = ready_window
    _open_edited(window, qtbot, tmp_path,
                 lambda data: data["method"]["params"].update(hops="x"))
    assert window.record.method.params["hops"] == "x"
    window.select_answer_token(0)
    qtbot.waitUntil(lambda: window.last_error is not None, timeout=30_000)
    assert "hops='x' is not a valid value for ifr" in window.last_error
    assert len(window.last_error.splitlines()) == 1


def test_missing_qt_system_libraries_give_one_line_naming_the_packages(monkeypatch):
    from desktop.qt.app import check_platform
    from engine.errors import WindowUnavailableError

    monkeypatch.setenv("DISPLAY", ":99")
    monkeypatch.delenv("QT_QPA_PLATFORM", raising=False)
    monkeypatch.delenv("WAYLAND_DISPLAY", raising=False)
    check_platform(missing=[])  # nothing missing: the window may start
    with pytest.raises(WindowUnavailableError, match=r"apt-get install libxcb-cursor0 "
                                                     r"libxkbcommon-x11-0\)") as caught:
        check_platform(missing=["libxcb-cursor.so.0", "libxkbcommon-x11.so.0"])
    assert caught.value.exit_code == 7 and "\n" not in str(caught.value)
    with pytest.raises(WindowUnavailableError, match="install the packages that hold libodd"):
        check_platform(missing=["libodd.so.3"])
    monkeypatch.setenv("QT_QPA_PLATFORM", "offscreen")  # another platform: xcb is not needed
    check_platform(missing=["libxcb-cursor.so.0"])


def test_the_window_says_what_to_install_instead_of_aborting(tmp_path):
    """Without libxcb-cursor0 (hidden in a private mount namespace) Qt aborts with exit 134;
    TokenTrace ends with one line and exit 7, on which `make run` runs the terminal demo."""
    import os
    import shutil

    library = next((p for p in ("/lib/x86_64-linux-gnu/libxcb-cursor.so.0",
                                "/usr/lib/x86_64-linux-gnu/libxcb-cursor.so.0",
                                "/usr/lib64/libxcb-cursor.so.0") if os.path.exists(p)), None)
    if library is None or shutil.which("unshare") is None or subprocess.run(
            ["unshare", "-rm", "true"], capture_output=True).returncode != 0:
        pytest.skip("needs libxcb-cursor0 installed and unprivileged mount namespaces")
    env = {**os.environ, "DISPLAY": ":99"}
    env.pop("QT_QPA_PLATFORM", None)
    env.pop("WAYLAND_DISPLAY", None)
    real = os.path.realpath(library)
    done = subprocess.run(
        ["unshare", "-rm", "sh", "-c", f"mount --bind /dev/null {real} && exec "
         f"{sys.executable} -m desktop.cli app"],
        capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode == 7, done.stderr[-500:]
    assert "apt-get install libxcb-cursor0" in done.stderr
    assert "Traceback" not in done.stderr and len(done.stderr.strip().splitlines()) == 1


def _click_link(view, qtbot, href: str) -> None:
    """A real mouse click in the middle of the link ``href`` of a QTextBrowser."""
    from PySide6.QtCore import Qt
    from PySide6.QtGui import QTextCursor

    block = view.document().begin()
    while block.isValid():
        fragments = block.begin()
        while not fragments.atEnd():
            fragment = fragments.fragment()
            if fragment.charFormat().anchorHref() == href:
                cursor = QTextCursor(view.document())
                cursor.setPosition(fragment.position() + fragment.length() // 2)
                point = view.cursorRect(cursor).center()
                qtbot.mouseClick(view.viewport(), Qt.MouseButton.LeftButton, pos=point)
                return
            fragments += 1
        block = block.next()
    raise AssertionError(f"no link {href} in the view")


def test_clicking_a_statement_colours_the_sentences_it_rests_on(ready_window, qtbot):
    window = ready_window
    window.settings_panel.reliability.setChecked(False)
    assert window.settings_panel.claims.isChecked()  # on by default
    window.settings_panel.target.setText("ER positive , HER2 negative . left breast mass 2 cm")
    with qtbot.waitSignal(window.claims_shown, timeout=60_000):
        _explain(window, qtbot, method="ifr", matrix=False)
    claims = window.record.claims
    assert [c.text for c in claims.claims] == ["ER positive , HER2 negative .",
                                               "left breast mass 2 cm"]
    listed = window.claims_view.toPlainText()
    for claim in claims.claims:
        assert claim.text in listed
    flagged = [c for c in claims.claims if not c.grounded]
    assert ("Not grounded in this case" in listed) == bool(flagged)
    assert window.explain_button.isEnabled() and not window.cancel_button.isEnabled()

    _click_link(window.claims_view, qtbot, "claim:1")
    assert window.selected_claim == 1 and window.selected_row is None
    assert "what statement 2 rests on" in window.overlay_title.text()
    shares = claims.claims[1].evidence
    shown = sorted(((u.text, u.score) for u in window.overlay._units), key=lambda u: -u[1])
    best = max(range(len(shares)), key=shares.__getitem__)
    start, end = claims.sentences[best]
    assert shown[0] == (window.record.prompt.case_text[start:end], shares[best])
    window.whole_answer.click()  # back to the whole answer
    assert window.selected_claim is None and "whole answer" in window.overlay_title.text()


def test_late_claims_never_replace_an_opened_explanation(ready_window, qtbot, tmp_path):
    window = ready_window
    window.settings_panel.reliability.setChecked(False)
    window.settings_panel.claims.setChecked(False)
    _explain(window, qtbot, max_new_tokens=3, method="ifr")
    opened = window.record
    window.save_session(tmp_path / "first.json")
    _explain(window, qtbot, max_new_tokens=4, method="ifr")
    window.find_claims()  # the second explanation's claims run...
    assert window.requests.running is not None
    window.open_session(tmp_path / "first.json")  # ...while the first is opened
    qtbot.waitUntil(lambda: window.requests.running is None, timeout=60_000)
    assert window.record.created_at == opened.created_at and window.record.claims is None


def test_what_if_an_edited_case_compare_revert_and_rank_sentences(ready_window, qtbot,
                                                                   tmp_path):
    window = ready_window
    window.settings_panel.reliability.setChecked(False)
    window.settings_panel.claims.setChecked(False)
    _explain(window, qtbot, method="ifr", max_new_tokens=4)
    panel = window.whatif_panel
    assert panel.whatif_button.isEnabled()
    original = window.record.prompt.case_text
    panel.whatif_button.click()  # nothing edited yet
    assert "The case is unchanged" in window.last_error

    edited = original.replace("HER2 negative", "HER2 positive")
    window.case_edit.setPlainText(edited)
    with qtbot.waitSignal(window.whatif_shown, timeout=60_000):
        panel.whatif_button.click()
    (found,) = panel.found
    assert found.edited_case == edited and found.original.text == window.record.answer.text
    assert [e.describe() for e in found.edits] == ["replace “HER2 negative” with “HER2 positive”"]
    details = panel.details.toPlainText()
    assert "What if: replace “HER2 negative” with “HER2 positive”" in details
    assert ("the original answer is" in details) or ("exactly as likely" in details)
    assert window.case_edit.toPlainText() == edited  # the edit stays until reverted
    panel.revert_button.click()
    assert window.case_edit.toPlainText() == original

    with qtbot.waitSignal(window.whatif_shown, timeout=60_000):
        panel.sensitivity_button.click()
    table = panel.details.toPlainText()
    assert "Sensitivity" in table and "ER positive" in table

    pdf = tmp_path / "whatif.pdf"
    window.export_pdf(pdf)
    from pypdf import PdfReader

    text = " ".join(" ".join(p.extract_text().split()) for p in PdfReader(pdf).pages)
    assert "What if: replace" in text
    panel.list.item(0).setCheckState(Qt.CheckState.Unchecked)  # left out of the report
    window.export_pdf(pdf)
    text = " ".join(" ".join(p.extract_text().split()) for p in PdfReader(pdf).pages)
    assert "What if: replace" not in text

    # The what-ifs are kept with the saved explanation, and only with their own case.
    window.save_session(tmp_path / "session.json")
    window.open_session(tmp_path / "session.json")
    assert window.last_error is None or "unchanged" in window.last_error
    assert panel.found == [found] and panel.list.count() == 1
    data = json.loads((tmp_path / "session.json").read_text())
    data["whatifs"][0]["original_case_sha256"] = "0" * 64
    (tmp_path / "other.json").write_text(json.dumps(data))
    window.open_session(tmp_path / "other.json")
    assert "a what-if belongs to another case or model" in window.last_error


def test_a_fields_case_is_edited_field_by_field_and_asked_what_if(ready_window, qtbot,
                                                                  tmp_path):
    window = ready_window
    window.settings_panel.reliability.setChecked(False)
    window.settings_panel.claims.setChecked(False)
    _use(window, "ifr")
    window.settings_panel.max_new_tokens.setValue(3)
    path = tmp_path / "fields.json"
    path.write_text(json.dumps({"age": 52, "er": "positive", "her2": "negative (IHC 0)"}))
    window.open_fields(path)
    editor = window.fields_panel.editors["er"]
    assert [editor.itemText(i) for i in range(editor.count())] == [
        "positive", "negative", "low (1-10%)"]  # the known values of ER
    assert window.case_edit.toPlainText().startswith("Age: 52\nER: positive\nHER2: negative")
    with qtbot.waitSignal(window.explanation_shown, timeout=60_000):
        window.explain_button.click()
    assert set(window.record.attribution.per_field) == {"age", "er", "her2"}

    editor.setCurrentText("negative")
    window.fields_panel.apply_button.click()
    assert "ER: negative" in window.case_edit.toPlainText()
    with qtbot.waitSignal(window.whatif_shown, timeout=60_000):
        window.whatif_panel.whatif_button.click()
    (found,) = window.whatif_panel.found
    assert [e.describe() for e in found.edits] == ["replace “ER: positive” with “ER: negative”"]
    with qtbot.waitSignal(window.whatif_shown, timeout=60_000):
        window.whatif_panel.sensitivity_button.click()
    table = window.whatif_panel.details.toPlainText()
    for line in ("Age: 52", "ER: positive", "HER2: negative (IHC 0)"):  # each field ranked
        assert line in table


def test_the_new_answer_of_a_what_if_is_explained_beside_the_original(ready_window, qtbot):
    window = ready_window
    window.settings_panel.reliability.setChecked(False)
    window.settings_panel.claims.setChecked(False)
    window.settings_panel.baseline.setCurrentText("zero")
    _explain(window, qtbot, method="ig", steps=4, max_new_tokens=4)
    original = window.record
    assert (original.method.params["steps"], original.method.params["baseline"]) == (4, "zero")
    window.settings_panel.baseline.setCurrentText("pad")  # the panel moves on: the what-if not
    window.case_edit.setPlainText(original.prompt.case_text.replace("left breast", "right breast"))
    with qtbot.waitSignal(window.whatif_shown, timeout=60_000):
        window.whatif_panel.whatif_button.click()
    assert window.whatif_panel.explain_button.isEnabled()
    with qtbot.waitSignal(window.whatif_shown, timeout=60_000):
        window.whatif_panel.explain_button.click()
    new = window.whatif_panel.explained[0]
    assert window.record is original  # the original explanation stays on screen
    # With the original's own settings (the defaults before: converged IG, pad baseline), so
    # that only the edit differs between the two coloured cases.
    assert new.method.name == "ig"
    assert (new.method.params["steps"], new.method.params["baseline"]) == (4, "zero")
    assert new.prompt.case_text == window.whatif_panel.found[0].edited_case
    assert new.answer.text == window.whatif_panel.found[0].answer.text and new.answer.forced
    details = window.whatif_panel.details.toPlainText()
    assert "by what the new answer rests on" in details and "right breast" in details
    # An answer whose ids its text does not give back is not shown explained as if it were.
    found = window.whatif_panel.found[0]
    ids = found.answer.token_ids
    window.whatif_panel.found[0] = replace(found, answer=replace(
        found.answer, token_ids=(ids[-1], *ids[:-1]) if len(set(ids)) > 1 else (ids[0] + 1,)))
    window.whatif_panel.explained.clear()
    qtbot.waitUntil(lambda: window.whatif_panel.explain_button.isEnabled(), timeout=10_000)
    window.whatif_panel.explain_button.click()
    qtbot.waitUntil(lambda: window.requests.running is None, timeout=60_000)
    assert "could not be forced token for token" in window.last_error
    assert not window.whatif_panel.explained


def test_a_what_if_during_the_check_runs_the_check_again_after_it(ready_window, qtbot):
    # Before: the what-if replaced the running check, whose cancellation was then dropped (no
    # longer the current request): the badge said "Checking..." for ever and the claims never
    # ran.
    window = ready_window
    window.settings_panel.claims.setChecked(True)
    _explain(window, qtbot, method="ifr", max_new_tokens=4)
    assert window.requests.running is Kind.RELIABILITY  # started on the explanation's heels
    case = window.record.prompt.case_text
    where = case.index("HER2")
    with qtbot.waitSignal(window.whatif_shown, timeout=60_000):
        window.overlay.strike_requested.emit(where, where + 4)
        assert "runs again when the what-if is done" in window.badge.text()
    with qtbot.waitSignal(window.claims_shown, timeout=60_000):  # the check, then the claims
        pass
    assert window.record.reliability is not None and window.record.claims is not None
    assert window.badge.text().startswith("<b>Reliability")
    assert len(window.whatif_panel.found) == 1


def test_a_token_clicked_while_a_what_if_is_explained_is_explained_after_it(ready_window, qtbot):
    # Before: the click replaced the what-if's explanation, which never appeared, silently.
    window = ready_window
    window.settings_panel.reliability.setChecked(False)
    window.settings_panel.claims.setChecked(False)
    _explain(window, qtbot, method="ig", steps=64, max_new_tokens=4, matrix=False)
    window.case_edit.setPlainText(window.record.prompt.case_text.replace("left", "right"))
    with qtbot.waitSignal(window.whatif_shown, timeout=60_000):
        window.whatif_panel.whatif_button.click()
    with qtbot.waitSignals([window.whatif_shown, window.row_shown], timeout=120_000):
        window.whatif_panel.explain_button.click()
        assert window.requests.running is Kind.WHATIF_EXPLAIN
        _click_answer_token(window, qtbot, 1)
        assert window.requests.running is Kind.WHATIF_EXPLAIN  # not replaced by the click
    assert len(window.whatif_panel.explained) == 1 and window.rows.get(1) is not None


def test_striking_out_a_word_or_sentence_on_the_coloured_case_asks_what_if(ready_window,
                                                                          qtbot):
    window = ready_window
    window.settings_panel.reliability.setChecked(False)
    window.settings_panel.claims.setChecked(False)
    _explain(window, qtbot, method="ifr", max_new_tokens=3)
    case = window.record.prompt.case_text
    where = case.index("HER2")
    actions = dict(window.overlay.strike_actions(where + 1))
    assert actions["What if “HER2” were struck out"] == (where, where + 4)
    sentence = actions["What if this sentence were struck out"]
    assert case[sentence[0]:sentence[1]] == case  # the tiny case is one sentence
    with qtbot.waitSignal(window.whatif_shown, timeout=60_000):
        window.overlay.strike_requested.emit(where, where + 4)  # the menu's action
    (found,) = window.whatif_panel.found
    assert found.edited_case == case.replace("HER2 ", "")  # the word struck, spaces tidied
    assert window.case_edit.toPlainText() == found.edited_case


def test_an_opened_explanation_whose_text_is_not_its_ids_is_refused_where_it_meets_the_model(
        ready_window, qtbot, tmp_path):
    # The case edited with its tokens and sha256, its ids left: a token click or a sentence
    # ranking ran on the ids of the original text, shown under the edited one.
    import hashlib

    def edit(data):
        prompt = data["prompt"]
        swap = lambda text: text.replace("negative", "positive")  # noqa: E731
        prompt["case_text"], prompt["text"] = swap(prompt["case_text"]), swap(prompt["text"])
        prompt["tokens"] = [swap(token) for token in prompt["tokens"]]
        prompt["case_sha256"] = hashlib.sha256(prompt["case_text"].encode()).hexdigest()

    window = ready_window
    _open_edited(window, qtbot, tmp_path, edit)  # shown as written: only the tokenizer can tell
    window.select_answer_token(0)
    qtbot.waitUntil(lambda: window.last_error is not None, timeout=30_000)
    assert "is not what its token ids say" in window.last_error
    window.last_error = None
    window.sensitivity()
    qtbot.waitUntil(lambda: window.last_error is not None, timeout=30_000)
    assert "is not what its token ids say" in window.last_error
