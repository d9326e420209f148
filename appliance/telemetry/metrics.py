"""Flatten validated probe readings and the daemon's own state into Sparkplug metrics.

Names are `Area/Subject/Quantity Unit` (e.g. `Thermal/hwmon0 coretemp/Package id 0/
Temperature C`), readable as a tag tree in SCADA tools. A value that could not be read is sent
as null rather than left out, so the metric set stays stable and a flaky sensor does not force
a rebirth. Alert rules and `fleet status` rely on the suffixes defined here.
"""

from collections.abc import Mapping
from dataclasses import dataclass

from appliance.telemetry.readings import (
    CpuReading,
    DisksReading,
    GpuReading,
    InventoryReading,
    MemoryReading,
    PowerReading,
    ThermalReading,
)
from appliance.telemetry.runner import ProbeResult
from appliance.telemetry.sparkplug import DataType, Value

MetricValues = dict[str, tuple[DataType, Value]]

TEMPERATURE = "Temperature C"
CRIT = "Crit C"
CRIT_ALARM = "Crit Alarm"
FREE_PERCENT = "Disk/State/Free Percent"
MEMORY_USED_PERCENT = "Memory/Used Percent"
SMART_FAILING = "Failing"
SMART_PREFAIL = "Prefail"
NVME_CRITICAL_WARNING = "Critical Warning"
NVME_SPARE = "Available Spare Percent"
NVME_SPARE_THRESHOLD = "Available Spare Threshold Percent"
EDAC_UNCORRECTABLE = "Uncorrectable"
PROBE_OK = "OK"
TRAINING_STATE = "Appliance/Training State"
TRAINING_GATE = "Appliance/Training Gate"
DP_EPSILON_SPENT = "Appliance/DP Epsilon Spent"
ADAPTER_VERSION = "Appliance/Adapter Version"

D = DataType.DOUBLE
B, S, U64 = DataType.BOOLEAN, DataType.STRING, DataType.UINT64


@dataclass(frozen=True)
class DaemonState:
    """What the edge daemon reports about itself next to the hardware."""

    model_sha256: str | None = None
    adapter_version: str | None = None
    training_state: str = "idle"
    training_progress_percent: float | None = None
    training_gate: str = "open"
    last_round: str | None = None
    outbox_depth: int | None = None
    inference_latency_ms: float | None = None
    dp_epsilon_spent: float | None = None
    """Differential privacy spent by the box's updates so far (None: DP off)."""


def daemon_metrics(state: DaemonState) -> MetricValues:
    return {
        "Appliance/Model SHA256": (S, state.model_sha256),
        ADAPTER_VERSION: (S, state.adapter_version),
        TRAINING_STATE: (S, state.training_state),
        "Appliance/Training Progress Percent": (D, state.training_progress_percent),
        TRAINING_GATE: (S, state.training_gate),
        "Appliance/Last Round": (S, state.last_round),
        "Appliance/Outbox Depth": (U64, state.outbox_depth),
        "Appliance/Inference Latency ms": (D, state.inference_latency_ms),
        DP_EPSILON_SPENT: (D, state.dp_epsilon_spent),
    }


def probe_metrics(results: Mapping[str, ProbeResult]) -> MetricValues:
    """Every probe's status, plus the values of those that produced a reading."""
    values: MetricValues = {}
    for name, result in results.items():
        reading = result.reading
        problems = [result.error] if result.error else list(getattr(reading, "errors", []))
        values[f"Probe/{name}/{PROBE_OK}"] = (B, result.error is None)
        values[f"Probe/{name}/Errors"] = (S, "; ".join(problems)[:1000])
        if isinstance(reading, ThermalReading):
            values.update(_thermal(reading))
        elif isinstance(reading, CpuReading):
            values.update(_cpu(reading))
        elif isinstance(reading, MemoryReading):
            values.update(_memory(reading))
        elif isinstance(reading, DisksReading):
            values.update(_disks(reading))
        elif isinstance(reading, PowerReading):
            values.update(_power(reading))
        elif isinstance(reading, GpuReading):
            values.update(_gpu(reading))
        elif isinstance(reading, InventoryReading):
            values.update(_inventory(reading))
    return values


def _level(text: str) -> str:
    """A reading's name as one level of the metric tree ('/' would add levels)."""
    return text.replace("/", "_").strip() or "_"


def _thermal(reading: ThermalReading) -> MetricValues:
    values: MetricValues = {}
    for chip in reading.hwmon:
        for sensor in chip.sensors:
            base = f"Thermal/{_level(f'{chip.chip} {chip.name}')}/{_level(sensor.label)}"
            values[f"{base}/{TEMPERATURE}"] = (D, sensor.input_c)
            values[f"{base}/Max C"] = (D, sensor.max_c)
            values[f"{base}/{CRIT}"] = (D, sensor.crit_c)
            values[f"{base}/{CRIT_ALARM}"] = (B, sensor.crit_alarm)
    for zone in reading.zones:
        values[f"Thermal/{_level(f'{zone.zone} {zone.type}')}/{TEMPERATURE}"] = (D, zone.temp_c)
    for device in reading.cooling:
        base = f"Cooling/{_level(f'{device.device} {device.type}')}"
        values[f"{base}/State"] = (U64, device.cur_state)
        values[f"{base}/Max State"] = (U64, device.max_state)
    return values


