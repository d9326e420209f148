"""How old the fleet-health data are, and whether a box's "online" can still be believed.

The store holds what the primary host last knew. That is only the present while the host
runs and keeps hearing from the box: after the aggregator stops, its last rows still say
"online" forever. So a reader judges freshness itself, like Prometheus' staleness or a SCADA
tag's quality: "yes" needs a live host and a recent message from the box, NDEATH (or the
host's own silence verdict) gives "no", anything else is "unknown" with the last known state.
All functions take `now_ms`, so the judgement is tested without waiting.
"""

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Literal

from appliance.config.health import EdgeHealthSettings
from appliance.telemetry.store import HostRow

Online = Literal["yes", "no", "unknown"]

HOST_STALE_AFTER_S = 30.0
"""The host writes its heartbeat every tick (1 s). A compaction of a large store or a slow
SD card can hold a tick for some seconds; 30 missed heartbeats mean it is not running (or
not writing), and an operator is told within half a minute."""

BOX_REPORT_INTERVAL_S = float(EdgeHealthSettings.model_fields["report_unchanged_after_s"].default)
"""A connected box sends at least this often: it re-sends unchanged metrics after
`[health] report_unchanged_after_s` (edge default 300 s). The aggregator's config does not
carry the boxes' value, so the edge default is assumed."""

BOX_STALE_FACTOR = 2
"""Two report intervals: one lost QoS 0 NDATA (Sparkplug data is QoS 0) is not enough to
doubt a box, two in a row are."""

BOX_STALE_MARGIN_S = 60.0
"""Slack for a probe round that runs long, a broker reconnect, and clocks (the box stamps
nothing here; the host's clock does) that differ by seconds."""

CLOCK_SKEW_TOLERANCE_S = 5.0
"""A timestamp up to this far in the future is taken as now (rounding, a small NTP step);
further ahead means the clock was set back since it was written: nothing can be judged."""


def box_stale_after_s(report_interval_s: float = BOX_REPORT_INTERVAL_S) -> float:
    """Silence after which a box's last known state is no longer believed."""
    return BOX_STALE_FACTOR * report_interval_s + BOX_STALE_MARGIN_S


@dataclass(frozen=True)
class HostLiveness:
    """Whether the primary host is running and hearing the boxes, and how old its data are."""

    alive: bool
    as_of_ms: int | None  # the last heartbeat: everything in the store is at least this old
    age_s: float | None
    state: str  # for people: "primary host scada running", "... stopped", ...


@dataclass(frozen=True)
class Verdict:
    """One box's ONLINE cell: the judgement and a short why."""

    online: Online
    note: str | None = None


def age_s(then_ms: int, now_ms: int) -> float:
    """Seconds since `then_ms`; a little in the future (skew tolerance) counts as zero."""
    age = (now_ms - then_ms) / 1000
    return 0.0 if -CLOCK_SKEW_TOLERANCE_S <= age < 0 else age


def judge_host(
    row: HostRow | None, now_ms: int, stale_after_s: float = HOST_STALE_AFTER_S
) -> HostLiveness:
    """Alive = a heartbeat within `stale_after_s`, not stopped, connected to the broker."""
    if row is None:
        return HostLiveness(
            False,
            None,
            None,
            "no primary-host heartbeat in the store (has the aggregator run "
            "since this version was installed?)",
        )
    age = age_s(row.alive_ms, now_ms)
    name = f"primary host {row.host_id}"
    if age < 0:
        return HostLiveness(
            False,
            row.alive_ms,
            age,
            f"{name}'s heartbeat is in the future; was the clock set back?",
        )
    if row.stopped_ms is not None:
        return HostLiveness(False, row.alive_ms, age, f"{name} stopped")
    if age > stale_after_s:
        return HostLiveness(
            False,
            row.alive_ms,
            age,
            "the aggregator's primary host is not running or not writing",
        )
    if not row.connected:
        return HostLiveness(
            False, row.alive_ms, age, f"{name} running, not connected to the broker"
        )
    return HostLiveness(True, row.alive_ms, age, f"{name} running")


def judge_box(
    online: bool | None,
    offline_reason: str | None,
    last_seen_ms: int | None,
    *,
    host: HostLiveness,
    now_ms: int,
    stale_after_s: float,
) -> Verdict:
    """`online`/`last_seen_ms` are the host's last word (None: never seen). "no" is kept
    only while the host runs: a box that came back after the host stopped is not seen."""
    if online is None or last_seen_ms is None:
        return Verdict("unknown", "never seen")
    known = "yes" if online else f"no, {offline_reason or 'offline'}"
    if not host.alive:
        return Verdict("unknown", f"last known: {known}")
    if not online:
        return Verdict("no", offline_reason or "offline")
    age = age_s(last_seen_ms, now_ms)
    if age < 0:
        return Verdict("unknown", "last seen in the future; clock set back?")
    if age > stale_after_s:
        return Verdict("unknown", f"no message for over {format_age(stale_after_s)}")
    return Verdict("yes")


def format_age(seconds: float) -> str:
    """`12 s`, `41 min`, `5 h`, `3 d`: whole units, as an operator reads them."""
    if seconds < 0:
        return f"{format_age(-seconds)} in the future"
    for unit, size, below in (("s", 1, 120), ("min", 60, 120 * 60), ("h", 3600, 48 * 3600)):
        if seconds < below:
            return f"{int(seconds // size)} {unit}"
    return f"{int(seconds // 86400)} d"


def format_ago(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    return format_age(seconds) if seconds < 0 else f"{format_age(seconds)} ago"


def format_utc(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def header_line(host: HostLiveness) -> str:
    """`data as of 2026-12-07 05:10:03 UTC (12 s ago; primary host scada running)`."""
    if host.as_of_ms is None:
        return f"data as of: unknown ({host.state})"
    return f"data as of {format_utc(host.as_of_ms)} ({format_ago(host.age_s)}; {host.state})"
