"""Fleet health as an operator sees it: one row per box, from the aggregator's store.

`appliance fleet status` and the Prometheus endpoint both read the store file that the
primary host writes (read-only, so they can run while the aggregator does). The store is
the host's last word, so `fleet_report` judges its age (`freshness`): the table says how old
the data are and shows `unknown` where the host's "online" can no longer be believed.
"""

from collections.abc import Iterable
from dataclasses import asdict, dataclass
from functools import partial
from pathlib import Path
from typing import Any

from appliance.config.roles import AggregatorConfig
from appliance.telemetry import metrics as m
from appliance.telemetry.freshness import (
    HostLiveness,
    Verdict,
    age_s,
    format_ago,
    header_line,
    judge_box,
    judge_host,
)
from appliance.telemetry.store import FleetStore


def store_path(config: AggregatorConfig) -> Path:
    return config.layout.fleet_health_db


@dataclass(frozen=True)
class BoxStatus:
    """A box as the store has it: `online` is the host's last word, not a judgement."""

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


@dataclass(frozen=True)
class BoxLine:
    """One box as judged now; `status` is None for an expected box never heard from."""

    box: str
    verdict: Verdict
    last_seen_age_s: float | None
    status: BoxStatus | None

    def as_json(self) -> dict[str, Any]:
        facts = self.status.as_json() if self.status is not None else {"box": self.box}
        return {
            **facts,
            "online": self.verdict.online,
            "online_note": self.verdict.note,
            "last_known_online": None if self.status is None else self.status.online,
            "last_seen_age_s": self.last_seen_age_s,
        }


@dataclass(frozen=True)
class FleetReport:
    host: HostLiveness
    box_stale_after_s: float
    boxes: list[BoxLine]

    def as_json(self) -> dict[str, Any]:
        return {
            "data_as_of_ms": self.host.as_of_ms,
            "data_age_s": self.host.age_s,
            "host_alive": self.host.alive,
            "host_state": self.host.state,
            "box_stale_after_s": self.box_stale_after_s,
            "boxes": [line.as_json() for line in self.boxes],
        }


def fleet_report(
    store: FleetStore, now_ms: int, box_stale_after_s: float, expected: Iterable[str] = ()
) -> FleetReport:
    """The store's rows judged at `now_ms`; `expected` boxes it never saw get a row too."""
    host = judge_host(store.host(), now_ms)
    judge = partial(judge_box, host=host, now_ms=now_ms, stale_after_s=box_stale_after_s)
    lines = [
        BoxLine(
            row.box,
            judge(row.online, row.offline_reason, row.last_seen_ms),
            age_s(row.last_seen_ms, now_ms),
            row,
        )
        for row in fleet_status(store)
    ]
    seen = {line.box for line in lines}
    never = judge(None, None, None)
    lines += [BoxLine(box, never, None, None) for box in sorted(set(expected) - seen)]
    return FleetReport(host, box_stale_after_s, lines)


def render_report(report: FleetReport) -> str:
    """The age header (how old, whether the host runs), then the table."""
    return header_line(report.host) + "\n" + render_table(report.boxes)


def render_table(boxes: list[BoxLine]) -> str:
    """A fixed-width table; long cells (alerts, gate reasons) are not cut."""
    header = ("BOX", "ONLINE", "LAST SEEN", "MAX TEMP", "DISK FREE", "TRAINING", "ADAPTER")
    lines: list[tuple[str, ...]] = [(*header, "ALERTS")]
    for line in boxes:
        verdict = line.verdict
        online = verdict.online + (f" ({verdict.note})" if verdict.note else "")
        lines.append((line.box, online, format_ago(line.last_seen_age_s), *_cells(line.status)))
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    return "\n".join(
        "  ".join(cell.ljust(width) for cell, width in zip(line, widths, strict=False))
        + "  "
        + line[-1]
        for line in lines
    )


def _cells(row: BoxStatus | None) -> tuple[str, ...]:
    """MAX TEMP to ALERTS: the box's last reported values ("-" where none)."""
    if row is None:
        return ("-",) * 5
    training = row.training_state or "-"
    if row.training_gate and row.training_gate != "open":
        training += f" (gate: {row.training_gate})"
    return (
        "-" if row.max_temperature_c is None else f"{row.max_temperature_c:.1f} C",
        "-" if row.disk_free_percent is None else f"{row.disk_free_percent:.1f}%",
        training,
        row.adapter_version or "-",
        ", ".join(row.alerts) or "-",
    )


def _number(value: float | str | None) -> float | None:
    return value if isinstance(value, float) else None


def _text(value: float | str | None) -> str | None:
    return value if isinstance(value, str) else None
