"""The GPU probe with a recorded NVML: no GPU can exist on the test machine, so the NVML
calls (only those) are replaced by a recorded H200-like device; everything else is real."""

from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pynvml
import pytest

from appliance.telemetry.metrics import probe_metrics
from appliance.telemetry.probes import gpu
from appliance.telemetry.readings import READING, GpuReading
from appliance.telemetry.runner import ProbeResult

MIB = 1 << 20


def _not_supported(*_: Any) -> Any:
    raise pynvml.NVMLError(pynvml.NVML_ERROR_NOT_SUPPORTED)


def _record(monkeypatch: pytest.MonkeyPatch, **overrides: Any) -> list[str]:
    calls: list[str] = []
    recorded: dict[str, Any] = {
        "nvmlInit": lambda: calls.append("init"),
        "nvmlShutdown": lambda: calls.append("shutdown"),
        "nvmlDeviceGetCount": lambda: 1,
        "nvmlSystemGetDriverVersion": lambda: "570.124.06",
        "nvmlDeviceGetHandleByIndex": lambda index: f"handle{index}",
        "nvmlDeviceGetName": lambda _h: "NVIDIA H200",
        "nvmlDeviceGetUUID": lambda _h: "GPU-5e8c0c1a-0000-4000-8000-000000000000",
        "nvmlDeviceGetTemperature": lambda _h, _sensor: 41,
        "nvmlDeviceGetPowerUsage": lambda _h: 118_250,
        "nvmlDeviceGetEnforcedPowerLimit": lambda _h: 700_000,
        "nvmlDeviceGetUtilizationRates": lambda _h: SimpleNamespace(gpu=87, memory=40),
        "nvmlDeviceGetMemoryInfo": lambda _h: SimpleNamespace(used=1024 * MIB, total=143771 * MIB),
        "nvmlDeviceGetCurrentClocksEventReasons": lambda _h: (
            pynvml.nvmlClocksEventReasonSwThermalSlowdown | pynvml.nvmlClocksEventReasonSwPowerCap
        ),
        "nvmlDeviceGetTotalEccErrors": lambda _h, _kind, _counter: 0,
    }
    recorded.update(overrides)
    for name, function in recorded.items():
        monkeypatch.setattr(pynvml, name, function)
    return calls


def test_gpu_present_is_read_and_flattened(monkeypatch: pytest.MonkeyPatch) -> None:
    calls = _record(monkeypatch)
    reading = READING.validate_python(gpu.read(Path("/")))
    assert isinstance(reading, GpuReading) and reading.present
    assert calls == ["init", "shutdown"]
    (card,) = reading.gpus
    assert (card.name, card.temperature_c, card.power_w, card.power_limit_w) == (
        "NVIDIA H200",
        41,
        118.25,
        700.0,
    )
    assert (card.utilization_gpu_percent, card.memory_used_bytes) == (87, 1024 * MIB)
    assert card.throttle_reasons == ["SwPowerCap", "SwThermalSlowdown"]
    assert card.ecc_uncorrected == 0 and reading.errors == []
    values = probe_metrics({"gpu": ProbeResult("gpu", reading)})
    assert values["GPU/0/Temperature C"][1] == 41
    assert values["GPU/0/Throttle Reasons"][1] == "SwPowerCap,SwThermalSlowdown"


def test_unsupported_fields_are_null_and_failures_are_listed(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def unknown(_h: Any) -> Any:
        raise pynvml.NVMLError(pynvml.NVML_ERROR_UNKNOWN)

    _record(
        monkeypatch,
        nvmlDeviceGetTotalEccErrors=_not_supported,  # consumer card: no ECC
        nvmlDeviceGetPowerUsage=_not_supported,
        nvmlDeviceGetMemoryInfo=unknown,
    )
    reading = READING.validate_python(gpu.read(Path("/")))
    assert isinstance(reading, GpuReading)
    (card,) = reading.gpus
    assert (card.ecc_uncorrected, card.power_w, card.memory_used_bytes) == (None, None, None)
    assert reading.errors == ["gpu0 memory: Unknown Error"]


def test_driver_not_loaded_is_absent(monkeypatch: pytest.MonkeyPatch) -> None:
    def not_loaded() -> None:
        raise pynvml.NVMLError(pynvml.NVML_ERROR_DRIVER_NOT_LOADED)

    _record(monkeypatch, nvmlInit=not_loaded)
    assert gpu.read(Path("/")) == {
        "probe": "gpu",
        "present": False,
        "reason": "Driver Not Loaded",
    }


def test_nvml_failures_are_errors_not_absence(monkeypatch: pytest.MonkeyPatch) -> None:
    def no_permission() -> None:
        raise pynvml.NVMLError(pynvml.NVML_ERROR_NO_PERMISSION)

    def gone(_index: int) -> Any:
        raise pynvml.NVMLError(pynvml.NVML_ERROR_GPU_IS_LOST)

    _record(monkeypatch, nvmlInit=no_permission)
    assert gpu.read(Path("/"))["errors"] == ["Insufficient Permissions"]
    calls = _record(monkeypatch, nvmlDeviceGetHandleByIndex=gone)
    reading = READING.validate_python(gpu.read(Path("/")))
    assert isinstance(reading, GpuReading)
    assert (reading.present, reading.errors) == (False, ["GPU is lost"])
    assert calls == ["init", "shutdown"]
