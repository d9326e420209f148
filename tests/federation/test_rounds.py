"""Round state: closing rules, exactly-once updates, late refusals, survival of kill -9."""

import json
import signal
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from appliance.federation.rounds import (
    SCHEMA,
    RoundSpec,
    RoundState,
    RoundStore,
    StoredUpdate,
    Verdict,
)
from tests.federation.plans import training_plan

BOXES = ("box0", "box1", "box2", "box3")


def spec(round_id: str = "r1", min_updates: int = 3, at_deadline: int = 2) -> RoundSpec:
    return RoundSpec(round_id, 4, training_plan(), BOXES, min_updates, at_deadline, 100.0)


def update(node: str, sha: str = "a" * 64) -> StoredUpdate:
    return StoredUpdate(node, sha, 10, b"blob-" + node.encode())


@pytest.fixture
def store(tmp_path: Path) -> RoundStore:
    db = RoundStore(tmp_path / "rounds.sqlite")
    yield db  # type: ignore[misc]
    db.close()


def test_round_closes_when_k_updates_arrived(store: RoundStore) -> None:
    store.open_round(spec(), now=0)
    for node in BOXES[:2]:
        assert store.offer("r1", update(node), now=1).verdict == Verdict.ACCEPTED
    assert store.advance(now=2) is None
    store.offer("r1", update("box2"), now=3)
    closed = store.advance(now=4)
    assert closed is not None and closed.state == RoundState.CLOSED
    assert closed.close_reason == "3 updates arrived"
    assert [u.node_id for u in store.updates("r1")] == ["box0", "box1", "box2"]


def test_late_update_for_a_closed_round_is_refused(store: RoundStore) -> None:
    store.open_round(spec(min_updates=1), now=0)
    store.offer("r1", update("box0"), now=1)
    store.advance(now=2)
    offer = store.offer("r1", update("box1"), now=3)
    assert offer.verdict == Verdict.REJECTED
    assert offer.reason == "late: round r1 is closed"


def test_deadline_with_the_minimum_closes(store: RoundStore) -> None:
    store.open_round(spec(), now=0)
    store.offer("r1", update("box0"), now=1)
    store.offer("r1", update("box1"), now=1)
    closed = store.advance(now=100)
    assert closed is not None and closed.close_reason == "deadline with 2 updates"


def test_deadline_without_the_minimum_extends_once_then_abandons(store: RoundStore) -> None:
    store.open_round(spec(), now=0)
    store.offer("r1", update("box0"), now=1)
    extended = store.advance(now=100)
    assert extended is not None and extended.extended and extended.state == RoundState.OPEN
    assert extended.deadline == 200
    assert store.advance(now=150) is None
    abandoned = store.advance(now=200)
    assert abandoned is not None and abandoned.state == RoundState.ABANDONED
    assert abandoned.close_reason == "abandoned: 1 updates after an extended deadline"
    assert store.current() is None


def test_each_box_counts_once_per_round(store: RoundStore) -> None:
    store.open_round(spec(), now=0)
    assert store.offer("r1", update("box0"), now=1).verdict == Verdict.ACCEPTED
    again = store.offer("r1", update("box0"), now=2)
    assert (again.verdict, again.reason) == (Verdict.DUPLICATE, "already accepted; counted once")
    other = store.offer("r1", update("box0", sha="b" * 64), now=3)
    assert other.verdict == Verdict.REJECTED and "already sent another update" in other.reason
    assert store.count("r1") == 1


def test_unknown_round_and_non_participant_are_refused(store: RoundStore) -> None:
    store.open_round(spec(), now=0)
    assert store.offer("r9", update("box0"), now=1).reason == "unknown round 'r9'"
    assert (
        store.offer("r1", update("intruder"), now=1).reason == "intruder is not a participant of r1"
    )


def test_only_one_round_is_open_and_sequence_numbers_grow(store: RoundStore) -> None:
    first = store.open_round(spec("r1", min_updates=1), now=0)
    with pytest.raises(ValueError, match="already open"):
        store.open_round(spec("r2"), now=0)
    store.offer("r1", update("box0"), now=1)
    store.advance(now=1)
    store.mark_aggregated("r1", 1)
    second = store.open_round(spec("r2"), now=2)
    assert (first.seq, second.seq) == (1, 2)
    assert store.get("r1").state == RoundState.AGGREGATED
    assert store.latest() == second


def test_kill_9_mid_round_loses_no_accepted_update(tmp_path: Path) -> None:
    db = tmp_path / "rounds.sqlite"
    writer = subprocess.Popen(
        [sys.executable, "-m", "tests.federation.round_writer", str(db), "40"],
        stdout=subprocess.PIPE,
        text=True,
    )
    acknowledged = []
    assert writer.stdout is not None
    for line in writer.stdout:
        verdict, node = line.split()
        assert verdict == "accepted"
        acknowledged.append(node)
        if len(acknowledged) == 12:
            break
    writer.send_signal(signal.SIGKILL)
    writer.wait(timeout=30)
    store = RoundStore(db)
    try:
        round_ = store.current()
        assert round_ is not None and round_.round_id == "r1"
        stored = {u.node_id: u for u in store.updates("r1")}
        assert set(acknowledged) <= set(stored)
        for node in acknowledged:
            i = int(node.removeprefix("box"))
            assert stored[node].blob == b"x" * 1000 * (i + 1)
            assert (
                store.offer("r1", StoredUpdate(node, f"{i:064x}", 10 + i, b""), now=0).verdict
                == Verdict.DUPLICATE
            )
        for i in range(40):
            store.offer("r1", StoredUpdate(f"box{i}", f"{i:064x}", 10 + i, b"y"), now=0)
        assert store.count("r1") == 40
        closed = store.advance(now=1)
        assert closed is not None and closed.state == RoundState.CLOSED
    finally:
        store.close()


