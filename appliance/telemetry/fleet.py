"""Fleet health as an operator sees it: one row per box, from the aggregator's store.

`appliance fleet status` and the Prometheus endpoint both read the store file that the
primary host writes (read-only, so they can run while the aggregator does).
"""

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from appliance.config.roles import AggregatorConfig
from appliance.telemetry import metrics as m
from appliance.telemetry.store import FleetStore

STORE_FILE = "fleet-health.sqlite"


def store_path(config: AggregatorConfig) -> Path:
    return config.paths.state_dir / STORE_FILE


@dataclass(frozen=True)
class BoxStatus:
    box: str
    online: bool
    offline_reason: str | None
    last_seen_ms: int
    max_temperature_c: float | None
    disk_free_percent: float | None
    training_state: str | None
    training_gate: str | None
    adapter_version: str | None
    alerts: list[str]

    def as_json(self) -> dict[str, Any]:
        return asdict(self)


def fleet_status(store: FleetStore) -> list[BoxStatus]:
    rows = []
    for node in store.nodes():
        latest = store.latest(node.node)
        temperatures = [
            value
            for name, value in latest.items()
            if name.startswith("Thermal/")
            and name.endswith("/" + m.TEMPERATURE)
            and isinstance(value, float)
        ]
        rows.append(
            BoxStatus(
                box=node.node,
                online=node.online,
                offline_reason=node.offline_reason,
                last_seen_ms=node.last_seen_ms,
                max_temperature_c=max(temperatures, default=None),
                disk_free_percent=_number(latest.get(m.FREE_PERCENT)),
                training_state=_text(latest.get(m.TRAINING_STATE)),
                training_gate=_text(latest.get(m.TRAINING_GATE)),
                adapter_version=_text(latest.get(m.ADAPTER_VERSION)),
                alerts=[
                    f"{alert.severity} {alert.rule} {alert.subject}"
                    for alert in store.active_alerts(node.node)
                ],
            )
        )
    return rows


def render_table(rows: list[BoxStatus]) -> str:
    """A fixed-width table; long cells (alerts, gate reasons) are not cut."""
    header = ("BOX", "ONLINE", "MAX TEMP", "DISK FREE", "TRAINING", "ADAPTER", "ALERTS")
    lines = [header]
    for row in rows:
        training = row.training_state or "-"
        if row.training_gate and row.training_gate != "open":
            training += f" (gate: {row.training_gate})"
        lines.append(
            (
                row.box,
                "yes" if row.online else f"no ({row.offline_reason or 'unknown'})",
                "-" if row.max_temperature_c is None else f"{row.max_temperature_c:.1f} C",
                "-" if row.disk_free_percent is None else f"{row.disk_free_percent:.1f}%",
                training,
                row.adapter_version or "-",
                ", ".join(row.alerts) or "-",
            )
        )
    widths = [max(len(line[i]) for line in lines) for i in range(len(header) - 1)]
    return "\n".join(
        "  ".join(cell.ljust(width) for cell, width in zip(line, widths, strict=False))
        + "  "
        + line[-1]
        for line in lines
    )


def _number(value: float | str | None) -> float | None:
    return value if isinstance(value, float) else None


def _text(value: float | str | None) -> str | None:
    return value if isinstance(value, str) else None
