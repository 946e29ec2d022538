"""The Qt application and the bundled font that painting and PDF printing need."""

from __future__ import annotations

import os
import sys
from pathlib import Path

FONTS = Path(__file__).resolve().parents[2] / "resources" / "fonts"


def ensure_gui_application():
    """The Qt application fonts and painting need; offscreen when there is no display.

    A QApplication (not only a QGuiApplication): the same process may later open windows, and
    Qt allows one application object per process.
    """
    from PySide6.QtWidgets import QApplication

    app = QApplication.instance()
    if app is None:
        if sys.platform == "linux" and not (os.environ.get("DISPLAY")
                                            or os.environ.get("WAYLAND_DISPLAY")):
            os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
        app = QApplication(sys.argv[:1])
    return app


def font_family() -> str:
    """DejaVu Sans from resources/fonts, so that reports render the same everywhere."""
    from PySide6.QtGui import QFontDatabase

    family = "DejaVu Sans"
    for name in ("DejaVuSans.ttf", "DejaVuSans-Bold.ttf"):
        font_id = QFontDatabase.addApplicationFont(str(FONTS / name))
        if font_id >= 0:
            family = QFontDatabase.applicationFontFamilies(font_id)[0]
    return family
