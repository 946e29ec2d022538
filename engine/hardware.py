"""Device naming and peak-memory measurement for the record's ``hardware`` block."""

from __future__ import annotations

import platform
import sys
from dataclasses import dataclass
from pathlib import Path

import psutil
import torch


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    if device.type == "mps":
        return "Apple GPU (MPS)"
    return _cpu_name()


def _cpu_name() -> str:
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        for line in cpuinfo.read_text(errors="replace").splitlines():
            if line.startswith("model name"):
                name = line.split(":", 1)[1].strip()
                return f"{name} ({psutil.cpu_count(logical=True)} threads)"
    return platform.processor() or platform.machine() or "CPU"


def _peak_rss_bytes() -> int:
    status = Path("/proc/self/status")
    if status.exists():
        for line in status.read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    if sys.platform == "win32":
        return int(getattr(psutil.Process().memory_info(), "peak_wset", 0))
    import resource

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if sys.platform == "darwin" else peak * 1024


def _reset_peak_rss() -> bool:
    """Reset the kernel's high-water mark so the peak covers one run (Linux only)."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        return False
    return True


@dataclass
class PeakMemory:
    """Context manager measuring peak RSS and peak accelerator memory over a block, in MiB.

    On Linux the RSS peak covers exactly the block; elsewhere it is the process's lifetime peak.
    """

    device: torch.device
    peak_rss_mb: float = 0.0
    peak_accelerator_mb: float | None = None

    def __enter__(self) -> PeakMemory:
        _reset_peak_rss()
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
        return self

    def __exit__(self, *exc: object) -> None:
        self.peak_rss_mb = _peak_rss_bytes() / 2**20
        if self.device.type == "cuda":
            self.peak_accelerator_mb = torch.cuda.max_memory_allocated(self.device) / 2**20
        elif self.device.type == "mps":
            self.peak_accelerator_mb = torch.mps.driver_allocated_memory() / 2**20


# Accelerator memory the process may use in all (weights included), so that a run fits a laptop
# GPU even on a larger card; TOKENTRACE_GPU_MEMORY_GB changes it.
DEFAULT_GPU_BUDGET_GB = 8.0


def gpu_budget_bytes() -> int:
    import os

    try:
        gigabytes = float(os.environ.get("TOKENTRACE_GPU_MEMORY_GB", DEFAULT_GPU_BUDGET_GB))
    except ValueError:
        gigabytes = DEFAULT_GPU_BUDGET_GB
    return int(gigabytes * 2**30)


def available_memory_bytes(device: torch.device) -> int:
    """Memory free for activations on ``device`` right now: on a GPU, what is free and within
    the budget (``gpu_budget_bytes`` minus what this process already holds)."""
    if device.type == "cuda":
        free, _total = torch.cuda.mem_get_info(device)
        within = gpu_budget_bytes() - torch.cuda.memory_reserved(device)
        return int(max(0, min(free, within)))
    return int(psutil.virtual_memory().available)
