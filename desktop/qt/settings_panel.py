"""The settings dock: the method, its settings and options; it builds the ExplainRequest."""

from __future__ import annotations

import re

from PySide6.QtCore import Qt
from PySide6.QtWidgets import (
    QCheckBox,
    QComboBox,
    QFormLayout,
    QLabel,
    QLineEdit,
    QPlainTextEdit,
    QSpinBox,
    QWidget,
)

from engine.defaults import DEFAULT_METHOD
from engine.explain import ExplainRequest
from engine.prompting import DEFAULT_SYSTEM_PROMPT

# Between options: spaces, or a comma before the next key= (not a comma inside a value).
OPTION_SEPARATOR = re.compile(r"\s+|,(?=\s*[A-Za-z_][\w-]*\s*=)")


class SettingsPanel(QWidget):
    """Method and its settings; builds the ExplainRequest."""

    def __init__(self) -> None:
        super().__init__()
        from engine.methods import METHODS

        form = QFormLayout(self)
        self.method = QComboBox()
        for name, spec in METHODS.items():
            self.method.addItem(name, name)
            self.method.setItemData(self.method.count() - 1, spec.description,
                                    Qt.ItemDataRole.ToolTipRole)
        self.method.setCurrentIndex(self.method.findData(DEFAULT_METHOD))
        self.steps = QSpinBox()
        self.steps.setRange(0, 1024)
        # 0 is the method's default; for IG and SIG that is "refine until converged".
        self.steps.setSpecialValueText("auto")
        self.steps.setToolTip("auto: the method's default (IG and SIG refine their integrals "
                              "until the completeness error is below 5%); N: exactly N points")
        self.steps.setValue(0)
        self.max_new_tokens = QSpinBox()
        self.max_new_tokens.setRange(1, 4096)
        self.max_new_tokens.setValue(64)
        self.baseline = QComboBox()
        self.baseline.setEditable(True)
        self.baseline.addItems(["pad", "zero", "token:0"])
        self.matrix = QCheckBox("Every answer token up front (per-token matrix)")
        self.matrix.setToolTip(
            "Off: the run explains the whole answer, and each answer token you click is then "
            "explained on its own (about one short run per click).\nOn: every answer token is "
            "explained in the run itself (about as many backward passes as answer tokens).")
        self.matrix.setChecked(False)
        self.options = QLineEdit()
        self.options.setObjectName("methodOptions")
        self.target = QLineEdit()
        self.target.setPlaceholderText("empty: generate the answer")
        self.system = QPlainTextEdit(DEFAULT_SYSTEM_PROMPT)
        self.system.setMaximumHeight(90)
        self.device = QComboBox()
        self.device.addItems(["auto", "cpu", "cuda", "mps"])
        self.reliability = QCheckBox("Check reliability after each run")
        self.reliability.setObjectName("reliabilityCheck")
        self.reliability.setChecked(True)
        self.reliability.setToolTip(
            "After an explanation: delete and keep its top words against random ones, and "
            "compare it with a second method; shows a verdict with the numbers (seconds)")
        form.addRow("Method", self.method)
        form.addRow("Steps", self.steps)
        form.addRow("Options", self.options)
        form.addRow("Max new tokens", self.max_new_tokens)
        form.addRow("Baseline", self.baseline)
        form.addRow("", self.matrix)
        form.addRow("Forced answer", self.target)
        form.addRow("System prompt", self.system)
        form.addRow("Device", self.device)
        form.addRow("", self.reliability)
        self.exact_check = QCheckBox("…in the model's own precision (slower)")
        self.exact_check.setObjectName("exactCheck")
        self.exact_check.setToolTip(
            "Off: on a CPU that multiplies bfloat16 natively, the check deletes words with the "
            "weights rounded to bfloat16, about twice as fast (figures move by about 1%). "
            "On: the check runs in the model's own precision, as the explanation did")
        self.reliability.toggled.connect(self.exact_check.setEnabled)
        form.addRow("", self.exact_check)
        self.claims = QCheckBox("Find what each statement rests on")
        self.claims.setObjectName("claimsCheck")
        self.claims.setChecked(True)
        self.claims.setToolTip(
            "After an explanation: split the answer into statements, find the case sentences "
            "each rests on, and check it by removing them (seconds)")
        form.addRow("", self.claims)
        self.estimate = QLabel()
        self.estimate.setObjectName("estimate")
        self.estimate.setWordWrap(True)
        form.addRow("Estimate", self.estimate)
        self.method.currentIndexChanged.connect(self._method_changed)
        self._method_changed()

    def check_precision(self) -> str:
        """The reliability check's precision (engine/precision.py): "model" or "auto"."""
        return "model" if self.exact_check.isChecked() else "auto"

    def _method_changed(self) -> None:
        """Show the chosen method's defaults and enable only the settings it takes."""
        from engine.methods import get_method

        spec = get_method(self.method.currentData())
        defaults = spec.defaults()
        self.steps.setEnabled("steps" in defaults)
        if "steps" in defaults:
            self.steps.setValue(int(defaults["steps"] or 0))
        self.matrix.setEnabled("matrix" in defaults)
        self.baseline.setEnabled("baseline" in defaults)
        shared = ("steps", "baseline", "matrix", "batch_size")
        own = [p for p in spec.params if p.name not in shared]
        self.options.clear()
        self.options.setEnabled(bool(own))
        self.options.setPlaceholderText(
            " ".join(f"{p.name}={p.default}" for p in own) if own else "no options")
        self.options.setToolTip("\n".join(f"{p.name} (default {p.default}): {p.help}"
                                           for p in own) or "This method has no options.")

    def option_pairs(self) -> tuple[tuple[str, str], ...]:
        """``key=value`` pairs typed in the options field, with spaces or commas between them;
        a comma inside a value stays (``layers=-1,-2``)."""
        pairs = []
        for item in filter(None, OPTION_SEPARATOR.split(self.options.text())):
            key, _, value = item.partition("=")
            pairs.append((key.strip().replace("-", "_"), value.strip()))
        return tuple(pairs)

    def changed_signals(self) -> list:
        """Signals after which the time estimate must be recomputed."""
        return [self.method.currentIndexChanged, self.steps.valueChanged,
                self.max_new_tokens.valueChanged, self.matrix.toggled, self.target.textChanged,
                self.options.textChanged]

    def request(self, case_text: str) -> ExplainRequest:
        target = self.target.text().strip() or None
        return ExplainRequest(
            case_text=case_text, method=self.method.currentData(),
            steps=self.steps.value() or None,
            max_new_tokens=self.max_new_tokens.value(), target=target,
            baseline=self.baseline.currentText().strip(),
            system_prompt=self.system.toPlainText().strip() or None,
            matrix=self.matrix.isChecked(), options=self.option_pairs())
