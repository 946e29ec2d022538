"""``tokentrace app``: the desktop window, or a headless run that saves a screenshot."""

from __future__ import annotations

import os
import sys
from pathlib import Path

NO_DISPLAY = (
    "no display found. Run TokenTrace on a desktop, or headless with a screenshot: "
    "QT_QPA_PLATFORM=offscreen tokentrace app --case-file CASE.txt --screenshot out.png"
)


RESOURCES = Path(__file__).resolve().parents[2] / "resources"


def apply_style(app) -> None:
    """The window icon and stylesheet, plain files under resources/."""
    from PySide6.QtGui import QIcon

    icon = RESOURCES / "icons" / "tokentrace.svg"
    style = RESOURCES / "styles" / "tokentrace.qss"
    if icon.is_file():
        app.setWindowIcon(QIcon(str(icon)))
    if style.is_file():
        app.setStyleSheet(style.read_text(encoding="utf-8"))


def _has_display() -> bool:
    if sys.platform != "linux" or os.environ.get("QT_QPA_PLATFORM"):
        return True
    return bool(os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY"))


def run_app(case_file: Path | None, model: str, method: str, steps: int | None,
            max_new_tokens: int | None, screenshot: Path | None) -> int:
    from engine.errors import InvalidInputError

    if not _has_display():
        if screenshot is None:
            raise InvalidInputError(NO_DISPLAY)
        os.environ["QT_QPA_PLATFORM"] = "offscreen"
    case = None
    if case_file is not None:
        from engine.cases import read_case

        case = read_case(None, case_file)

    from PySide6.QtCore import QTimer
    from PySide6.QtWidgets import QApplication

    from desktop.qt.errors import start_logging
    from desktop.qt.main_window import MainWindow
    from engine.models import ModelRequest

    app = QApplication.instance() or QApplication(sys.argv[:1])
    start_logging()  # unexpected errors are logged with their traceback
    app.setApplicationName("TokenTrace")
    app.setOrganizationName("TokenTrace")
    apply_style(app)
    settings = None
    if screenshot is not None:  # the default layout, not the user's saved one
        import tempfile

        from PySide6.QtCore import QSettings

        scratch = tempfile.mkdtemp(prefix="tokentrace-")
        settings = QSettings(str(Path(scratch) / "settings.ini"), QSettings.Format.IniFormat)
    window = MainWindow(ModelRequest(model), settings=settings)
    panel = window.settings_panel
    index = panel.method.findData(method)
    if index < 0:
        from engine.errors import InvalidSettingsError

        raise InvalidSettingsError(f"unknown method {method!r}")
    panel.method.setCurrentIndex(index)
    if steps is not None:
        panel.steps.setValue(steps)
    if max_new_tokens is not None:
        panel.max_new_tokens.setValue(max_new_tokens)
    if case is not None:
        window.case_edit.setPlainText(case)
    window.show()
    outcome = {"code": 0}

    if screenshot is not None:
        def explain_when_loaded(_info) -> None:
            window.model_ready.disconnect(explain_when_loaded)
            if case is None:  # the window ready to explain: what start-up looks like
                QTimer.singleShot(300, save_and_quit)
            else:
                window.explain()

        def save_and_quit() -> None:
            app.processEvents()
            if not window.grab().save(str(screenshot)):
                print(f"tokentrace: cannot write {screenshot}", file=sys.stderr)
                outcome["code"] = 1
            window.close()

        def fail(message: str) -> None:
            print(f"tokentrace: {message}", file=sys.stderr)
            outcome["code"] = 1
            window.close()

        # Window signals, emitted on the GUI thread (the worker's are emitted on its own).
        window.model_ready.connect(explain_when_loaded)
        window.failed.connect(fail)
        # With the reliability check on, the picture waits for its badge.
        done = (window.reliability_shown if window.settings_panel.reliability.isChecked()
                else window.explanation_shown)
        done.connect(lambda: QTimer.singleShot(300, save_and_quit))
    app.exec()
    return outcome["code"]