def _cpu(reading: CpuReading) -> MetricValues:
    freq = reading.freq_mhz
    return {
        "CPU/Load 1m": (D, reading.load_1m),
        "CPU/Load 5m": (D, reading.load_5m),
        "CPU/Load 15m": (D, reading.load_15m),
        "CPU/Count": (U64, reading.cpu_count),
        "CPU/Frequency Mean MHz": (D, sum(freq) / len(freq) if freq else None),
        "CPU/Core Throttle Count": (U64, reading.core_throttle_count),
        "CPU/Package Throttle Count": (U64, reading.package_throttle_count),
    }


def _memory(reading: MemoryReading) -> MetricValues:
    values: MetricValues = {
        "Memory/Total Bytes": (U64, reading.total_bytes),
        "Memory/Available Bytes": (U64, reading.available_bytes),
        MEMORY_USED_PERCENT: (D, reading.used_percent),
        "Memory/Swap Free Bytes": (U64, reading.swap_free_bytes),
    }
    for resource, averages in reading.pressure.items():
        for key, percent in averages.items():
            values[f"Pressure/{resource}/{key} Percent"] = (D, percent)
    for mc in reading.edac:
        values[f"EDAC/{_level(mc.controller)}/Correctable"] = (U64, mc.correctable)
        values[f"EDAC/{_level(mc.controller)}/{EDAC_UNCORRECTABLE}"] = (U64, mc.uncorrectable)
    return values


def _disks(reading: DisksReading) -> MetricValues:
    fs = reading.filesystem
    values: MetricValues = {
        FREE_PERCENT: (D, fs.free_percent if fs else None),
        "Disk/State/Free Bytes": (U64, fs.free_bytes if fs else None),
        "Disk/State/Size Bytes": (U64, fs.size_bytes if fs else None),
    }
    for device in reading.smart:
        base = f"SMART/{_level(device.device.removeprefix('/dev/'))}"
        values[f"{base}/{SMART_FAILING}"] = (B, device.failing)
        values[f"{base}/{SMART_PREFAIL}"] = (B, device.prefail)
        values[f"{base}/Exit Status"] = (U64, device.exit_status)
        values[f"{base}/Temperature C"] = (D, device.temperature_c)
        values[f"{base}/Model"] = (S, device.model)
        if device.nvme is not None:
            values[f"{base}/{NVME_CRITICAL_WARNING}"] = (U64, device.nvme.critical_warning)
            values[f"{base}/{NVME_SPARE}"] = (U64, device.nvme.available_spare_percent)
            values[f"{base}/{NVME_SPARE_THRESHOLD}"] = (
                U64,
                device.nvme.available_spare_threshold_percent,
            )
            values[f"{base}/Percentage Used"] = (U64, device.nvme.percentage_used)
            values[f"{base}/Media Errors"] = (U64, device.nvme.media_errors)
        for counter, count in (device.ata or {}).items():
            values[f"{base}/{counter.replace('_', ' ').title()}"] = (U64, count)
    return values


def _power(reading: PowerReading) -> MetricValues:
    return {
        f"Power/{_level(f'{zone.zone} {zone.name}')}/Energy J": (
            D,
            None if zone.energy_uj is None else zone.energy_uj / 1e6,
        )
        for zone in reading.rapl
    }


def _gpu(reading: GpuReading) -> MetricValues:
    values: MetricValues = {"GPU/Present": (B, reading.present)}
    for gpu in reading.gpus:
        base = f"GPU/{gpu.index}"
        values[f"{base}/{TEMPERATURE}"] = (D, gpu.temperature_c)
        values[f"{base}/Power W"] = (D, gpu.power_w)
        values[f"{base}/Utilization Percent"] = (D, gpu.utilization_gpu_percent)
        values[f"{base}/Memory Used Bytes"] = (U64, gpu.memory_used_bytes)
        values[f"{base}/Throttle Reasons"] = (
            S,
            None if gpu.throttle_reasons is None else ",".join(gpu.throttle_reasons),
        )
        values[f"{base}/ECC Uncorrected"] = (U64, gpu.ecc_uncorrected)
    return values


def _inventory(reading: InventoryReading) -> MetricValues:
    dmi = reading.dmi
    return {
        "Inventory/Vendor": (S, dmi.sys_vendor),
        "Inventory/Model": (S, dmi.product_name),
        "Inventory/Serial": (S, dmi.product_serial),
        "Inventory/BIOS Version": (S, dmi.bios_version),
        "Inventory/Kernel": (S, reading.kernel),
        "Inventory/OS": (S, reading.os),
        "Inventory/CPU Model": (S, reading.cpu_model),
    }
