"""The aggregator's round state in SQLite: what is open, what arrived, when it closes.

Everything is committed before it is acknowledged (WAL, synchronous=FULL), so `kill -9` and a
restart continue the same round with every accepted update, and an update offered twice (a
box retrying after a lost ack) counts once. A closed round is finished in steps the store
records (docs/crash-safety.md): its global adapter's version is reserved before the file is
written, `aggregated` means the file and the audit line exist, `published_at` that the
adapter is queued for the boxes; `unfinished()` names what a restart must complete.

A round protocol that needs steps after the close (secure aggregation: commit, then seed
reveals) records its `phase` on the closed round.

Closing rules: a round closes as soon as `min_updates` arrived; at its deadline it closes
with at least `min_updates_at_deadline`, otherwise it is extended once and then abandoned.
Late updates are refused with the reason.
"""

import json
from collections.abc import Iterator
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any

from appliance.federation.messages import TrainingPlan, TrainingPlanV1
from appliance.system.sqlite import open_db

SCHEMA = """
CREATE TABLE IF NOT EXISTS rounds (
    round_id TEXT PRIMARY KEY,
    seq INTEGER NOT NULL UNIQUE,
    global_version INTEGER NOT NULL,
    plan TEXT NOT NULL,
    participants TEXT NOT NULL,
    min_updates INTEGER NOT NULL,
    min_updates_at_deadline INTEGER NOT NULL,
    deadline_s REAL NOT NULL,
    opened_at REAL NOT NULL,
    deadline REAL NOT NULL,
    extended INTEGER NOT NULL DEFAULT 0,
    state TEXT NOT NULL CHECK (state IN ('open', 'closed', 'abandoned', 'aggregated')),
    closed_at REAL,
    close_reason TEXT,
    result_version INTEGER,
    published_at REAL,
    phase TEXT
);
CREATE TABLE IF NOT EXISTS updates (
    round_id TEXT NOT NULL REFERENCES rounds(round_id),
    node_id TEXT NOT NULL,
    sha256 TEXT NOT NULL,
    sample_count INTEGER NOT NULL,
    size_bytes INTEGER NOT NULL,
    received_at REAL NOT NULL,
    blob BLOB NOT NULL,
    PRIMARY KEY (round_id, node_id)
);
"""


ROUND_COLUMNS = (
    "round_id",
    "seq",
    "global_version",
    "plan",
    "participants",
    "min_updates",
    "min_updates_at_deadline",
    "deadline_s",
    "opened_at",
    "deadline",
    "extended",
    "state",
    "closed_at",
    "close_reason",
    "result_version",
    "published_at",
    "phase",
)
"""The columns `_round` reads, in its order."""

MIGRATIONS = (
    # stores written before rounds were finished in recorded steps: what was aggregated then
    # was published in the same step
    ("result_version", "ALTER TABLE rounds ADD COLUMN result_version INTEGER"),
    (
        "published_at",
        "ALTER TABLE rounds ADD COLUMN published_at REAL;"
        " UPDATE rounds SET published_at = closed_at WHERE state = 'aggregated'",
    ),
    ("phase", "ALTER TABLE rounds ADD COLUMN phase TEXT"),
)


class RoundState(StrEnum):
    """Where a round is in its life."""

    OPEN = "open"
    CLOSED = "closed"
    ABANDONED = "abandoned"
    AGGREGATED = "aggregated"


class Verdict(StrEnum):
    """What happened to an offered update."""

    ACCEPTED = "accepted"
    DUPLICATE = "duplicate"
    REJECTED = "rejected"


@dataclass(frozen=True)
class Offer:
    """The answer to an offered update, with the reason when it was refused."""

    verdict: Verdict
    reason: str = ""


@dataclass(frozen=True)
class RoundSpec:
    """What the aggregator decides when it opens a round."""

    round_id: str
    global_version: int
    plan: TrainingPlan
    participants: tuple[str, ...]
    min_updates: int
    min_updates_at_deadline: int
    deadline_s: float


@dataclass(frozen=True)
class Round:
    """One round as stored."""

    round_id: str
    seq: int
    global_version: int
    plan: TrainingPlan
    participants: tuple[str, ...]
    min_updates: int
    min_updates_at_deadline: int
    deadline_s: float
    opened_at: float
    deadline: float
    extended: bool
    state: RoundState
    close_reason: str | None
    result_version: int | None = None
    """The global adapter version this round makes (reserved before its file is written)."""
    published_at: float | None = None
    phase: str | None = None
    """Where the round protocol is in a closed round that needs more steps (a secure
    round's `committed`, `revealing`); None otherwise."""


@dataclass(frozen=True)
class StoredUpdate:
    """An accepted update as the aggregator keeps it."""

    node_id: str
    sha256: str
    sample_count: int
    blob: bytes


