"""Judging the fleet store's age: pure functions at a given `now`, no waiting."""

import pytest

from appliance.telemetry.freshness import (
    CLOCK_SKEW_TOLERANCE_S,
    HOST_STALE_AFTER_S,
    HostLiveness,
    Verdict,
    box_stale_after_s,
    format_age,
    header_line,
    judge_box,
    judge_host,
)
from appliance.telemetry.store import HostRow

NOW = 1_796_620_203_000  # 2026-12-07 05:10:03 UTC
LIMIT_S = 660.0
ALIVE = HostLiveness(True, NOW, 0.0, "primary host scada running")
DEAD = HostLiveness(False, NOW - 3_600_000, 3600.0, "not running")


def box(
    online: bool | None,
    last_seen_ms: int | None,
    host: HostLiveness = ALIVE,
    reason: str | None = None,
) -> Verdict:
    return judge_box(online, reason, last_seen_ms, host=host, now_ms=NOW, stale_after_s=LIMIT_S)


def heartbeat(age_s: float, *, connected: bool = True, stopped: bool = False) -> HostRow:
    alive = NOW - int(age_s * 1000)
    return HostRow("scada", alive, connected, alive if stopped else None)


def test_a_fresh_box_with_a_live_host_is_online() -> None:
    assert box(True, NOW - 12_000) == Verdict("yes")
    assert box(True, NOW - int(LIMIT_S * 1000)) == Verdict("yes")  # the limit itself is fresh


def test_a_box_silent_past_the_limit_is_unknown_though_the_host_says_online() -> None:
    assert box(True, NOW - int(LIMIT_S * 1000) - 1) == Verdict(
        "unknown", "no message for over 11 min"
    )


def test_a_stale_host_makes_every_box_unknown_with_its_last_known_state() -> None:
    assert box(True, NOW - 1_000, DEAD) == Verdict("unknown", "last known: yes")
    assert box(False, NOW - 1_000, DEAD, "NDEATH") == Verdict("unknown", "last known: no, NDEATH")


def test_ndeath_gives_no_while_the_host_runs() -> None:
    assert box(False, NOW - 3_600_000, reason="NDEATH") == Verdict("no", "NDEATH")


def test_a_box_never_seen_is_unknown() -> None:
    assert box(None, None) == Verdict("unknown", "never seen")
    assert box(None, None, DEAD) == Verdict("unknown", "never seen")


def test_last_seen_in_the_future_is_unknown_beyond_the_skew_tolerance() -> None:
    within = NOW + int(CLOCK_SKEW_TOLERANCE_S * 1000)
    assert box(True, within) == Verdict("yes")
    assert box(True, within + 1) == Verdict("unknown", "last seen in the future; clock set back?")


@pytest.mark.parametrize(
    ("row", "alive", "state"),
    [
        (heartbeat(1), True, "primary host scada running"),
        (heartbeat(HOST_STALE_AFTER_S), True, "primary host scada running"),
        (
            heartbeat(HOST_STALE_AFTER_S + 0.001),
            False,
            "the aggregator's primary host is not running or not writing",
        ),
        (heartbeat(1, stopped=True), False, "primary host scada stopped"),
        (heartbeat(1, connected=False), False, "primary host scada running, not connected"),
        (heartbeat(-60), False, "primary host scada's heartbeat is in the future"),
        (None, False, "no primary-host heartbeat in the store"),
    ],
)
def test_the_host_is_alive_only_with_a_recent_heartbeat_and_the_broker(
    row: HostRow | None, alive: bool, state: str
) -> None:
    host = judge_host(row, NOW)
    assert host.alive is alive
    assert host.state.startswith(state)


def test_the_header_says_when_and_how_old() -> None:
    assert header_line(judge_host(heartbeat(12), NOW)) == (
        "data as of 2026-12-07 05:09:51 UTC (12 s ago; primary host scada running)"
    )
    assert header_line(judge_host(heartbeat(41 * 60 + 5), NOW)) == (
        "data as of 2026-12-07 04:28:58 UTC (41 min ago; "
        "the aggregator's primary host is not running or not writing)"
    )
    assert header_line(judge_host(None, NOW)).startswith("data as of: unknown (no primary-host")


def test_ages_are_whole_units_and_the_box_limit_is_two_intervals_and_a_margin() -> None:
    assert [format_age(s) for s in (0, 119.9, 120, 7199, 7200, 172_799, 172_800, -30)] == [
        "0 s",
        "119 s",
        "2 min",
        "119 min",
        "2 h",
        "47 h",
        "2 d",
        "30 s in the future",
    ]
    assert box_stale_after_s(30) == 120.0
    assert box_stale_after_s() == LIMIT_S  # the edge default: re-sent every 300 s
