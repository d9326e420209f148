"""GPU probe: NVIDIA GPUs through NVML (`nvidia-ml-py`, module `pynvml`).

Most boxes have no NVIDIA driver; then NVML cannot load and the GPU is reported absent, which
is a fact about the box, not an error. Any NVML call that a GPU does not support (ECC on
consumer cards, power on some embedded parts) leaves that one field null.
"""

from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from appliance.telemetry.probes.sysfs import probe_main

T = TypeVar("T")

_ABSENT_ERRORS = ("NVMLError_LibraryNotFound", "NVMLError_DriverNotLoaded")
"""No NVIDIA driver on this box. Any other failure of nvmlInit (no permission on /dev/nvidia*,
a driver/library mismatch) is reported as an error: the GPU is there but unusable."""


def read(_root: Path) -> dict[str, Any]:
    """`_root` is accepted for a uniform interface; NVML talks to the driver, not to files."""
    try:
        import pynvml  # noqa: PLC0415 (optional at import time: the probe reports absence)
    except ImportError:
        return {"probe": "gpu", "present": False, "reason": "nvidia-ml-py is not installed"}
    try:
        pynvml.nvmlInit()
    except pynvml.NVMLError as exc:
        if type(exc).__name__ in _ABSENT_ERRORS:
            return {"probe": "gpu", "present": False, "reason": str(exc)}
        return {"probe": "gpu", "present": False, "reason": str(exc), "errors": [str(exc)]}
    errors: list[str] = []
    try:
        count = pynvml.nvmlDeviceGetCount()
        gpus = [_device(pynvml, index, errors) for index in range(count)]
        driver = _call(pynvml, pynvml.nvmlSystemGetDriverVersion, errors, "driver version")
    except pynvml.NVMLError as exc:  # no device list or handle: nothing more to read
        return {"probe": "gpu", "present": False, "reason": str(exc), "errors": [str(exc)]}
    finally:
        pynvml.nvmlShutdown()
    return {
        "probe": "gpu",
        "present": bool(gpus),
        "reason": None if gpus else "driver loaded but no GPU found",
        "driver_version": driver,
        "gpus": gpus,
        "errors": errors,
    }


def _device(nvml: Any, index: int, errors: list[str]) -> dict[str, Any]:
    handle = nvml.nvmlDeviceGetHandleByIndex(index)

    def get(what: str, call: Callable[[], T]) -> T | None:
        return _call(nvml, call, errors, f"gpu{index} {what}")

    utilization = get("utilization", lambda: nvml.nvmlDeviceGetUtilizationRates(handle))
    memory = get("memory", lambda: nvml.nvmlDeviceGetMemoryInfo(handle))
    power_mw = get("power", lambda: nvml.nvmlDeviceGetPowerUsage(handle))
    limit_mw = get("power limit", lambda: nvml.nvmlDeviceGetEnforcedPowerLimit(handle))
    reasons = get("throttle reasons", lambda: nvml.nvmlDeviceGetCurrentClocksEventReasons(handle))
    return {
        "index": index,
        "name": get("name", lambda: nvml.nvmlDeviceGetName(handle)),
        "uuid": get("uuid", lambda: nvml.nvmlDeviceGetUUID(handle)),
        "temperature_c": get(
            "temperature", lambda: nvml.nvmlDeviceGetTemperature(handle, nvml.NVML_TEMPERATURE_GPU)
        ),
        "power_w": None if power_mw is None else power_mw / 1000.0,
        "power_limit_w": None if limit_mw is None else limit_mw / 1000.0,
        "utilization_gpu_percent": None if utilization is None else utilization.gpu,
        "utilization_memory_percent": None if utilization is None else utilization.memory,
        "memory_used_bytes": None if memory is None else memory.used,
        "memory_total_bytes": None if memory is None else memory.total,
        "throttle_reasons": None if reasons is None else _throttle_names(nvml, reasons),
        "ecc_uncorrected": _ecc(nvml, handle),
    }


def _throttle_names(nvml: Any, mask: int) -> list[str]:
    prefix = "nvmlClocksEventReason"
    names = []
    for attribute in dir(nvml):
        if attribute.startswith(prefix) and attribute not in (f"{prefix}All", f"{prefix}None"):
            bit = getattr(nvml, attribute)
            if isinstance(bit, int) and bit and mask & bit == bit:
                names.append(attribute.removeprefix(prefix))
    return sorted(set(names))


def _ecc(nvml: Any, handle: Any) -> int | None:
    """Volatile uncorrected ECC errors; None where the GPU has no ECC (not an error)."""
    try:
        return int(
            nvml.nvmlDeviceGetTotalEccErrors(
                handle, nvml.NVML_MEMORY_ERROR_TYPE_UNCORRECTED, nvml.NVML_VOLATILE_ECC
            )
        )
    except nvml.NVMLError:
        return None


def _call(nvml: Any, call: Callable[[], T], errors: list[str], what: str) -> T | None:
    try:
        return call()
    except nvml.NVMLError_NotSupported:
        return None
    except nvml.NVMLError as exc:
        errors.append(f"{what}: {exc}")
        return None


def main() -> int:
    return probe_main("gpu", lambda args: read(args.root))
