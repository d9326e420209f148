"""Alert rules over a box's latest metrics, and firing/resolved tracking.

Limits come from the device where it reports one (hwmon `crit` and `crit_alarm`, SMART's own
verdict, NVMe `critical_warning` and spare threshold); fleet-wide thresholds (node-mixin
defaults: filesystem < 5% free warning, < 3% critical; memory > 90%) cover the rest. Rules
are pure functions of the values, so a test feeds values and reads alerts; `AlertTracker`
turns successive evaluations into `firing` and `resolved` events, once each.
"""

import functools
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass

from appliance.telemetry import metrics as m
from appliance.telemetry.store import AlertRow

Values = Mapping[str, float | str | None]
CRITICAL, WARNING = "critical", "warning"


@dataclass(frozen=True)
class Thresholds:
    filesystem_warning_free_percent: float = 5.0
    filesystem_critical_free_percent: float = 3.0
    memory_warning_used_percent: float = 90.0
    offline_alert_after_s: float = 300.0


@dataclass(frozen=True)
class Alert:
    """One condition on one box: `subject` tells apart two sensors under the same rule."""

    rule: str
    subject: str
    severity: str
    message: str

    @property
    def key(self) -> tuple[str, str]:
        return self.rule, self.subject


@dataclass(frozen=True)
class AlertEvent:
    node: str
    state: str  # "firing" or "resolved"
    alert: Alert
    at_ms: int


def evaluate(values: Values, limits: Thresholds) -> list[Alert]:
    """Every hardware alert that holds for these values."""
    alerts: list[Alert] = []
    for name, value in values.items():
        rules = _rules_for(name)
        if not rules:
            continue  # most metrics (CPU, power, inventory, limits...) have no rule
        metric = _Metric(name, value, values, limits)
        alerts.extend(alert for rule in rules if (alert := rule(metric)) is not None)
    return sorted(alerts, key=lambda alert: alert.key)


@dataclass(frozen=True)
class _Metric:
    """One metric seen by the rules, with its box's other values for context."""

    name: str
    value: float | str | None
    values: Values
    limits: Thresholds

    @property
    def base(self) -> str:
        return self.name.rpartition("/")[0]

    @property
    def subject(self) -> str:
        return self.base.split("/", 1)[-1]

    @property
    def number(self) -> float | None:
        return _num(self.value)

    def sibling(self, quantity: str) -> float | None:
        return _num(self.values.get(f"{self.base}/{quantity}"))


Rule = Callable[[_Metric], Alert | None]


def _temperature(x: _Metric) -> Alert | None:
    crit = x.sibling(m.CRIT)
    if x.number is not None and crit is not None and x.number >= crit:
        text = f"{x.subject}: {x.number:g} °C at or above its critical {crit:g} °C"
        return Alert("temperature_critical", x.subject, CRITICAL, text)
    if x.sibling(m.CRIT_ALARM) == 1.0:
        return Alert("temperature_critical", x.subject, CRITICAL, f"{x.subject}: critical alarm")
    return None


def _smart_failing(x: _Metric) -> Alert | None:
    if x.number == 1.0:
        return Alert("smart_failing", x.subject, CRITICAL, f"disk {x.subject}: SMART failing")
    return None


def _smart_prefail(x: _Metric) -> Alert | None:
    if x.number == 1.0:
        text = f"disk {x.subject}: a pre-failure attribute is at its threshold"
        return Alert("smart_prefail", x.subject, WARNING, text)
    return None


def _nvme_warning(x: _Metric) -> Alert | None:
    if (x.number or 0) > 0:
        text = f"disk {x.subject}: NVMe critical warning 0x{int(x.number or 0):02x}"
        return Alert("nvme_critical_warning", x.subject, CRITICAL, text)
    return None


def _nvme_spare(x: _Metric) -> Alert | None:
    threshold = x.sibling(m.NVME_SPARE_THRESHOLD)
    if x.number is not None and threshold is not None and x.number < threshold:
        text = f"disk {x.subject}: spare {x.number:g}% below its threshold {threshold:g}%"
        return Alert("nvme_spare_low", x.subject, CRITICAL, text)
    return None


