"""``tokentrace app``: the desktop window, or a headless run that saves a screenshot."""

from __future__ import annotations

import os
import re
import sys
from pathlib import Path
from typing import Any

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


# Libraries Qt's X11 platform plugin (xcb) loads, and the Debian/Ubuntu packages that hold
# them. Since Qt 6.5 the first is not pulled in by most desktops, and without it Qt aborts.
XCB_PACKAGES = {
    "libxcb-cursor.so.0": "libxcb-cursor0", "libxcb-icccm.so.4": "libxcb-icccm4",
    "libxcb-keysyms.so.1": "libxcb-keysyms1", "libxkbcommon-x11.so.0": "libxkbcommon-x11-0",
    "libxkbcommon.so.0": "libxkbcommon0", "libxcb-util.so.1": "libxcb-util1",
    "libxcb-image.so.0": "libxcb-image0", "libxcb-randr.so.0": "libxcb-randr0",
    "libxcb-render-util.so.0": "libxcb-render-util0", "libxcb-shm.so.0": "libxcb-shm0",
    "libxcb-sync.so.1": "libxcb-sync1", "libxcb-xfixes.so.0": "libxcb-xfixes0",
    "libxcb-render.so.0": "libxcb-render0", "libxcb-shape.so.0": "libxcb-shape0",
    "libxcb-xkb.so.1": "libxcb-xkb1", "libxcb.so.1": "libxcb1", "libX11-xcb.so.1": "libx11-xcb1",
    "libX11.so.6": "libx11-6", "libGL.so.1": "libgl1", "libEGL.so.1": "libegl1",
    "libfontconfig.so.1": "libfontconfig1", "libfreetype.so.6": "libfreetype6",
    "libdbus-1.so.3": "libdbus-1-3", "libglib-2.0.so.0": "libglib2.0-0",
}


def missing_xcb_libraries(plugin: Path | None = None) -> list[str]:
    """System libraries Qt's xcb plugin needs and cannot find (``ldd`` reads the whole chain of
    dependencies without running it); [] when none are missing or this cannot be told."""
    import shutil
    import subprocess

    if plugin is None:
        from PySide6.QtCore import QLibraryInfo

        plugins = Path(QLibraryInfo.path(QLibraryInfo.LibraryPath.PluginsPath))
        plugin = plugins / "platforms" / "libqxcb.so"
    ldd = shutil.which("ldd")
    if ldd is None or not plugin.is_file():
        return []
    try:
        done = subprocess.run([ldd, str(plugin)], capture_output=True, text=True, timeout=20,
                              check=False)
    except (OSError, subprocess.SubprocessError):
        return []
    missing = {line.split()[0] for line in done.stdout.splitlines() if "not found" in line}
    # A library present but unusable (truncated, wrong architecture) stops ldd itself.
    missing.update(Path(name).name for name in re.findall(
        r"error while loading shared libraries: ([^:]+):", done.stdout + done.stderr))
    return sorted(missing)


def check_platform(missing: list[str] | None = None) -> None:
    """Raise :class:`WindowUnavailableError` (one line naming what to install) where Qt would
    abort: on Linux with X11 and the xcb plugin's system libraries missing."""
    from engine.errors import WindowUnavailableError

    if sys.platform != "linux" or os.environ.get("QT_QPA_PLATFORM", "xcb") != "xcb" \
            or not os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY"):
        return
    missing = missing_xcb_libraries() if missing is None else missing
    if not missing:
        return
    packages = sorted({XCB_PACKAGES[name] for name in missing if name in XCB_PACKAGES})
    unknown = [name for name in missing if name not in XCB_PACKAGES]
    hints = []
    if packages:
        hints.append("on Debian or Ubuntu: sudo apt-get install " + " ".join(packages))
    if unknown:
        hints.append("install the packages that hold " + ", ".join(unknown))
    raise WindowUnavailableError(
        f"the window cannot start: this system lacks {', '.join(missing)}, which Qt needs for "
        f"X11 ({'; '.join(hints)}). The command line works meanwhile: make demo, or "
        "tokentrace explain")


def _has_display() -> bool:
    if sys.platform != "linux" or os.environ.get("QT_QPA_PLATFORM"):
        return True
    return bool(os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY"))


OFFSCREEN_NOTES = ("This plugin does not support propagateSizeHints()",)


def _quiet_offscreen_notes() -> None:
    """Headless (``--screenshot``), the offscreen platform says twice per window that it cannot
    pass size hints on, lines that stood before the command's own one-line error. Only those
    are dropped; every other Qt message is printed as before."""
    from PySide6.QtCore import qInstallMessageHandler

    def handler(kind: Any, context: Any, message: str) -> None:
        if message not in OFFSCREEN_NOTES:
            print(message, file=sys.stderr)

    if os.environ.get("QT_QPA_PLATFORM") == "offscreen":
        qInstallMessageHandler(handler)


def run_app(case_file: Path | None, model: str, method: str, steps: int | None,
            max_new_tokens: int | None, screenshot: Path | None) -> int:
    from engine.errors import WindowUnavailableError

    if not _has_display():
        if screenshot is None:
            raise WindowUnavailableError(NO_DISPLAY)
        os.environ["QT_QPA_PLATFORM"] = "offscreen"
    check_platform()
    case = None
    if case_file is not None:
        from engine.cases import read_case

        case = read_case(None, case_file)
    if screenshot is not None:
        from engine.files import check_distinct
        from engine.record import check_writable

        check_distinct({"case file": case_file}, {"screenshot": screenshot})
        check_writable(screenshot, "screenshot")

    from PySide6.QtCore import QTimer
    from PySide6.QtWidgets import QApplication

    from desktop.qt.errors import start_logging
    from desktop.qt.main_window import MainWindow
    from engine.models import ModelRequest

    app = QApplication.instance() or QApplication(sys.argv[:1])
    start_logging()  # unexpected errors are logged with their traceback
    _quiet_offscreen_notes()
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
                from engine.errors import OutputError

                print(f"tokentrace: cannot write {screenshot}", file=sys.stderr)
                outcome["code"] = OutputError.exit_code
            window.close()

        def fail(message: str, code: int) -> None:
            print(f"tokentrace: {message}", file=sys.stderr)
            outcome["code"] = code
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
