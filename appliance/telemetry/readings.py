"""Pydantic models of the probes' JSON: a probe's output is trusted only after this check.

A probe is a separate executable; a bug, a half-written line or a wrong kernel file can make
it print anything. Each model is closed (unknown keys are errors), refuses NaN/infinity and
checks ranges that a real sensor cannot leave, so garbage is reported as garbage instead of
reaching alerts or the training gate.
"""

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter

Celsius = Annotated[float, Field(ge=-273.15, le=1000.0)]
Percent = Annotated[float, Field(ge=0.0, le=100.0)]
Count = Annotated[int, Field(ge=0)]


class Reading(BaseModel):
    """Base of every probe model: closed, finite, immutable."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False, frozen=True)


class HwmonSensor(Reading):
    sensor: str
    label: str
    input_c: Celsius | None
    max_c: Celsius | None
    crit_c: Celsius | None
    crit_alarm: bool | None


class HwmonChip(Reading):
    chip: str
    name: str
    sensors: list[HwmonSensor]


class ThermalZone(Reading):
    zone: str
    type: str
    temp_c: Celsius | None


class CoolingDevice(Reading):
    device: str
    type: str
    cur_state: Count | None
    max_state: Count | None


class ThermalReading(Reading):
    probe: Literal["thermal"]
    hwmon: list[HwmonChip]
    zones: list[ThermalZone]
    cooling: list[CoolingDevice]
    errors: list[str]

    def temperatures_c(self) -> list[float]:
        """Every current temperature on the box (hwmon sensors and thermal zones)."""
        hwmon = [s.input_c for chip in self.hwmon for s in chip.sensors if s.input_c is not None]
        return hwmon + [zone.temp_c for zone in self.zones if zone.temp_c is not None]


class CpuReading(Reading):
    probe: Literal["cpu"]
    load_1m: Annotated[float, Field(ge=0)] | None
    load_5m: Annotated[float, Field(ge=0)] | None
    load_15m: Annotated[float, Field(ge=0)] | None
    cpu_count: Count
    freq_mhz: list[Annotated[float, Field(ge=0)]]
    core_throttle_count: Count | None
    package_throttle_count: Count | None
    errors: list[str]


class EdacController(Reading):
    controller: str
    correctable: Count | None
    uncorrectable: Count | None


class MemoryReading(Reading):
    probe: Literal["memory"]
    total_bytes: Count | None
    available_bytes: Count | None
    swap_total_bytes: Count | None
    swap_free_bytes: Count | None
    used_percent: Percent | None
    pressure: dict[Literal["memory", "io", "cpu"], dict[str, Percent]]
    edac: list[EdacController]
    errors: list[str]


class Filesystem(Reading):
    path: str
    size_bytes: Count
    free_bytes: Count
    free_percent: Percent | None
    inodes_free_percent: Percent | None


class NvmeHealth(Reading):
    critical_warning: Annotated[int, Field(ge=0, le=255)] | None
    available_spare_percent: Count | None
    available_spare_threshold_percent: Count | None
    percentage_used: Count | None
    media_errors: Count | None


class SmartDevice(Reading):
    device: str
    protocol: str | None
    model: str | None
    serial: str | None
    exit_status: Annotated[int, Field(ge=0, le=255)]
    exit_flags: list[str]
    passed: bool | None
    failing: bool
    prefail: bool
    failed_attributes: list[str]
    temperature_c: Celsius | None
    power_on_hours: Count | None
    collected_at: Count | None
    nvme: NvmeHealth | None
    ata: dict[str, Count] | None


class DisksReading(Reading):
    probe: Literal["disks"]
    filesystem: Filesystem | None
    smart: list[SmartDevice]
    errors: list[str]


class RaplZone(Reading):
    zone: str
    name: str
    energy_uj: Count | None
    max_energy_range_uj: Count | None


class PowerReading(Reading):
    probe: Literal["power"]
    rapl: list[RaplZone]
    errors: list[str]


class Gpu(Reading):
    index: Count
    name: str | None
    uuid: str | None
    temperature_c: Celsius | None
    power_w: Annotated[float, Field(ge=0)] | None
    power_limit_w: Annotated[float, Field(ge=0)] | None
    utilization_gpu_percent: Percent | None
    utilization_memory_percent: Percent | None
    memory_used_bytes: Count | None
    memory_total_bytes: Count | None
    throttle_reasons: list[str] | None
    ecc_uncorrected: Count | None


class GpuReading(Reading):
    probe: Literal["gpu"]
    present: bool
    reason: str | None = None
    driver_version: str | None = None
    gpus: list[Gpu] = []
    errors: list[str] = []


class Dmi(Reading):
    sys_vendor: str | None
    product_name: str | None
    product_serial: str | None
    board_vendor: str | None
    board_name: str | None
    bios_vendor: str | None
    bios_version: str | None
    bios_date: str | None


class InventoryReading(Reading):
    probe: Literal["inventory"]
    dmi: Dmi
    kernel: str | None
    os: str | None
    cpu_model: str | None
    errors: list[str]


AnyReading = Annotated[
    ThermalReading
    | CpuReading
    | MemoryReading
    | DisksReading
    | PowerReading
    | GpuReading
    | InventoryReading,
    Field(discriminator="probe"),
]
READING = TypeAdapter(AnyReading)
"""Validates any probe's JSON, choosing the model by its `probe` field."""
