"""The health-aware training gate: may the box train now, and if not, why."""

from typing import Any

from appliance.config.health import TrainingGateSettings
from appliance.telemetry.gate import TrainingGate
from appliance.telemetry.readings import READING
from appliance.telemetry.runner import ProbeResult, ProbeRunner
from tests.telemetry.trees import HEALTHY, MISSING_SENSORS, OVER_TEMPERATURE

NO_DISK = {"min_free_disk_percent": 0.0, "min_free_disk_bytes": 0}


def _gate(**settings: Any) -> TrainingGate:
    return TrainingGate(TrainingGateSettings(**{**NO_DISK, **settings}))


def _thermal(*temperatures: float, crit: float | None = None) -> ProbeResult:
    sensors = [
        {
            "sensor": f"temp{i}",
            "label": f"s{i}",
            "input_c": t,
            "max_c": None,
            "crit_c": crit,
            "crit_alarm": None,
        }
        for i, t in enumerate(temperatures)
    ]
    reading = {
        "probe": "thermal",
        "hwmon": [{"chip": "hwmon0", "name": "cpu", "sensors": sensors}],
        "zones": [],
        "cooling": [],
        "errors": [],
    }
    return ProbeResult("thermal", READING.validate_python(reading))


def _memory(used: float, pressure: float = 0.0) -> ProbeResult:
    reading = {
        "probe": "memory",
        "total_bytes": 100,
        "available_bytes": int(100 - used),
        "swap_total_bytes": None,
        "swap_free_bytes": None,
        "used_percent": used,
        "pressure": {"memory": {"some_avg10": pressure}},
        "edac": [],
        "errors": [],
    }
    return ProbeResult("memory", READING.validate_python(reading))


def _results(tree: Any) -> dict[str, ProbeResult]:
    return ProbeRunner(root=tree).run_all(["thermal", "disks", "memory"])


def test_healthy_box_may_train() -> None:
    decision = _gate().check(_results(HEALTHY))
    assert decision.allowed and decision.reasons == () and decision.summary() == "open"


def test_box_without_sensors_may_train() -> None:
    assert _gate().check(_results(MISSING_SENSORS)).allowed


def test_over_temperature_box_may_not_and_says_why() -> None:
    decision = _gate().check(_results(OVER_TEMPERATURE))
    assert not decision.allowed
    assert decision.reasons == (
        "temperature 101.0 °C at or above 85.0 °C",
        "coretemp Package id 0: critical temperature alarm",
        "coretemp Core 0: critical temperature alarm",
        "nvme Composite: 86.0 °C within 5 °C of its critical 84.8 °C",
    )
    assert decision.summary().startswith("temperature 101.0 °C at or above 85.0 °C; coretemp")


def test_temperature_hysteresis_pauses_then_resumes_below_the_resume_limit() -> None:
    gate = _gate(max_temperature_c=85.0, resume_temperature_c=75.0)
    others = {"disks": _results(HEALTHY)["disks"], "memory": _memory(20.0)}
    assert gate.check({**others, "thermal": _thermal(80.0)}).allowed
    assert gate.check({**others, "thermal": _thermal(86.0)}).reasons == (
        "temperature 86.0 °C at or above 85.0 °C",
    )
    assert gate.check({**others, "thermal": _thermal(80.0)}).reasons == (
        "temperature 80.0 °C not yet below 75.0 °C",
    )
    assert gate.check({**others, "thermal": _thermal(74.0)}).allowed
    assert gate.check({**others, "thermal": _thermal(80.0)}).allowed  # cool again: max applies


def test_device_crit_margin() -> None:
    gate = _gate(crit_margin_c=5.0)
    others = {"disks": _results(HEALTHY)["disks"], "memory": _memory(20.0)}
    assert gate.check({**others, "thermal": _thermal(64.9, crit=70.0)}).allowed
    assert gate.check({**others, "thermal": _thermal(65.0, crit=70.0)}).reasons == (
        "cpu s0: 65.0 °C within 5 °C of its critical 70.0 °C",
    )


def test_disk_and_memory_limits() -> None:
    results = _results(HEALTHY)
    gate = TrainingGate(
        TrainingGateSettings(min_free_disk_percent=100.0, min_free_disk_bytes=1 << 62)
    )
    reasons = gate.check(results).reasons
    assert len(reasons) == 2
    assert reasons[0].startswith("disk ") and reasons[0].endswith("% free, below 100%")
    assert reasons[1].endswith(f"bytes free, below {1 << 62}")
    gate = _gate(max_memory_used_percent=90.0, max_memory_pressure_percent=10.0)
    assert gate.check({**results, "memory": _memory(91.0, 12.5)}).reasons == (
        "memory 91.0% used, above 90%",
        "memory pressure 12.5% (PSI some avg10), above 10%",
    )


def test_failed_or_missing_probes_block_training() -> None:
    results = _results(HEALTHY)
    failed = ProbeResult("thermal", None, "timed out after 10 s (killed)")
    decision = _gate().check({**results, "thermal": failed})
    assert decision.reasons == ("thermal probe failed: timed out after 10 s (killed)",)
    assert _gate().check({"thermal": results["thermal"]}).reasons == (
        "disks probe did not run",
        "memory probe did not run",
    )
