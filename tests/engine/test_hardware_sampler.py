"""The hardware probe under NVML errors: a GPU that cannot say a figure costs that figure only.

No NVIDIA driver runs on the test machines, so NVML's answers on a MIG slice and on a lost GPU
are played by a stand-in that raises pynvml's own error classes.
"""

from __future__ import annotations

from types import SimpleNamespace

import pynvml

from engine.hardware_sampler import HardwareProbe


def _error(code: int) -> pynvml.NVMLError:
    return pynvml.NVMLError(code)


class _MigAndLostGpu:
    """GPU 0: a MIG slice (no utilisation, temperature or power); GPU 1: fell off the bus."""

    def nvmlDeviceGetCount(self):
        return 2

    def nvmlDeviceGetHandleByIndex(self, index):
        if index == 1:
            raise _error(pynvml.NVML_ERROR_GPU_IS_LOST)
        return "handle-0"

    def nvmlDeviceGetName(self, handle):
        return b"NVIDIA H200 MIG 1g.18gb"

    def nvmlDeviceGetMemoryInfo(self, handle):
        return SimpleNamespace(used=2 * 2**30, total=18 * 2**30)

    def nvmlDeviceGetUtilizationRates(self, handle):
        raise _error(pynvml.NVML_ERROR_NOT_SUPPORTED)

    def nvmlDeviceGetTemperature(self, handle, sensor):
        raise _error(pynvml.NVML_ERROR_NOT_SUPPORTED)

    def nvmlDeviceGetPowerUsage(self, handle):
        raise _error(pynvml.NVML_ERROR_NO_PERMISSION)


def test_nvml_errors_cost_only_the_figures_they_concern():
    from desktop.qt.hardware import gpu_line

    probe = HardwareProbe()
    probe._nvml = _MigAndLostGpu()
    mig, lost = probe.sample().gpus
    assert mig.name == "NVIDIA H200 MIG 1g.18gb"
    assert (mig.memory_used_mb, mig.memory_total_mb) == (2048, 18 * 1024)
    assert mig.utilisation_pct is None and mig.temperature_c is None and mig.power_w is None
    assert gpu_line(mig) == "NVIDIA H200 MIG 1g.18gb: 2,048 / 18,432 MiB"
    assert lost.name == "GPU 1 (unreadable)" and lost.memory_total_mb is None
    assert gpu_line(lost) == "GPU 1 (unreadable): no figures (not supported here)"


def test_a_driver_that_fails_to_count_its_gpus_shows_none():
    class Gone(_MigAndLostGpu):
        def nvmlDeviceGetCount(self):
            raise _error(pynvml.NVML_ERROR_DRIVER_NOT_LOADED)

    probe = HardwareProbe()
    probe._nvml = Gone()
    assert probe.sample().gpus == ()