class RoundStore:
    """Round and update records in one SQLite file."""

    def __init__(self, path: Path, *, read_only: bool = False) -> None:
        """Open (and create or migrate) the store; `read_only` for reports, which never
        write and never create it."""
        self._db = open_db(path, read_only=read_only, schema=None if read_only else SCHEMA)
        if not read_only:
            self._migrate()
        present = {row[1] for row in self._db.execute("PRAGMA table_info(rounds)")}
        # a read-only open of a store an older version wrote (not migrated) reads the
        # columns it lacks as NULL
        self._columns = ", ".join(c if c in present else f"NULL AS {c}" for c in ROUND_COLUMNS)

    def _migrate(self) -> None:
        columns = {row[1] for row in self._db.execute("PRAGMA table_info(rounds)")}
        for column, statements in MIGRATIONS:
            if column not in columns:
                self._db.executescript(f"BEGIN; {statements}; COMMIT;")

    def close(self) -> None:
        """Close the database."""
        self._db.close()

    def open_round(self, spec: "RoundSpec", now: float) -> Round:
        """Start a round; only one may be open at a time."""
        if self.current() is not None:
            raise ValueError("a round is already open")
        seq = int(self._db.execute("SELECT COALESCE(MAX(seq), 0) + 1 FROM rounds").fetchone()[0])
        self._db.execute(
            "INSERT INTO rounds (round_id, seq, global_version, plan, participants, min_updates,"
            " min_updates_at_deadline, deadline_s, opened_at, deadline, state)"
            " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, 'open')",
            (
                spec.round_id,
                seq,
                spec.global_version,
                spec.plan.model_dump_json(),
                json.dumps(list(spec.participants)),
                spec.min_updates,
                spec.min_updates_at_deadline,
                spec.deadline_s,
                now,
                now + spec.deadline_s,
            ),
        )
        return self.get(spec.round_id)

    def get(self, round_id: str) -> Round:
        """A round by id (`KeyError` if unknown)."""
        row = self._db.execute(
            f"SELECT {self._columns} FROM rounds WHERE round_id = ?", (round_id,)
        ).fetchone()
        if row is None:
            raise KeyError(round_id)
        return _round(row)

    def current(self) -> Round | None:
        """The open round, if any."""
        row = self._db.execute(
            f"SELECT {self._columns} FROM rounds WHERE state = 'open'"
        ).fetchone()
        return _round(row) if row else None

    def latest(self) -> Round | None:
        """The most recent round in any state."""
        row = self._db.execute(
            f"SELECT {self._columns} FROM rounds ORDER BY seq DESC LIMIT 1"
        ).fetchone()
        return _round(row) if row else None

    def offer(self, round_id: str, update: StoredUpdate, now: float) -> Offer:
        """Record an update once; refuse it with a reason when it cannot count."""
        try:
            round_ = self.get(round_id)
        except KeyError:
            return Offer(Verdict.REJECTED, f"unknown round {round_id!r}")
        if update.node_id not in round_.participants:
            return Offer(Verdict.REJECTED, f"{update.node_id} is not a participant of {round_id}")
        existing = self._db.execute(
            "SELECT sha256 FROM updates WHERE round_id = ? AND node_id = ?",
            (round_id, update.node_id),
        ).fetchone()
        if existing is not None:
            if existing[0] == update.sha256:
                return Offer(Verdict.DUPLICATE, "already accepted; counted once")
            return Offer(Verdict.REJECTED, f"{update.node_id} already sent another update")
        if round_.state != RoundState.OPEN:
            return Offer(Verdict.REJECTED, f"late: round {round_id} is {round_.state.value}")
        self._db.execute(
            "INSERT INTO updates VALUES (?, ?, ?, ?, ?, ?, ?)",
            (
                round_id,
                update.node_id,
                update.sha256,
                update.sample_count,
                len(update.blob),
                now,
                update.blob,
            ),
        )
        return Offer(Verdict.ACCEPTED)

    def count(self, round_id: str) -> int:
        """Accepted updates of a round."""
        query = "SELECT COUNT(*) FROM updates WHERE round_id = ?"
        return int(self._db.execute(query, (round_id,)).fetchone()[0])

    def updates(self, round_id: str) -> Iterator[StoredUpdate]:
        """Accepted updates, one at a time (aggregation streams them)."""
        cursor = self._db.execute(
            "SELECT node_id, sha256, sample_count, blob FROM updates WHERE round_id = ?"
            " ORDER BY received_at, node_id",
            (round_id,),
        )
        for node_id, sha, samples, blob in cursor:
            yield StoredUpdate(node_id, sha, samples, bytes(blob))

    def advance(self, now: float) -> Round | None:
        """Apply the closing rules to the open round; returns it if its state changed."""
        round_ = self.current()
        if round_ is None:
            return None
        arrived = self.count(round_.round_id)
        if arrived >= round_.min_updates:
            return self._finish(round_, RoundState.CLOSED, f"{arrived} updates arrived", now)
        if now < round_.deadline:
            return None
        if arrived >= round_.min_updates_at_deadline:
            return self._finish(round_, RoundState.CLOSED, f"deadline with {arrived} updates", now)
        if not round_.extended:
            self._db.execute(
                "UPDATE rounds SET extended = 1, deadline = ? WHERE round_id = ?",
                (now + round_.deadline_s, round_.round_id),
            )
            return self.get(round_.round_id)
        reason = f"abandoned: {arrived} updates after an extended deadline"
        return self._finish(round_, RoundState.ABANDONED, reason, now)

    def unfinished(self) -> list[Round]:
        """Closed rounds whose global adapter is not yet recorded or not yet queued for the
        boxes (a crash stopped them half-way), oldest first."""
        rows = self._db.execute(
            f"SELECT {self._columns} FROM rounds WHERE state = 'closed'"
            " OR (state = 'aggregated' AND published_at IS NULL) ORDER BY seq"
        )
        return [_round(r) for r in rows]

    def reserve_version(self, round_id: str, version: int) -> None:
        """Name the version this round's global adapter gets, before its file is written."""
        self._db.execute(
            "UPDATE rounds SET result_version = ? WHERE round_id = ? AND state = 'closed'",
            (version, round_id),
        )

    def unrecorded_versions(self) -> set[int]:
        """Versions reserved by rounds not yet aggregated: their files may be half-made."""
        rows = self._db.execute(
            "SELECT result_version FROM rounds WHERE state = 'closed'"
            " AND result_version IS NOT NULL"
        )
        return {int(v) for (v,) in rows}

    def mark_aggregated(self, round_id: str, version: int) -> None:
        """The round's global adapter file and its audit line exist."""
        self._db.execute(
            "UPDATE rounds SET state = 'aggregated', result_version = ? WHERE round_id = ?",
            (version, round_id),
        )

    def set_phase(self, round_id: str, phase: str) -> None:
        """Record the round protocol's phase of a closed round (shown by status, kept across
        restarts)."""
        self._db.execute(
            "UPDATE rounds SET phase = ? WHERE round_id = ? AND state = 'closed'",
            (phase, round_id),
        )

    def mark_published(self, round_id: str, now: float) -> None:
        """The round's global adapter is queued for the boxes (the outbox delivers it)."""
        self._db.execute("UPDATE rounds SET published_at = ? WHERE round_id = ?", (now, round_id))

    def mark_failed(self, round_id: str, reason: str, now: float) -> None:
        """The round ends without a global adapter (no update passed, or its state was bad)."""
        self._db.execute(
            "UPDATE rounds SET state = 'abandoned', close_reason = ?, result_version = NULL,"
            " published_at = ? WHERE round_id = ?",
            (reason, now, round_id),
        )

    def _finish(self, round_: Round, state: RoundState, reason: str, now: float) -> Round:
        self._db.execute(
            "UPDATE rounds SET state = ?, closed_at = ?, close_reason = ? WHERE round_id = ?",
            (state.value, now, reason, round_.round_id),
        )
        return self.get(round_.round_id)

    # -- read-only queries (reports)

    def history(self) -> list[tuple[Round, float | None]]:
        """Every round, oldest first, with when it closed (None while open). `Round` leaves
        the close time out: only the report, which shows how long rounds took, needs it."""
        rows = self._db.execute(f"SELECT {self._columns}, closed_at FROM rounds ORDER BY seq")
        return [(_round(row[:-1]), row[-1]) for row in rows]

    def arrivals(self) -> dict[tuple[str, str], tuple[int, float]]:
        """(size in bytes, arrival time) of every accepted update by (round, box), without
        reading the blobs: a box's bytes up, and when its training of the round ended."""
        rows = self._db.execute("SELECT round_id, node_id, size_bytes, received_at FROM updates")
        return {(round_id, node): (size, at) for round_id, node, size, at in rows}


def stored_plan(text: str) -> TrainingPlan:
    """A round's plan as stored; plans written before the LoRA shape became one object
    (flat `rank` ... `frozen_a`) are read in the new shape."""
    if "lora" in json.loads(text):
        return TrainingPlan.model_validate_json(text)
    return TrainingPlanV1.model_validate_json(text).upgraded()


def _round(row: tuple[Any, ...]) -> Round:
    values = dict(zip(ROUND_COLUMNS, row, strict=True))
    return Round(
        round_id=values["round_id"],
        seq=values["seq"],
        global_version=values["global_version"],
        plan=stored_plan(values["plan"]),
        participants=tuple(json.loads(values["participants"])),
        min_updates=values["min_updates"],
        min_updates_at_deadline=values["min_updates_at_deadline"],
        deadline_s=values["deadline_s"],
        opened_at=values["opened_at"],
        deadline=values["deadline"],
        extended=bool(values["extended"]),
        state=RoundState(values["state"]),
        close_reason=values["close_reason"],
        result_version=values["result_version"],
        published_at=values["published_at"],
        phase=values["phase"],
    )
