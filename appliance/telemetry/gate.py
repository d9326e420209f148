"""Health-aware training: may this box train now, and if not, why.

The edge scheduler asks before starting a run and between steps of a running one, passing
the latest probe results. Temperature has hysteresis: after a pause for heat, training
resumes only once every sensor is below `resume_temperature_c`, so a box hovering at the
limit does not start and stop every probe round. A reading that is missing because its
probe failed blocks training (the box cannot show it is safe); a sensor that does not exist
on this box does not.
"""

from collections.abc import Mapping
from dataclasses import dataclass
from typing import TypeVar

from appliance.config.health import TrainingGateSettings
from appliance.telemetry.readings import DisksReading, MemoryReading, ThermalReading
from appliance.telemetry.runner import ProbeResult

T = TypeVar("T")


@dataclass(frozen=True)
class GateDecision:
    """`allowed`, or the reasons (one line each) why not."""

    allowed: bool
    reasons: tuple[str, ...] = ()

    def summary(self) -> str:
        """`open`, or the reasons joined: what `fleet status` and the metrics show."""
        return "open" if self.allowed else "; ".join(self.reasons)


class TrainingGate:
    """Decides from probe results; remembers only whether it last paused for heat."""

    def __init__(self, settings: TrainingGateSettings) -> None:
        self.settings = settings
        self._hot = False

    def check(self, results: Mapping[str, ProbeResult]) -> GateDecision:
        reasons = [
            *self._thermal(results.get("thermal")),
            *self._disk(results.get("disks")),
            *self._memory(results.get("memory")),
        ]
        return GateDecision(not reasons, tuple(reasons))

    def _thermal(self, result: ProbeResult | None) -> list[str]:
        reading = _reading(result, ThermalReading, "thermal")
        if isinstance(reading, str):
            self._hot = True  # unknown temperature: treat as hot until shown otherwise
            return [reading]
        limits = self.settings
        hottest = max(reading.temperatures_c(), default=None)
        reasons = []
        if hottest is not None:
            limit = limits.resume_temperature_c if self._hot else limits.max_temperature_c
            if hottest >= limit:
                verb = "not yet below" if self._hot else "at or above"
                reasons.append(f"temperature {hottest:.1f} °C {verb} {limit:.1f} °C")
        for chip in reading.hwmon:
            for sensor in chip.sensors:
                name = f"{chip.name} {sensor.label}"
                if sensor.crit_alarm:
                    reasons.append(f"{name}: critical temperature alarm")
                elif (
                    sensor.input_c is not None
                    and sensor.crit_c is not None
                    and sensor.input_c >= sensor.crit_c - limits.crit_margin_c
                ):
                    reasons.append(
                        f"{name}: {sensor.input_c:.1f} °C within {limits.crit_margin_c:g} °C "
                        f"of its critical {sensor.crit_c:.1f} °C"
                    )
        self._hot = bool(reasons)
        return reasons

    def _disk(self, result: ProbeResult | None) -> list[str]:
        reading = _reading(result, DisksReading, "disks")
        if isinstance(reading, str):
            return [reading]
        fs = reading.filesystem
        if fs is None:
            return ["free space of the state directory is unknown"]
        reasons = []
        if fs.free_percent is not None and fs.free_percent < self.settings.min_free_disk_percent:
            reasons.append(
                f"disk {fs.free_percent:.1f}% free, below {self.settings.min_free_disk_percent:g}%"
            )
        if fs.free_bytes < self.settings.min_free_disk_bytes:
            reasons.append(
                f"disk {fs.free_bytes} bytes free, below {self.settings.min_free_disk_bytes}"
            )
        return reasons

    def _memory(self, result: ProbeResult | None) -> list[str]:
        reading = _reading(result, MemoryReading, "memory")
        if isinstance(reading, str):
            return [reading]
        if reading.used_percent is None:
            return ["memory use is unknown"]
        reasons = []
        if reading.used_percent > self.settings.max_memory_used_percent:
            reasons.append(
                f"memory {reading.used_percent:.1f}% used, above "
                f"{self.settings.max_memory_used_percent:g}%"
            )
        pressure = reading.pressure.get("memory", {}).get("some_avg10")
        if pressure is not None and pressure > self.settings.max_memory_pressure_percent:
            reasons.append(
                f"memory pressure {pressure:.1f}% (PSI some avg10), above "
                f"{self.settings.max_memory_pressure_percent:g}%"
            )
        return reasons


def _reading(result: ProbeResult | None, kind: type[T], name: str) -> T | str:
    """The probe's reading, or the reason there is none (which blocks training)."""
    if result is None:
        return f"{name} probe did not run"
    if result.error is not None or not isinstance(result.reading, kind):
        return f"{name} probe failed: {result.error}"
    return result.reading
