"""TokenTrace's main window: case editor, answer, coloured overlay, chart, hardware, settings."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from PySide6.QtCore import QSettings, Qt, QTimer, QUrl, Signal
from PySide6.QtGui import QAction, QFont, QKeySequence
from PySide6.QtWidgets import (
    QApplication,
    QComboBox,
    QDockWidget,
    QHBoxLayout,
    QLabel,
    QMainWindow,
    QMessageBox,
    QPlainTextEdit,
    QProgressBar,
    QPushButton,
    QSplitter,
    QTextBrowser,
    QVBoxLayout,
    QWidget,
)

from desktop.present import (
    ExplanationView,
    claim_units,
    html_text,
    method_summary,
    scale_of,
    units_of,
)
from desktop.qt import plain_tooltip
from desktop.qt.badge import ReliabilityBadge
from desktop.qt.chart import AttributionChart
from desktop.qt.claims_view import ClaimsView, clipped
from desktop.qt.dialogs import ask_folder, ask_open, ask_save
from desktop.qt.estimates import RunEstimates, duration
from desktop.qt.fields_panel import FieldsPanel
from desktop.qt.hardware import HardwarePanel
from desktop.qt.overlay import Legend, TokenOverlay
from desktop.qt.requests import Kind, Request, Requests
from desktop.qt.settings_panel import SettingsPanel
from desktop.qt.whatif_panel import WhatIfPanel
from desktop.qt.worker import EngineThread
from desktop.session import ViewState, load_session, save_session
from engine.audit import audited
from engine.cases import demo_cases, read_case, read_fields
from engine.errors import TokenTraceError
from engine.explain import ExplainRequest, recorded_params
from engine.methods import get_method
from engine.models import ModelRequest
from engine.record import Explanation
from engine.task import STAGES
from engine.verdict import not_checkable

CLOSE_WAIT_MS = 2000  # how long a running step may take to stop before a closed window hides


class MainWindow(QMainWindow):
    """The window. ``record`` holds the explanation on screen (None before the first)."""

    explanation_shown = Signal()
    row_shown = Signal(int)  # an answer token's row, computed on demand, is on screen
    reliability_shown = Signal()  # the badge shows a finished check
    claims_shown = Signal()  # the statements list shows found claims
    whatif_shown = Signal()  # a what-if or a sensitivity ranking is in the What if dock
    model_ready = Signal(object)  # ModelInfo, after a load finished
    failed = Signal(str, int)  # an error message, after it was shown, and its exit code

    def __init__(self, model: ModelRequest | None = None, settings: QSettings | None = None
                 ) -> None:
        super().__init__()
        self.setWindowTitle("TokenTrace")
        self.setObjectName("mainWindow")
        self.resize(1400, 900)
        self.record: Explanation | None = None
        self.selected_row: int | None = None
        self.selected_claim: int | None = None  # a statement clicked in the claims list
        self._closing = self._close_when_done = False
        self._fields_text: str | None = None  # the case text the field editor last rendered
        self._case_fields: tuple[tuple[str, int, int], ...] = ()  # its fields' spans
        self.rows: dict[int, tuple[float, ...]] = {}  # answer rows computed on click
        self._pending_row: int | None = None  # clicked while the reliability check ran
        # A reliability check or claims step that a what-if (or sensitivity run, or a what-if's
        # explanation) stopped: it runs again when that is done.
        self._interrupted = False
        self.requests = Requests()  # what the engine thread runs; whether a result applies
        self.last_error: str | None = None
        self.error_box: QMessageBox | None = None
        self._settings = settings or QSettings("TokenTrace", "TokenTrace")
        self._model_request = model or ModelRequest()
        self._answer_pieces: list[str] = []
        self.estimates = RunEstimates(self._settings)  # and the loaded model's ModelInfo

        self.engine = EngineThread(self)
        worker = self.engine.worker
        worker.started.connect(self._on_started)
        worker.progressed.connect(self._on_progressed)
        worker.token_generated.connect(self._on_token_generated)
        worker.model_loaded.connect(self._on_model_loaded)
        worker.finished.connect(self._on_finished)
        worker.checked.connect(self._on_checked)
        worker.claimed.connect(self._on_claimed)
        worker.whatif_ready.connect(self._on_whatif)
        worker.sensitivity_ready.connect(self._on_sensitivity)
        worker.row_ready.connect(self._on_row_ready)
        worker.errored.connect(self._on_errored)
        worker.cancelled.connect(self._on_cancelled)

        self._build_central()
        self._build_docks()
        self._build_actions()
        self._build_status_bar()
        self._restore_state()
        self.case_edit.textChanged.connect(self._update_estimate)
        for signal in self.settings_panel.changed_signals():
            signal.connect(self._update_estimate)
        self._set_busy(False)
        self.load_model(self._model_request)

    # ---- construction -------------------------------------------------------------------

    def _build_central(self) -> None:
        self.case_edit = QPlainTextEdit()
        self.case_edit.setObjectName("caseEditor")
        self.case_edit.setPlaceholderText("Paste or type the clinical case here, or pick one "
                                          "from Cases. Ctrl+Enter explains it.")
        self.answer_view = QTextBrowser()
        self.answer_view.setObjectName("answerView")
        self.answer_view.setOpenLinks(False)
        self.answer_view.anchorClicked.connect(self._on_answer_clicked)
        self.claims_view = ClaimsView()
        self.claims_view.claim_clicked.connect(self.select_claim)
        self.whole_answer = QPushButton("Whole answer")
        self.whole_answer.setToolTip("Show the sequence attribution (all answer tokens)")
        self.whole_answer.clicked.connect(lambda: self.select_answer_token(None))
        self.explain_button = QPushButton("Explain")
        self.explain_button.setObjectName("explainButton")
        self.explain_button.clicked.connect(self.explain)
        self.cancel_button = QPushButton("Cancel")
        self.cancel_button.setObjectName("cancelButton")
        self.cancel_button.clicked.connect(self.cancel)

        case_box = QWidget()
        case_layout = QVBoxLayout(case_box)
        case_layout.addWidget(QLabel("<b>Case</b>"))
        case_layout.addWidget(self.case_edit)
        buttons = QHBoxLayout()
        buttons.addWidget(self.explain_button)
        buttons.addWidget(self.cancel_button)
        buttons.addStretch(1)
        case_layout.addLayout(buttons)

        answer_box = QWidget()
        answer_layout = QVBoxLayout(answer_box)
        header = QHBoxLayout()
        header.addWidget(QLabel("<b>Answer</b> (click a token to see what it rests on)"))
        header.addStretch(1)
        header.addWidget(self.whole_answer)
        answer_layout.addLayout(header)
        answer_layout.addWidget(self.answer_view, 2)
        answer_layout.addWidget(QLabel("<b>Statements</b> (click one to see the case sentences "
                                       "it rests on)"))
        answer_layout.addWidget(self.claims_view, 3)

        self.overlay = TokenOverlay()
        self.legend = Legend()
        self.granularity = QComboBox()
        self.granularity.addItems(["word", "token", "sentence"])
        self.granularity.currentTextChanged.connect(lambda _: self._show_selection())
        self.overlay_title = QLabel("<b>Case, coloured by attribution</b>")
        self.overlay_title.setWordWrap(True)
        self.completeness = QLabel()
        self.completeness.setWordWrap(True)
        self.completeness.setTextFormat(Qt.TextFormat.PlainText)
        self.badge = ReliabilityBadge()
        self.field_label = QLabel()
        self.field_label.setObjectName("fieldShares")
        self.field_label.setWordWrap(True)
        self.field_label.setTextFormat(Qt.TextFormat.PlainText)
        self.field_label.hide()
        overlay_box = QWidget()
        overlay_layout = QVBoxLayout(overlay_box)
        top = QHBoxLayout()
        top.addWidget(self.overlay_title, 1)
        top.addWidget(QLabel("Granularity"))
        top.addWidget(self.granularity)
        overlay_layout.addLayout(top)
        overlay_layout.addWidget(self.overlay)
        overlay_layout.addWidget(self.legend)
        overlay_layout.addWidget(self.field_label)
        overlay_layout.addWidget(self.badge)
        overlay_layout.addWidget(self.completeness)

        left = QSplitter(Qt.Orientation.Vertical)
        left.addWidget(case_box)
        left.addWidget(answer_box)
        self.splitter = QSplitter(Qt.Orientation.Horizontal)
        self.splitter.setObjectName("mainSplitter")
        self.splitter.addWidget(left)
        self.splitter.addWidget(overlay_box)
        self.splitter.setSizes([560, 840])
        self.setCentralWidget(self.splitter)

    def _dock(self, title: str, widget: QWidget, area: Qt.DockWidgetArea) -> QDockWidget:
        dock = QDockWidget(title, self)
        dock.setObjectName(title.lower().replace(" ", "_") + "_dock")
        dock.setWidget(widget)
        self.addDockWidget(area, dock)
        return dock

    def _build_docks(self) -> None:
        self.chart = AttributionChart()
        self.hardware = HardwarePanel()
        self.settings_panel = SettingsPanel()
        self.chart_dock = self._dock("Chart", self.chart, Qt.DockWidgetArea.BottomDockWidgetArea)
        self.hardware_dock = self._dock("Hardware", self.hardware,
                                        Qt.DockWidgetArea.RightDockWidgetArea)
        self.settings_dock = self._dock("Settings", self.settings_panel,
                                        Qt.DockWidgetArea.RightDockWidgetArea)
        # What if needs the window's width (two cases side by side): beside the chart.
        self.whatif_panel = WhatIfPanel()
        self.whatif_dock = self._dock("What if", self.whatif_panel,
                                      Qt.DockWidgetArea.BottomDockWidgetArea)
        self.tabifyDockWidget(self.chart_dock, self.whatif_dock)
        self.fields_panel = FieldsPanel()
        self.fields_dock = self._dock("Fields", self.fields_panel,
                                      Qt.DockWidgetArea.RightDockWidgetArea)
        self.tabifyDockWidget(self.settings_dock, self.fields_dock)
        self.chart_dock.raise_()
        self.settings_dock.raise_()
        self.fields_panel.applied.connect(self._apply_fields)
        self.whatif_panel.whatif_requested.connect(self.what_if)
        self.whatif_panel.sensitivity_requested.connect(self.sensitivity)
        self.whatif_panel.revert_requested.connect(self.revert_case)
        self.whatif_panel.explain_requested.connect(self.explain_whatif)
        self.chart.hovered.connect(self.overlay.highlight)
        self.overlay.strike_requested.connect(self.strike_out)
        self.overlay.hovered.connect(self.chart.highlight)

    def _build_actions(self) -> None:
        menu = self.menuBar()
        file_menu = menu.addMenu("&File")
        self._action(file_menu, "Open case…", QKeySequence.StandardKey.Open, self._open_case)
        self._action(file_menu, "Open fields case…", None, self._open_fields)
        self._action(file_menu, "Open model folder…", None, lambda: self._open_model(
            ask_folder(self, "Open Hugging Face model folder")))
        self._action(file_menu, "Open GGUF file…", None,
                     lambda: self._open_model(ask_open(self, "gguf")))
        self._action(file_menu, "Use embedded model", None,
                     lambda: self.load_model(ModelRequest()))
        self._action(file_menu, "Open explanation…", QKeySequence("Ctrl+Shift+O"),
                     self._open_session)
        self._action(file_menu, "Save explanation…", QKeySequence.StandardKey.Save,
                     self._save_session)
        self._action(file_menu, "Export PDF report…", QKeySequence("Ctrl+P"), self._export_pdf)
        file_menu.addSeparator()
        self._action(file_menu, "Quit", QKeySequence.StandardKey.Quit, self.close)
        run_menu = menu.addMenu("&Run")
        self.explain_action = self._action(run_menu, "Explain", QKeySequence("Ctrl+Return"),
                                           self.explain)
        self.cancel_action = self._action(run_menu, "Cancel", QKeySequence("Esc"), self.cancel)
        run_menu.addSeparator()
        self._action(run_menu, "What if (the case as edited)", QKeySequence("Ctrl+Shift+W"),
                     self.what_if)
        self._action(run_menu, "Sensitivity (each sentence removed)", None, self.sensitivity)
        self._action(run_menu, "Revert the case", None, self.revert_case)
        self.cases_menu = menu.addMenu("&Cases")
        for title, text in demo_cases():
            self._action(self.cases_menu, title, None,
                         lambda checked=False, t=text: self.case_edit.setPlainText(t))
        view_menu = menu.addMenu("&View")
        for dock in (self.chart_dock, self.hardware_dock, self.settings_dock, self.whatif_dock,
                     self.fields_dock):
            view_menu.addAction(dock.toggleViewAction())
        self.presentation_action = self._action(view_menu, "Presentation mode",
                                                QKeySequence("F11"), self.toggle_presentation)
        self.presentation_action.setCheckable(True)
        help_menu = menu.addMenu("&Help")
        self._action(help_menu, "About TokenTrace", None, self._about)

    def _action(self, menu, text, shortcut, slot) -> QAction:
        action = QAction(text, self)
        if shortcut is not None:
            action.setShortcut(shortcut)
        action.triggered.connect(slot)
        menu.addAction(action)
        return action

    def _build_status_bar(self) -> None:
        bar = self.statusBar()
        self.model_label = QLabel("No model")
        self.model_label.setTextFormat(Qt.TextFormat.PlainText)  # names come from model files
        self.offline_label = QLabel("● Offline")
        self.offline_label.setToolTip("No network connection is made: the network is blocked "
                                      "inside TokenTrace and models load from local files only.")
        self.offline_label.setStyleSheet("color: #1b7837; font-weight: bold;")
        self.stage_label = QLabel()
        self.stage_label.setTextFormat(Qt.TextFormat.PlainText)
        widest = "Hessian sensitivity, about 999 s left"
        self.stage_label.setMinimumWidth(self.stage_label.fontMetrics().horizontalAdvance(widest))
        self.progress = QProgressBar()
        self.progress.setMaximumWidth(260)
        bar.addWidget(self.model_label, 1)
        bar.addPermanentWidget(self.stage_label)
        bar.addPermanentWidget(self.progress)
        bar.addPermanentWidget(self.offline_label)

    # ---- user actions -------------------------------------------------------------------

    def load_model(self, request: ModelRequest) -> None:
        self._model_request = request
        self.model_label.setText(f"Loading {request.source}…")
        self._set_busy(True)
        self._issue(Request(self.engine.load_model(request), Kind.LOAD))

    def explain(self) -> None:
        text = self.case_edit.toPlainText()
        if not text.strip():
            self._show_error("The case is empty: type or paste the clinical case first.")
            return
        request = self.settings_panel.request(text)
        if text == self._fields_text:  # rendered from the field editor: attribute per field
            request = replace(request, fields=self._case_fields)
        try:
            request.validate()
        except Exception as exc:
            self._show_error(str(exc))
            return
        self._answer_pieces = []
        self.answer_view.setPlainText("")
        self._set_busy(True)
        self._issue(Request(self.engine.explain(request), Kind.EXPLAIN))

    def cancel(self) -> None:
        self.engine.cancel()

    def select_answer_token(self, row: int | None) -> None:
        """Show what answer token ``row`` (None: the whole answer) rests on; without the
        per-token matrix, the token is first explained on its own on the engine thread."""
        self.selected_row = row
        self.selected_claim = None
        self._pending_row = None
        if row is not None and self.record is not None and self._row_scores(row) is None:
            if self.requests.is_running(Kind.LOAD) or self.requests.is_running(Kind.EXPLAIN):
                # A click must not cancel a model load or a new explanation.
                self.stage_label.setText("Busy: the answer token can be explained when the "
                                         "current run has finished")
                self.selected_row = None
            elif any(self.requests.is_running(kind) for kind in (*FOLLOW_UPS, *ASIDES)):
                self._pending_row = row  # explained once the check has finished
            else:
                self.cancel_button.setEnabled(True)
                self._issue(Request(self.engine.answer_row(self.record, row), Kind.ROW,
                                    self.record.created_at, row))
        self._show_selection()

    def _issue(self, request: Request) -> None:
        """Make ``request`` the engine's current one. What it supersedes is not lost without a
        word: an answer token being explained is explained again afterwards, and a reliability
        check or claims step of the explanation on screen runs again after a what-if (a new
        explanation brings its own; after a model load the badge says it stopped)."""
        superseded = self.requests.current
        self.requests.issued(request)
        if superseded is None or not superseded.about(self._on_screen()):
            return
        if superseded.kind is Kind.ROW and self._pending_row is None:
            self._pending_row = superseded.row
        elif superseded.kind in FOLLOW_UPS and request.kind is not Kind.EXPLAIN:
            again = request.kind in ASIDES
            self._interrupted = again
            then = "it runs again when the what-if is done" if again else "Explain again to run it"
            if superseded.kind is Kind.RELIABILITY:
                self.badge.show_pending(f"Reliability check stopped: {then}")
            else:
                self.claims_view.setPlainText(f"Finding the statements stopped: {then}.")

    def _after_aside(self, resume: bool = True) -> None:
        """After a what-if, a sensitivity run or a what-if's explanation: the check or claims
        it stopped (when ``resume``), then an answer token clicked meanwhile."""
        interrupted, self._interrupted = self._interrupted, False
        record = self.record
        if interrupted and resume and self._follow_up():
            return
        if interrupted and record is not None:  # cancelled: say so where it was pending
            if record.reliability is None:
                self.badge.show_pending("Reliability check cancelled (Explain again, or turn "
                                        "the check on in Settings, to run it)")
            elif record.claims is None:
                self.claims_view.setPlainText("Cancelled: Explain again to find the statements.")
        self._run_pending_row()

    def _row_scores(self, row: int | None) -> tuple[float, ...] | None:
        """Answer token ``row``'s attribution over the prompt, if known (None: not yet)."""
        record = self.record
        if row is None or record is None:
            return None
        if record.attribution.per_token is not None:
            return record.attribution.per_token[row]
        return self.rows.get(row)

    def toggle_presentation(self, on: bool) -> None:
        font = QFont(self.font())
        font.setPointSizeF(font.pointSizeF() * (1.5 if on else 1 / 1.5))
        self.setFont(font)
        self.overlay.setFont(font)
        self.answer_view.setFont(font)
        if on:
            self.showFullScreen()
        else:
            self.showNormal()

    # ---- engine signals -----------------------------------------------------------------

    def _on_started(self, request_id: int, what: str) -> None:
        if self.requests.applies(request_id, self._on_screen()):
            self.stage_label.setText("Loading model" if what == "load" else "Starting")

    def _on_progressed(self, request_id: int, stage: str, done: int, total: int,
                       remaining: float) -> None:
        if not self.requests.applies(request_id, self._on_screen()):
            return
        self.progress.setRange(0, max(total, 1))
        self.progress.setValue(done)
        left = f", about {remaining:.0f} s left" if remaining >= 0 else ""
        self.stage_label.setText(f"{STAGES.get(stage, stage)}{left}")

    def _on_token_generated(self, request_id: int, piece: str) -> None:
        if self.requests.applies(request_id):
            self._answer_pieces.append(piece)
            self.answer_view.setPlainText("".join(self._answer_pieces))

    def _on_model_loaded(self, request_id: int, info) -> None:
        if not self.requests.settle(request_id):
            return
        self._set_busy(False)
        self.model_label.setText(f"{info.name} · {info.parameters / 1e6:,.0f}M parameters · "
                                 f"{info.dtype} · {info.device} · sha256 {info.sha256[:12]}…")
        self.model_label.setToolTip(plain_tooltip(f"{info.source}\nsha256 {info.sha256}"))
        self.stage_label.setText("Ready")
        self.estimates.model_info = info
        self._update_estimate()
        self.model_ready.emit(info)

    def _on_finished(self, request_id: int, record: Explanation) -> None:
        request = self.requests.settle(request_id)
        if not request:
            return
        self._set_busy(False)
        if request.kind is Kind.WHATIF_EXPLAIN:  # the new answer of a what-if, beside the case
            if request.about(self._on_screen()):
                found = self.whatif_panel.found[request.row]
                if record.answer.token_ids == found.answer.token_ids:
                    self.whatif_panel.show_explained(request.row, self.record, record)
                    self.stage_label.setText("The new answer explained")
                    self.whatif_shown.emit()
                else:  # forced by its text, which this tokenizer splits otherwise
                    self.stage_label.setText("Error")
                    self._show_error("The what-if's new answer could not be forced token for "
                                     "token (its text splits into other tokens), so what it "
                                     "rests on is not shown.")
                self._after_aside()
            return
        self.stage_label.setText(f"Done in {record.timings.attribute_s:.1f} s")
        self.estimates.remember(record)
        self.show_record(record)
        self._follow_up()

    def _follow_up(self) -> bool:
        """After an explanation: its reliability check, then its claims, as the settings ask.
        True when one was started."""
        record = self.record
        if record is None:
            return False
        if self.settings_panel.reliability.isChecked() and record.reliability is None:
            reason = not_checkable(record.method.params)
            if reason is None:
                self.check_reliability()
                return True
            self.badge.show_pending(f"Not checked: {reason}.")
        if self.settings_panel.claims.isChecked() and record.claims is None:
            self.find_claims()
            return True
        return False

    def find_claims(self) -> None:
        """Split the answer on screen into statements and find what each rests on."""
        if self.record is None:
            return
        self.cancel_button.setEnabled(True)
        self.claims_view.setPlainText("Finding what each statement rests on…")
        self._issue(Request(self.engine.find_claims(self.record), Kind.CLAIMS,
                            self.record.created_at))

    def _on_claimed(self, request_id: int, record: Explanation) -> None:
        request = self.requests.settle(request_id)
        if request is None:
            return
        self._set_busy(False)
        if not request.about(self._on_screen()):
            return  # the claims of an explanation no longer on screen
        self.record = record
        self.stage_label.setText(f"Statements checked in {record.claims.seconds:.1f} s")
        self._render_claims()
        self.claims_shown.emit()
        self._run_pending_row()

    def what_if(self) -> None:
        """Answer the case as edited in the case editor, and compare with the explanation on
        screen (the What if dock keeps every what-if of this case)."""
        from engine.errors import TokenTraceError
        from engine.prompting import validate_case_text
        from engine.whatif import apply_edits, edits_between

        record = self.record
        if record is None:
            self._show_error("Explain a case first; then edit it and ask what if.")
            return
        try:
            edited = validate_case_text(self.case_edit.toPlainText())
            edits = edits_between(record.prompt.case_text, edited)
            if edits:
                apply_edits(record.prompt.case_text, edits)
        except TokenTraceError as exc:
            self._show_error(str(exc))
            return
        if not edits:
            self._show_error("The case is unchanged: edit it in the case editor (strike out a "
                             "sentence, change a value), then press What if.")
            return
        self._show_whatif_dock()
        self._set_busy(True)
        self._issue(Request(
            self.engine.what_if(record, edits, self.settings_panel.max_new_tokens.value()),
            Kind.WHATIF, record.created_at))

    def _on_whatif(self, request_id: int, found) -> None:
        request = self.requests.settle(request_id)
        if request is None:
            return
        self._set_busy(False)
        if not request.about(self._on_screen()):
            return  # a what-if of an explanation no longer on screen
        self.whatif_panel.add(found)
        self.stage_label.setText("What if answered: the answer "
                                 + ("changed" if found.answer_changed else "is the same"))
        self.whatif_shown.emit()
        self._after_aside()

    def explain_whatif(self, index: int) -> None:
        """Explain what-if ``index``'s new answer on its edited case (the answer forced to the
        one shown), to show it beside the original explanation; the original stays on screen."""
        panel = self.whatif_panel
        if self.record is None or not 0 <= index < len(panel.found):
            return
        found, prompt = panel.found[index], self.record.prompt
        try:  # the original's own settings, so that only the edit differs between the two
            params = recorded_params(get_method(self.record.method.name),
                                     self.record.method.params)
        except TokenTraceError as exc:
            self._show_error(str(exc))
            return
        for run_detail in ("matrix", "batch_size"):
            params.pop(run_detail, None)
        request = ExplainRequest(case_text=found.edited_case, method=self.record.method.name,
                                 target=found.answer.text, matrix=False,
                                 steps=params.pop("steps", None),
                                 baseline=params.pop("baseline", "pad"),
                                 options=tuple(params.items()),
                                 raw_prompt=prompt.format == "raw",
                                 system_prompt=prompt.system_prompt)
        self._set_busy(True)
        self._issue(Request(self.engine.explain(request), Kind.WHATIF_EXPLAIN,
                            self.record.created_at, index))

    def sensitivity(self) -> None:
        """Rank the case's sentences by what removing each does to the answer on screen."""
        if self.record is None:
            self._show_error("Explain a case first.")
            return
        self._show_whatif_dock()
        self._set_busy(True)
        self._issue(Request(self.engine.sensitivity(self.record), Kind.SENSITIVITY,
                            self.record.created_at))

    def _on_sensitivity(self, request_id: int, effects) -> None:
        request = self.requests.settle(request_id)
        if request is None:
            return
        self._set_busy(False)
        if not request.about(self._on_screen()):
            return
        self.whatif_panel.show_sensitivity(self.record.prompt.case_text, effects)
        self.stage_label.setText(f"Sensitivity: {len(effects)} sentences ranked")
        self.whatif_shown.emit()
        self._after_aside()

    def strike_out(self, start: int, end: int) -> None:
        """What if the explained case had no [start, end) (a word or a sentence struck out on
        the coloured case): the edited case goes into the editor and is answered."""
        import re

        if self.record is None:
            return
        case = self.record.prompt.case_text
        edited = re.sub(r"[ \t]{2,}", " ", case[:start] + case[end:]).strip()
        self.case_edit.setPlainText(edited)
        self.what_if()

    def _show_whatif_dock(self) -> None:
        self.whatif_dock.show()
        self.whatif_dock.raise_()
        if self.whatif_dock.height() < self.height() // 3:  # once laid out as the raised tab
            QTimer.singleShot(0, lambda: self.resizeDocks(
                [self.whatif_dock], [int(self.height() * 0.45)], Qt.Orientation.Vertical))

    def revert_case(self) -> None:
        """Put the explained case back into the case editor."""
        if self.record is not None:
            self.case_edit.setPlainText(self.record.prompt.case_text)

    def select_claim(self, index: int | None) -> None:
        """Colour the case by what statement ``index`` rests on (None: back to the answer)."""
        record = self.record
        if record is None or record.claims is None or index is None \
                or not 0 <= index < len(record.claims.claims):
            index = None
        self.selected_claim = index
        if index is not None:
            self.selected_row = None
        self._show_selection()
        self._render_claims()

    def check_reliability(self) -> None:
        """Run the quick faithfulness check on the explanation on screen (engine thread)."""
        if self.record is None:
            return
        self.cancel_button.setEnabled(True)  # Explain stays enabled: a new run supersedes it
        self.badge.show_pending("Checking how far this explanation can be trusted…")
        self._issue(Request(
            self.engine.check_reliability(self.record, self.settings_panel.check_precision()),
            Kind.RELIABILITY, self.record.created_at))

    def _on_checked(self, request_id: int, record: Explanation) -> None:
        request = self.requests.settle(request_id)
        if request is None:
            return
        self._set_busy(False)
        if not request.about(self._on_screen()):
            return  # the check of an explanation no longer on screen
        self.record = record
        self.stage_label.setText(f"Reliability checked in {record.reliability.seconds:.1f} s")
        self.badge.show_check(record.reliability)
        self.reliability_shown.emit()
        if not self._follow_up():  # the claims next; a clicked token waits for them
            self._run_pending_row()

    def _run_pending_row(self) -> None:
        row, self._pending_row = self._pending_row, None
        if row is not None and row == self.selected_row:
            self.select_answer_token(row)

    def _on_row_ready(self, request_id: int, found) -> None:
        request = self.requests.settle(request_id)
        if request is None:
            return
        self._set_busy(False)
        if not request.about(self._on_screen()) or found.created_at != request.explanation:
            return  # a row of an explanation no longer on screen
        self.rows[found.row] = found.scores
        self.stage_label.setText(f"Answer token {found.row + 1} explained")
        if found.row == self.selected_row:
            self._show_selection()
            self.row_shown.emit(found.row)

    def _on_errored(self, request_id: int, message: str, code: int) -> None:
        request = self.requests.settle(request_id)
        if request is None:
            return
        self._set_busy(False)
        self.stage_label.setText("Error")
        if request.kind is Kind.ROW:
            self.select_answer_token(None)
        elif request.kind in (Kind.RELIABILITY, Kind.CLAIMS):
            if request.about(self._on_screen()):  # not a step of an explanation since replaced
                if request.kind is Kind.RELIABILITY:
                    self.badge.show_pending("The reliability check failed (see the message): "
                                            "Explain again to run it")
                else:
                    self.claims_view.setPlainText("Could not find the statements (see the "
                                                  "message).")
            self._run_pending_row()
        elif request.kind in ASIDES and request.about(self._on_screen()):
            self._after_aside()
        if self.model_label.text().startswith("Loading"):
            self.model_label.setText("No model loaded")
        self._show_error(message)
        self.failed.emit(message, code)

    def _on_cancelled(self, request_id: int) -> None:
        request = self.requests.settle(request_id)
        if request is not None:
            self._set_busy(False)
            self.stage_label.setText("Cancelled")
            if request.kind is Kind.ROW:
                self.select_answer_token(None)
            elif request.kind in (Kind.RELIABILITY, Kind.CLAIMS):
                if request.about(self._on_screen()):
                    if request.kind is Kind.RELIABILITY:
                        self.badge.show_pending("Reliability check cancelled (Explain again, "
                                                "or turn the check on in Settings, to run it)")
                    else:
                        self.claims_view.setPlainText("Cancelled: Explain again to find the "
                                                      "statements.")
                self._run_pending_row()
            elif request.kind in ASIDES and request.about(self._on_screen()):
                self._after_aside(resume=False)  # Cancel stops what it had stopped too

    def _on_screen(self) -> str | None:
        """The explanation on screen (its created_at), to match results about one."""
        return self.record.created_at if self.record is not None else None

    # ---- showing a result ---------------------------------------------------------------

    def show_record(self, record: Explanation) -> None:
        if self.record is None or record.created_at != self.record.created_at:
            self.whatif_panel.reset()  # what-ifs belong to one explanation
        self.record = record
        self.selected_row = None
        self.rows = {}
        self._pending_row = None
        self._interrupted = False
        self.case_edit.setPlainText(record.prompt.case_text)
        self._render_answer()
        self._show_selection()
        self.hardware.show_run(record)
        self.field_label.setVisible(bool(record.attribution.per_field))
        self.field_label.setText("Per clinical field: " + " · ".join(
            f"{field.label} {100 * field.share:.0f}% ({field.score:+.3f})"
            for field in ExplanationView.from_record(record).fields))
        self.completeness.setText(method_summary(record))
        self.badge.show_check(record.reliability)
        self.selected_claim = None
        self._render_claims()
        self.whatif_panel.set_ready(self.explain_button.isEnabled())
        self.explanation_shown.emit()

    def _render_claims(self) -> None:
        self.claims_view.show_claims(self.record, self.selected_claim)

    def _render_answer(self) -> None:
        record = self.record
        if record is None:
            return
        claim = (record.claims.claims[self.selected_claim].tokens
                 if record.claims is not None and self.selected_claim is not None else (0, 0))
        parts = []
        for row, piece in enumerate(record.answer.tokens):
            style = "text-decoration:none; color:black;"
            if row == self.selected_row:
                style += " background-color:#ffe08a; font-weight:bold;"
            elif claim[0] <= row < claim[1]:
                style += " background-color:#fff2c2;"  # the statement clicked below
            parts.append(f'<a href="answer:{row}" style="{style}">{html_text(piece)}</a>')
        self.answer_view.setHtml('<div style="white-space:pre-wrap; line-height:150%;">'
                                 + "".join(parts) + "</div>")

    def _show_selection(self) -> None:
        record = self.record
        if record is None:
            return
        if self.selected_claim is not None:
            self._show_claim(record, self.selected_claim)
            return
        row = self.selected_row
        scores = self._row_scores(row)
        units = units_of(record, scores, self.granularity.currentText())
        self.overlay.show_units(record, units)
        self.chart.set_units(units)
        self.legend.set_scale(scale_of(units), record.method.name)
        what = ("the whole answer" if scores is None
                else f"answer token {row + 1}: {record.answer.tokens[row]!r}")
        title = f"<b>Case, coloured by attribution to {html_text(what)}</b>"
        if row is not None and scores is None:
            seconds = self.estimates.row_seconds(record, row)
            when = ("when the current step is done" if self._pending_row == row
                    else f"in about {duration(seconds)}" if seconds else "shortly")
            title += html_text(f" — answer token {row + 1} {record.answer.tokens[row]!r} "
                                 f"follows {when}…")
        self.overlay_title.setText(title)
        self._render_answer()

    def _show_claim(self, record: Explanation, index: int) -> None:
        units = claim_units(record, index)
        self.overlay.show_units(record, units)
        self.chart.set_units(units)
        self.legend.set_scale(scale_of(units), record.claims.evidence_method)
        claim = record.claims.claims[index]
        self.overlay_title.setText(
            f"<b>Case, coloured by what statement {index + 1} rests on</b> — "
            f"{html_text(clipped(claim.text, 80))} (share of its attribution per sentence)")
        self._render_answer()

    def _on_answer_clicked(self, url: QUrl) -> None:
        text = url.toString()
        if text.startswith("answer:"):
            self.select_answer_token(int(text.removeprefix("answer:")))

    # ---- time estimate ------------------------------------------------------------------

    def estimate_seconds(self, request: ExplainRequest | None = None) -> float | None:
        """Attribution time for the current case and settings (or ``request``), or None
        without a model."""
        return self.estimates.seconds(
            request or self.settings_panel.request(self.case_edit.toPlainText()))

    def quicker_settings(self) -> list[tuple[str, float]]:
        """(change, estimated seconds) for single changes that make a long run short."""
        return self.estimates.quicker(self.settings_panel.request(self.case_edit.toPlainText()))

    def _update_estimate(self) -> None:
        label = self.settings_panel.estimate
        try:
            text, long_run = self.estimates.describe(
                self.settings_panel.request(self.case_edit.toPlainText()))
        except TokenTraceError as exc:
            label.setText(str(exc))
            label.setStyleSheet("color: #b2182b; font-weight: bold;")
            return
        label.setText(text)
        label.setStyleSheet("color: #b35806; font-weight: bold;" if long_run else "")

    # ---- helpers ------------------------------------------------------------------------

    def _set_busy(self, busy: bool) -> None:
        self.whatif_panel.set_ready(not busy and self.record is not None)
        self.explain_button.setEnabled(not busy)
        self.explain_action.setEnabled(not busy)
        self.cancel_button.setEnabled(busy)
        self.progress.setTextVisible(busy)
        if not busy:
            self.progress.setRange(0, 1)
            self.progress.setValue(0)

    def _show_error(self, message: str) -> None:
        self.last_error = message
        box = QMessageBox(QMessageBox.Icon.Warning, "TokenTrace", message,
                          QMessageBox.StandardButton.Ok, self)
        box.setWindowModality(Qt.WindowModality.WindowModal)
        box.open()  # not exec(): the window keeps running, tests can inspect it
        self.error_box = box

    def _open_case(self) -> None:
        if path := ask_open(self, "case"):
            try:
                self.case_edit.setPlainText(read_case(None, path))
            except Exception as exc:
                self._show_error(str(exc))

    def _open_fields(self) -> None:
        if path := ask_open(self, "fields"):
            self.open_fields(path)

    def open_fields(self, path: Path) -> None:
        """A case made of clinical fields (a JSON object), into the field editor."""
        try:
            fields = read_fields(path)
            self.fields_panel.set_fields(fields)
        except TokenTraceError as exc:
            self._show_error(str(exc))
            return
        self.fields_dock.show()
        self.fields_dock.raise_()

    def _apply_fields(self, text: str, spans) -> None:
        self._fields_text, self._case_fields = text, tuple(spans)
        self.case_edit.setPlainText(text)

    def _open_model(self, path: Path | None) -> None:
        if path:
            self.load_model(ModelRequest(str(path),
                                         device=self.settings_panel.device.currentText()))

    def view_state(self) -> ViewState:
        return ViewState(self.selected_row, self.granularity.currentText(),
                         self.chart.sorted_box.isChecked(), self.chart.top_k.value())

    def save_session(self, path: Path) -> None:
        if self.record is None:
            self._show_error("Nothing to save yet: explain a case first.")
            return
        try:
            save_session(path, self.record, self.view_state(), self.whatif_panel.found)
            audited("export", self.record, file=str(path))
        except (OSError, TokenTraceError) as exc:
            self._show_error(f"Cannot write {path}: {getattr(exc, 'strerror', None) or exc}")
            return
        self.statusBar().showMessage(f"Saved to {path}", 5000)

    def open_session(self, path: Path) -> None:
        try:
            record, view, whatifs = load_session(path)
        except TokenTraceError as exc:
            self._show_error(str(exc))
            return
        self.show_record(record)
        self.whatif_panel.reset()
        for found in whatifs:
            self.whatif_panel.add(found)
        self.granularity.setCurrentText(view.granularity)
        self.chart.sorted_box.setChecked(view.sorted_chart)
        self.chart.top_k.setValue(view.top_k)
        self.select_answer_token(view.selected_row)  # in range: load_session checked it

    def _save_session(self) -> None:
        if path := ask_save(self, "explanation"):
            self.save_session(path)

    def _open_session(self) -> None:
        if path := ask_open(self, "explanation"):
            self.open_session(path)

    def _export_pdf(self) -> None:
        if self.record is None:
            self._show_error("Nothing to export yet: explain a case first.")
            return
        if path := ask_save(self, "pdf"):
            self.export_pdf(path)

    def export_pdf(self, path: Path) -> None:
        from desktop.report import write_pdf

        try:
            write_pdf(self.record, path, what_ifs=self.whatif_panel.for_report())
        except TokenTraceError as exc:
            self._show_error(str(exc))
            return
        except OSError as exc:
            self._show_error(f"Cannot write {path}: {exc.strerror or exc}")
            return
        self.statusBar().showMessage(f"Report written to {path}", 5000)

    def _about(self) -> None:
        QMessageBox.about(self, "About TokenTrace",
                          "TokenTrace shows which words of a case drove each word of a local "
                          "model's answer. Offline: nothing leaves this machine. Decision "
                          "support, not a diagnosis.")

    def _restore_state(self) -> None:
        geometry = self._settings.value("geometry")
        state = self._settings.value("windowState")
        if geometry is not None:
            self.restoreGeometry(geometry)
        if state is not None:
            self.restoreState(state)

    def _close_after_wait(self) -> None:
        self.close()
        # Qt quits on the last window *closed* while visible; this one was hidden first.
        app = QApplication.instance()
        if app is not None and app.quitOnLastWindowClosed() and not any(
                w.isVisible() for w in QApplication.topLevelWidgets()):
            app.quit()

    def closeEvent(self, event) -> None:
        if not self._closing:
            self._closing = True
            self._settings.setValue("geometry", self.saveGeometry())
            self._settings.setValue("windowState", self.saveState())
        if not self.engine.shutdown(CLOSE_WAIT_MS):
            # A step no cancel can interrupt (reading a large model's weights from disk) is
            # still running. Never tear its thread down: hide now, close when it returns.
            self.hide()
            if not self._close_when_done:
                self._close_when_done = True
                self.engine.thread.finished.connect(self._close_after_wait,
                                                    Qt.ConnectionType.QueuedConnection)
            event.ignore()
            return
        self.hardware.shutdown()
        super().closeEvent(event)


# Steps that follow an explanation on their own, and requests that interrupt them and after
# which they run again.
FOLLOW_UPS = (Kind.RELIABILITY, Kind.CLAIMS)
ASIDES = (Kind.WHATIF, Kind.SENSITIVITY, Kind.WHATIF_EXPLAIN)
