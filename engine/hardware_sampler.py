"""One snapshot of process, system and GPU load, for the live hardware panel."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Any

import psutil


@dataclass(frozen=True)
class GpuSample:
    name: str
    utilisation_pct: float
    memory_used_mb: float
    memory_total_mb: float
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
        samples = []
        for index in range(nvml.nvmlDeviceGetCount()):
            handle = nvml.nvmlDeviceGetHandleByIndex(index)
            memory = nvml.nvmlDeviceGetMemoryInfo(handle)
            temperature = power = None
            with contextlib.suppress(Exception):
                temperature = float(nvml.nvmlDeviceGetTemperature(handle, 0))
            with contextlib.suppress(Exception):
                power = nvml.nvmlDeviceGetPowerUsage(handle) / 1000.0
            name = nvml.nvmlDeviceGetName(handle)
            samples.append(GpuSample(
                name=name.decode() if isinstance(name, bytes) else str(name),
                utilisation_pct=float(nvml.nvmlDeviceGetUtilizationRates(handle).gpu),
                memory_used_mb=memory.used / 2**20, memory_total_mb=memory.total / 2**20,
                temperature_c=temperature, power_w=power))
        return tuple(samples)
