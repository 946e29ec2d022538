"""One snapshot of process, system and GPU load, for the live hardware panel."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Any

import psutil


@dataclass(frozen=True)
class GpuSample:
    """One GPU's figures; None where NVML cannot say (a MIG slice has no utilisation, many
    boards report no power, a GPU that fell off the bus reports nothing)."""

    name: str
    utilisation_pct: float | None
    memory_used_mb: float | None
    memory_total_mb: float | None
    temperature_c: float | None
    power_w: float | None


@dataclass(frozen=True)
class HardwareSample:
    process_cpu_pct: float  # of one core; up to 100 x cores
    process_rss_mb: float
    system_ram_used_mb: float
    system_ram_total_mb: float
    gpus: tuple[GpuSample, ...] = ()


class HardwareProbe:
    """Reads CPU, memory and (through NVML, when present) GPU figures. Cheap; call ~1/s."""

    def __init__(self) -> None:
        self._process = psutil.Process()
        self._process.cpu_percent(None)  # the first call only starts the measurement
        self._nvml: Any = None
        with contextlib.suppress(Exception):  # no NVIDIA driver: no GPU rows
            import pynvml

            pynvml.nvmlInit()
            self._nvml = pynvml

    def sample(self) -> HardwareSample:
        memory = psutil.virtual_memory()
        return HardwareSample(
            process_cpu_pct=self._process.cpu_percent(None),
            process_rss_mb=self._process.memory_info().rss / 2**20,
            system_ram_used_mb=(memory.total - memory.available) / 2**20,
            system_ram_total_mb=memory.total / 2**20,
            gpus=self._gpus(),
        )

    def _gpus(self) -> tuple[GpuSample, ...]:
        nvml = self._nvml
        if nvml is None:
            return ()
        count = _read(nvml.nvmlDeviceGetCount) or 0
        return tuple(_gpu(nvml, index) for index in range(count))


def _read(call: Any, *args: Any) -> Any:
    """``call(*args)``, or None on any NVML error: NotSupported (MIG slices, consumer boards),
    NoPermission, GpuIsLost, an old driver without the function. The panel shows what it can
    and never a traceback."""
    try:
        return call(*args)
    except Exception:
        return None


def _gpu(nvml: Any, index: int) -> GpuSample:
    handle = _read(nvml.nvmlDeviceGetHandleByIndex, index)
    if handle is None:
        return GpuSample(f"GPU {index} (unreadable)", None, None, None, None, None)
    name = _read(nvml.nvmlDeviceGetName, handle) or f"GPU {index}"
    memory = _read(nvml.nvmlDeviceGetMemoryInfo, handle)
    rates = _read(nvml.nvmlDeviceGetUtilizationRates, handle)
    temperature = _read(nvml.nvmlDeviceGetTemperature, handle, 0)
    power = _read(nvml.nvmlDeviceGetPowerUsage, handle)
    return GpuSample(
        name=name.decode(errors="replace") if isinstance(name, bytes) else str(name),
        utilisation_pct=None if rates is None else float(rates.gpu),
        memory_used_mb=None if memory is None else memory.used / 2**20,
        memory_total_mb=None if memory is None else memory.total / 2**20,
        temperature_c=None if temperature is None else float(temperature),
        power_w=None if power is None else power / 1000.0)
