"""Per-unit attribution bars (pyqtgraph): in text order, or the top k sorted by size."""

from __future__ import annotations

import numpy as np
import pyqtgraph as pg
from PySide6.QtCore import Signal
from PySide6.QtWidgets import QCheckBox, QHBoxLayout, QSpinBox, QVBoxLayout, QWidget

from desktop.present import NEGATIVE, POSITIVE
from engine.grouping import Span


class AttributionChart(QWidget):
    """Bars for the overlay's units; hovering a bar emits its unit index."""

    hovered = Signal(int)

    def __init__(self) -> None:
        super().__init__()
        self.plot = pg.PlotWidget(background="w")
        self.plot.setMenuEnabled(False)
        self.plot.setLabel("left", "attribution")
        # Ticks as plain numbers (0.05, 0.10): pyqtgraph would otherwise rescale them and put
        # "(x0.001)" in the axis title, which a short chart cuts off.
        self.plot.getAxis("left").enableAutoSIPrefix(False)
        self.plot.showGrid(y=True, alpha=0.3)
        self.sorted_box = QCheckBox("Top")
        self.top_k = QSpinBox()
        self.top_k.setRange(3, 200)
        self.top_k.setValue(20)
        self.top_k.setSuffix(" largest")
        controls = QHBoxLayout()
        controls.addWidget(self.sorted_box)
        controls.addWidget(self.top_k)
        controls.addStretch(1)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addLayout(controls)
        layout.addWidget(self.plot)
        self._units: list[Span] = []
        self._order: list[int] = []  # bar position -> unit index
        self._bars: pg.BarGraphItem | None = None
        self._mark: pg.BarGraphItem | None = None
        self.sorted_box.toggled.connect(self._redraw)
        self.top_k.valueChanged.connect(self._redraw)
        self.plot.scene().sigMouseMoved.connect(self._on_mouse_moved)

    @property
    def heights(self) -> list[float]:
        """The plotted bar heights, in bar order (for tests and the report)."""
        return [self._units[i].score for i in self._order]

    def set_units(self, units: list[Span]) -> None:
        self._units = units
        self._redraw()

    def _redraw(self) -> None:
        self.plot.clear()
        self._mark = None
        units = self._units
        if self.sorted_box.isChecked():
            order = sorted(range(len(units)), key=lambda i: abs(units[i].score), reverse=True)
            self._order = order[: self.top_k.value()]
        else:
            self._order = list(range(len(units)))
        if not self._order:
            return
        heights = np.array([units[i].score for i in self._order])
        brushes = [pg.mkBrush(*(POSITIVE if h > 0 else NEGATIVE)) for h in heights]
        self._bars = pg.BarGraphItem(x=np.arange(len(heights)), height=heights, width=0.8,
                                     brushes=brushes, pen=None)
        self.plot.addItem(self._bars)
        if len(self._order) <= 40:
            ticks = [(k, units[i].text[:14]) for k, i in enumerate(self._order)]
            self.plot.getAxis("bottom").setTicks([ticks])
        else:
            self.plot.getAxis("bottom").setTicks(None)
        self.plot.setXRange(-1, len(heights), padding=0)
        self.plot.setLabel("bottom", "largest first" if self.sorted_box.isChecked()
                           else "position in the case")

    def highlight(self, unit_index: int) -> None:
        if self._mark is not None:
            self.plot.removeItem(self._mark)
            self._mark = None
        if unit_index in self._order:
            k = self._order.index(unit_index)
            height = self._units[unit_index].score
            self._mark = pg.BarGraphItem(x=[k], height=[height], width=0.9, brush=None,
                                         pen=pg.mkPen("k", width=2))
            self.plot.addItem(self._mark)

    def _on_mouse_moved(self, position) -> None:
        if not self._order or self._bars is None:
            return
        point = self.plot.getPlotItem().vb.mapSceneToView(position)
        k = round(point.x())
        inside = 0 <= k < len(self._order) and abs(point.x() - k) <= 0.4
        self.hovered.emit(self._order[k] if inside else -1)