def test_a_round_is_finished_in_recorded_steps(store: RoundStore) -> None:
    """closed -> version reserved -> aggregated -> published; unfinished() names what a
    restart must complete at each step, and nothing once it is published."""
    store.open_round(spec("r1", min_updates=1), now=0)
    store.offer("r1", update("box0"), now=1)
    store.advance(now=1)
    assert [r.round_id for r in store.unfinished()] == ["r1"]
    store.reserve_version("r1", 4)
    assert store.unrecorded_versions() == {4}
    assert store.get("r1").result_version == 4
    store.mark_aggregated("r1", 4)
    assert store.unrecorded_versions() == set()
    assert [r.state for r in store.unfinished()] == [RoundState.AGGREGATED]
    store.mark_published("r1", now=2)
    assert store.unfinished() == []
    assert store.get("r1").published_at == 2


def test_a_failed_round_is_not_left_unfinished(store: RoundStore) -> None:
    store.open_round(spec("r1", min_updates=1), now=0)
    store.offer("r1", update("box0"), now=1)
    store.advance(now=1)
    store.mark_failed("r1", "no update passed aggregation", now=2)
    assert store.unfinished() == []
    assert store.get("r1").state == RoundState.ABANDONED
    assert store.get("r1").close_reason == "no update passed aggregation"


def test_a_store_from_before_recorded_steps_is_migrated(tmp_path: Path) -> None:
    """Old rows had no result_version/published_at/phase and a flat LoRA plan with
    `frozen_a`; their aggregated rounds were published, their plans read in the new shape."""
    db = tmp_path / "rounds.sqlite"
    old = SCHEMA.replace(
        ",\n    result_version INTEGER,\n    published_at REAL,\n    phase TEXT", ""
    )
    assert old != SCHEMA
    with sqlite3.connect(db) as conn:
        conn.executescript(old)
        conn.execute(
            "INSERT INTO rounds VALUES ('r1', 1, 0, ?, '[\"box0\"]', 1, 1, 60, 0, 60, 0,"
            " 'aggregated', 5, '1 updates arrived')",
            (json.dumps(OLD_FLAT_PLAN),),
        )
    migrated = RoundStore(db)
    try:
        assert migrated.unfinished() == []
        round_ = migrated.get("r1")
        assert round_.published_at == 5
        assert round_.phase is None
        assert round_.plan.lora.freeze_a is False
        assert (round_.plan.lora.rank, round_.plan.lora.targets) == (8, ["attn_q", "attn_v"])
        assert round_.plan.learning_rate == 0.001
    finally:
        migrated.close()


OLD_FLAT_PLAN = {
    "rank": 8,
    "alpha": 16.0,
    "targets": ["attn_q", "attn_v"],
    "top_layers": 0,
    "seed": 0,
    "frozen_a": False,
    "learning_rate": 0.001,
    "epochs": 1,
    "max_steps": 0,
    "codec": {"values": "int8", "block": 64, "top_k_fraction": None, "compression": "zstd"},
    "secure_aggregation": None,
}


def test_a_report_reads_a_store_an_older_version_wrote_without_migrating_it(
    tmp_path: Path,
) -> None:
    """`appliance report` opens the round store read-only, so it cannot migrate it: the
    columns an old store lacks read as None."""
    db = tmp_path / "rounds.sqlite"
    old = SCHEMA.replace(
        ",\n    result_version INTEGER,\n    published_at REAL,\n    phase TEXT", ""
    )
    with sqlite3.connect(db) as conn:
        conn.executescript(old)
        conn.execute(
            "INSERT INTO rounds VALUES ('r1', 1, 0, ?, '[\"box0\"]', 1, 1, 60, 0, 60, 0,"
            " 'aggregated', 5, '1 updates arrived')",
            (json.dumps(OLD_FLAT_PLAN),),
        )
    reader = RoundStore(db, read_only=True)
    try:
        ((round_, closed_at),) = reader.history()
        assert (round_.round_id, round_.phase, round_.published_at, closed_at) == (
            "r1",
            None,
            None,
            5,
        )
        assert round_.plan.lora.rank == 8
    finally:
        reader.close()
    with sqlite3.connect(db) as conn:  # and nothing was written to it
        assert "phase" not in {row[1] for row in conn.execute("PRAGMA table_info(rounds)")}


def test_a_closed_round_keeps_its_protocol_phase(tmp_path: Path) -> None:
    """A secure round's committed/revealing phase is in the store (so status and a restart
    see it); it can only be set on a closed round and is kept with it."""
    store = RoundStore(tmp_path / "rounds.sqlite")
    try:
        store.open_round(spec(min_updates=1), 0.0)
        store.set_phase("r1", "committed")  # open: not a protocol phase yet
        assert store.get("r1").phase is None
        store.offer("r1", update("box0"), 1.0)
        assert store.advance(2.0).state == RoundState.CLOSED
        store.set_phase("r1", "revealing")
        assert store.get("r1").phase == "revealing"
        assert [r.phase for r in store.unfinished()] == ["revealing"]
        assert store.get("r1").plan == training_plan()  # the typed plan round-trips
    finally:
        store.close()
    reopened = RoundStore(tmp_path / "rounds.sqlite")
    try:
        assert reopened.get("r1").phase == "revealing"
    finally:
        reopened.close()
