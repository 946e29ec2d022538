"""The hardware panel: live CPU, memory and GPU figures, and the last run's costs.

Sampling runs on its own thread once a second and only while the panel is visible.
"""

from __future__ import annotations

from PySide6.QtCore import QMetaObject, QObject, Qt, QThread, QTimer, Signal, Slot
from PySide6.QtWidgets import QFormLayout, QLabel, QWidget

from desktop.qt import plain_tooltip
from engine.hardware_sampler import GpuSample, HardwareProbe, HardwareSample
from engine.record import Explanation


class HardwareSampler(QObject):
    sampled = Signal(object)  # HardwareSample

    def __init__(self, interval_ms: int = 1000) -> None:
        super().__init__()
        self._interval = interval_ms
        self._timer: QTimer | None = None
        self._probe: HardwareProbe | None = None

    @Slot()
    def start(self) -> None:
        if self._timer is None:  # created on the sampler's own thread
            self._probe = HardwareProbe()
            self._timer = QTimer()
            self._timer.setInterval(self._interval)
            self._timer.timeout.connect(self._on_timeout)
        self._timer.start()
        self._on_timeout()

    @Slot()
    def stop(self) -> None:
        if self._timer is not None:
            self._timer.stop()

    @Slot()
    def dispose(self) -> None:
        if self._timer is not None:
            self._timer.stop()
            self._timer.deleteLater()
            self._timer = None

    def _on_timeout(self) -> None:
        assert self._probe is not None
        self.sampled.emit(self._probe.sample())


def gpu_line(gpu: GpuSample) -> str:
    """One GPU as the panel shows it; figures NVML could not give are left out."""
    parts = []
    if gpu.utilisation_pct is not None:
        parts.append(f"{gpu.utilisation_pct:.0f}%")
    if gpu.memory_used_mb is not None and gpu.memory_total_mb is not None:
        parts.append(f"{gpu.memory_used_mb:,.0f} / {gpu.memory_total_mb:,.0f} MiB")
    if gpu.temperature_c is not None:
        parts.append(f"{gpu.temperature_c:.0f} °C")
    if gpu.power_w is not None:
        parts.append(f"{gpu.power_w:.0f} W")
    return f"{gpu.name}: {', '.join(parts) or 'no figures (not supported here)'}"


class HardwarePanel(QWidget):
    _start_requested = Signal()
    _stop_requested = Signal()

    def __init__(self, interval_ms: int = 1000) -> None:
        super().__init__()
        self.thread = QThread()
        self.thread.setObjectName("tokentrace-hardware")
        self.sampler = HardwareSampler(interval_ms)
        self.sampler.moveToThread(self.thread)
        self._start_requested.connect(self.sampler.start)
        self._stop_requested.connect(self.sampler.stop)
        self.sampler.sampled.connect(self._on_sampled)
        self.thread.start()
        self.samples = 0

        form = QFormLayout(self)
        self.labels: dict[str, QLabel] = {}
        for key, title in [("device", "Device"), ("cpu", "Process CPU"), ("rss", "Process RSS"),
                           ("ram", "System RAM"), ("gpu", "GPU"), ("load", "Load"),
                           ("generate", "Generate"), ("attribute", "Attribute"),
                           ("peak", "Peak memory")]:
            label = QLabel("–")
            label.setTextFormat(Qt.TextFormat.PlainText)  # device names come from records
            label.setWordWrap(key == "gpu")
            self.labels[key] = label
            form.addRow(title, label)

    def showEvent(self, event) -> None:
        self._start_requested.emit()
        super().showEvent(event)

    def hideEvent(self, event) -> None:
        self._stop_requested.emit()
        super().hideEvent(event)

    def shutdown(self) -> None:
        """Stop the timer on its own thread (Qt timers die where they live), then the thread."""
        if self.thread.isRunning():
            QMetaObject.invokeMethod(self.sampler, "dispose",
                                     Qt.ConnectionType.BlockingQueuedConnection)
        self.thread.quit()
        self.thread.wait(5000)

    def _on_sampled(self, sample: HardwareSample) -> None:
        self.samples += 1
        self.labels["cpu"].setText(f"{sample.process_cpu_pct:.0f}%")
        self.labels["rss"].setText(f"{sample.process_rss_mb:,.0f} MiB")
        self.labels["ram"].setText(f"{sample.system_ram_used_mb / 1024:.1f} / "
                                   f"{sample.system_ram_total_mb / 1024:.1f} GiB")
        if sample.gpus:
            self.labels["gpu"].setText("\n".join(gpu_line(g) for g in sample.gpus))
        else:
            self.labels["gpu"].setText("none found")

    def show_run(self, record: Explanation) -> None:
        t, hw = record.timings, record.hardware
        self.labels["device"].setText(hw.device_name)
        self.labels["device"].setToolTip(plain_tooltip(f"{record.model.device}, "
                                                       f"{record.model.dtype}"))
        self.labels["load"].setText(f"{t.load_s:.1f} s")
        self.labels["generate"].setText("answer forced" if record.answer.forced
                                        else f"{t.generate_s:.1f} s")
        self.labels["attribute"].setText(f"{t.attribute_s:.1f} s")
        peak = f"RSS {hw.peak_rss_mb:,.0f} MiB"
        if hw.peak_accelerator_mb is not None:
            peak += f" · GPU {hw.peak_accelerator_mb:,.0f} MiB"
        self.labels["peak"].setText(peak)