def _edac(x: _Metric) -> Alert | None:
    if (x.number or 0) > 0:
        text = f"{x.subject}: {x.number:g} uncorrectable memory errors"
        return Alert("edac_uncorrectable", x.subject, CRITICAL, text)
    return None


def _filesystem(x: _Metric) -> Alert | None:
    if x.number is None:
        return None
    for severity, limit in (
        (CRITICAL, x.limits.filesystem_critical_free_percent),
        (WARNING, x.limits.filesystem_warning_free_percent),
    ):
        if x.number < limit:
            text = f"state filesystem {x.number:.1f}% free, below {limit:g}%"
            return Alert("filesystem_free", "state", severity, text)
    return None


def _memory(x: _Metric) -> Alert | None:
    limit = x.limits.memory_warning_used_percent
    if (x.number or 0) > limit:
        text = f"memory {x.number:g}% used, above {limit:g}%"
        return Alert("memory_high", "memory", WARNING, text)
    return None


def _probe(x: _Metric) -> Alert | None:
    if x.number == 0.0:
        reason = x.values.get(f"{x.base}/Errors") or "no reason given"
        return Alert("probe_failed", x.subject, WARNING, f"probe {x.subject} failed: {reason}")
    return None


_RULES: tuple[tuple[str, str, Rule], ...] = (
    ("Thermal/", "/" + m.TEMPERATURE, _temperature),
    ("SMART/", "/" + m.SMART_FAILING, _smart_failing),
    ("SMART/", "/" + m.SMART_PREFAIL, _smart_prefail),
    ("SMART/", "/" + m.NVME_CRITICAL_WARNING, _nvme_warning),
    ("SMART/", "/" + m.NVME_SPARE, _nvme_spare),
    ("EDAC/", "/" + m.EDAC_UNCORRECTABLE, _edac),
    (m.FREE_PERCENT, "", _filesystem),
    (m.MEMORY_USED_PERCENT, "", _memory),
    ("Probe/", "/" + m.PROBE_OK, _probe),
)
"""(name prefix, name suffix, rule): which metric each rule looks at."""


@functools.lru_cache(maxsize=1 << 16)
def _rules_for(name: str) -> tuple[Rule, ...]:
    """The rules that apply to a metric name (cached: the host asks per value received)."""
    return tuple(
        rule
        for prefix, suffix, rule in _RULES
        if name.startswith(prefix) and name.endswith(suffix) and (suffix or name == prefix)
    )


def offline_alert(
    offline_since_ms: int | None, reason: str | None, now_ms: int, limits: Thresholds
) -> Alert | None:
    """`box_offline` once a box has been offline longer than the configured time."""
    if offline_since_ms is None:
        return None
    seconds = (now_ms - offline_since_ms) / 1000
    if seconds < limits.offline_alert_after_s:
        return None
    return Alert(
        "box_offline",
        "box",
        CRITICAL,
        f"offline for {seconds:.0f} s ({reason or 'unknown reason'})",
    )


def _num(value: float | str | None) -> float | None:
    return value if isinstance(value, float | int) and not isinstance(value, bool) else None


class AlertTracker:
    """Remembers which alerts fire per box; `update` returns what started and what ended."""

    def __init__(self, active: Iterable[AlertRow] = ()) -> None:
        self._active: dict[str, dict[tuple[str, str], Alert]] = {}
        for row in active:  # survive a restart without re-firing
            alert = Alert(row.rule, row.subject, row.severity, row.message)
            self._active.setdefault(row.node, {})[alert.key] = alert

    def update(self, node: str, alerts: Iterable[Alert], now_ms: int) -> list[AlertEvent]:
        current = {alert.key: alert for alert in alerts}
        previous = self._active.get(node, {})
        events = [
            AlertEvent(node, "resolved", alert, now_ms)
            for key, alert in previous.items()
            if key not in current
        ]
        for key, alert in current.items():
            before = previous.get(key)
            if before is None or before.severity != alert.severity:
                if before is not None:
                    events.append(AlertEvent(node, "resolved", before, now_ms))
                events.append(AlertEvent(node, "firing", alert, now_ms))
            else:
                current[key] = before  # keep the first message while it keeps firing
        self._active[node] = current
        return events

    def active(self, node: str) -> list[Alert]:
        return list(self._active.get(node, {}).values())
