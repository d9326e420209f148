"""Rollout state in SQLite (`rollout.sqlite`, next to the round store): survives restarts.

Tables: `rollouts` (one row per candidate global adapter: its canaries, the boxes waiting for
it, its stage and the reason of the decision), `canary_reports` (the canaries' evaluations,
kept as their JSON), `commands` (operator rollback/pin/unpin requests queued by the command
line for the running aggregator, with when they were sent) and `pins` (boxes the operator
pinned to a version). Writes are committed at once (`Durability.FULL`: a decision is on disk
before it is acted on), so the command line and the aggregator can use the file at the same
time.
"""

import json
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path

from appliance.federation.messages import Evaluation
from appliance.system.sqlite import Durability, open_db

STORE_FILE = "rollout.sqlite"

SCHEMA = """
CREATE TABLE IF NOT EXISTS rollouts (
    version INTEGER PRIMARY KEY,
    round_id TEXT NOT NULL,
    base_version INTEGER NOT NULL,
    canaries TEXT NOT NULL,
    others TEXT NOT NULL,
    stage TEXT NOT NULL CHECK (stage IN ('canary', 'promoted', 'rejected', 'rolled_back')),
    started_at REAL NOT NULL,
    decided_at REAL,
    reason TEXT
);
CREATE TABLE IF NOT EXISTS canary_reports (
    version INTEGER NOT NULL REFERENCES rollouts(version),
    node_id TEXT NOT NULL,
    report TEXT NOT NULL,
    received_at REAL NOT NULL,
    PRIMARY KEY (version, node_id)
);
CREATE TABLE IF NOT EXISTS commands (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    action TEXT NOT NULL CHECK (action IN ('rollback', 'pin', 'unpin')),
    nodes TEXT NOT NULL,
    version INTEGER,
    requested_at REAL NOT NULL,
    sent_at REAL,
    outcome TEXT
);
CREATE TABLE IF NOT EXISTS pins (
    node_id TEXT PRIMARY KEY,
    version INTEGER NOT NULL,
    since REAL NOT NULL
);
"""


class Stage(StrEnum):
    """Where a candidate global adapter is."""

    CANARY = "canary"
    PROMOTED = "promoted"
    REJECTED = "rejected"
    ROLLED_BACK = "rolled_back"


@dataclass(frozen=True)
class RolloutRow:
    """One candidate global adapter's rollout."""

    version: int
    round_id: str
    base_version: int
    canaries: tuple[str, ...]
    others: tuple[str, ...]
    stage: Stage
    started_at: float
    decided_at: float | None
    reason: str | None


@dataclass(frozen=True)
class CommandRow:
    """An operator's request; `nodes` empty means the whole fleet."""

    id: int
    action: str
    nodes: tuple[str, ...]
    version: int | None
    requested_at: float
    sent_at: float | None
    outcome: str | None


class RolloutStore:
    """The rollout tables in one SQLite file."""

    def __init__(self, path: Path, *, read_only: bool = False) -> None:
        """Open (and create) the store; `read_only` for `fleet status` and the report, which
        never write it and never create it (`StoreOpenError` when it is missing)."""
        self.path = path
        self._db = open_db(
            path,
            durability=Durability.FULL,
            read_only=read_only,
            schema=None if read_only else SCHEMA,
        )

    def close(self) -> None:
        """Close the database."""
        self._db.close()

    # -- rollouts -----------------------------------------------------------------------------

    def begin(  # noqa: PLR0917 (one row's columns)
        self,
        version: int,
        round_id: str,
        base_version: int,
        canaries: tuple[str, ...],
        others: tuple[str, ...],
        now: float,
    ) -> RolloutRow:
        """A candidate went to its canaries, or (no canaries: staged rollout off) straight to
        every box, promoted in the same statement so no crash can leave a candidate waiting
        for canaries it does not have. Idempotent: a restart keeps the first row."""
        stage, decided, reason = (
            ("canary", None, None)
            if canaries
            else (
                "promoted",
                now,
                "staged rollout off",
            )
        )
        self._db.execute(
            "INSERT OR IGNORE INTO rollouts (version, round_id, base_version, canaries, others,"
            " stage, started_at, decided_at, reason) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                version,
                round_id,
                base_version,
                json.dumps(canaries),
                json.dumps(others),
                stage,
                now,
                decided,
                reason,
            ),
        )
        row = self.get(version)
        assert row is not None
        return row

    def get(self, version: int) -> RolloutRow | None:
        """A rollout by version."""
        row = self._db.execute("SELECT * FROM rollouts WHERE version = ?", (version,)).fetchone()
        return _rollout(row) if row else None

    def pending(self) -> RolloutRow | None:
        """The candidate waiting for its canaries, if any."""
        row = self._db.execute(
            "SELECT * FROM rollouts WHERE stage = 'canary' ORDER BY version DESC LIMIT 1"
        ).fetchone()
        return _rollout(row) if row else None

    def all(self) -> list[RolloutRow]:
        """Every rollout, oldest first."""
        return [_rollout(r) for r in self._db.execute("SELECT * FROM rollouts ORDER BY version")]

    def decide(self, version: int, stage: Stage, reason: str, now: float) -> None:
        """Record a decision (promoted, rejected, rolled back) and why."""
        self._db.execute(
            "UPDATE rollouts SET stage = ?, decided_at = ?, reason = ? WHERE version = ?",
            (stage.value, now, reason, version),
        )

    def blocked(self) -> set[int]:
        """Versions that must not be served or built on (rejected or rolled back)."""
        rows = self._db.execute(
            "SELECT version FROM rollouts WHERE stage IN ('rejected', 'rolled_back')"
        )
        return {int(v) for (v,) in rows}

    def highest_version(self) -> int:
        """The highest version ever rolled out (0 if none)."""
        return int(self._db.execute("SELECT COALESCE(MAX(version), 0) FROM rollouts").fetchone()[0])

    def promoted_before(self, version: int) -> int:
        """The newest promoted version below `version` (0: the initial adapter)."""
        row = self._db.execute(
            "SELECT MAX(version) FROM rollouts WHERE stage = 'promoted' AND version < ?",
            (version,),
        ).fetchone()
        return int(row[0]) if row and row[0] is not None else 0

    def latest_promoted(self) -> RolloutRow | None:
        """The newest promoted rollout."""
        row = self._db.execute(
            "SELECT * FROM rollouts WHERE stage = 'promoted' ORDER BY version DESC LIMIT 1"
        ).fetchone()
        return _rollout(row) if row else None

    # -- canary reports -----------------------------------------------------------------------

    def add_report(self, evaluation: Evaluation, now: float) -> bool:
        """Keep a canary's first evaluation of a version; False if it was already there."""
        cursor = self._db.execute(
            "INSERT OR IGNORE INTO canary_reports VALUES (?, ?, ?, ?)",
            (evaluation.global_version, evaluation.node_id, evaluation.model_dump_json(), now),
        )
        return cursor.rowcount == 1

    def reports(self, version: int) -> dict[str, Evaluation]:
        """The canaries' evaluations of a version."""
        rows = self._db.execute(
            "SELECT node_id, report FROM canary_reports WHERE version = ?", (version,)
        )
        return {node: Evaluation.model_validate_json(body) for node, body in rows}

    # -- operator commands and pins -----------------------------------------------------------

    def queue_command(
        self, action: str, nodes: tuple[str, ...], version: int | None, now: float
    ) -> int:
        """Queue an operator request for the aggregator; returns its id."""
        cursor = self._db.execute(
            "INSERT INTO commands (action, nodes, version, requested_at) VALUES (?, ?, ?, ?)",
            (action, json.dumps(nodes), version, now),
        )
        return int(cursor.lastrowid or 0)

    def unsent_commands(self) -> list[CommandRow]:
        """Queued requests not yet sent, oldest first."""
        rows = self._db.execute("SELECT * FROM commands WHERE sent_at IS NULL ORDER BY id")
        return [_command(r) for r in rows]

    def commands(self, limit: int = 20) -> list[CommandRow]:
        """The most recent requests, newest first."""
        rows = self._db.execute("SELECT * FROM commands ORDER BY id DESC LIMIT ?", (limit,))
        return [_command(r) for r in rows]

    def command_sent(self, command_id: int, outcome: str, now: float) -> None:
        """Mark a request as handled, with what was done."""
        self._db.execute(
            "UPDATE commands SET sent_at = ?, outcome = ? WHERE id = ?", (now, outcome, command_id)
        )

    def pin(self, node_id: str, version: int, now: float) -> None:
        """Remember that a box is pinned."""
        self._db.execute(
            "INSERT INTO pins VALUES (?, ?, ?) ON CONFLICT (node_id) DO UPDATE SET "
            "version = excluded.version, since = excluded.since",
            (node_id, version, now),
        )

    def unpin(self, node_id: str) -> None:
        """Forget a box's pin."""
        self._db.execute("DELETE FROM pins WHERE node_id = ?", (node_id,))

    def pins(self) -> dict[str, int]:
        """Pinned boxes and their versions."""
        return {n: int(v) for n, v in self._db.execute("SELECT node_id, version FROM pins")}


def _rollout(row: tuple[object, ...]) -> RolloutRow:
    version, round_id, base, canaries, others, stage, started, decided, reason = row
    return RolloutRow(
        int(version),  # type: ignore[call-overload]
        str(round_id),
        int(base),  # type: ignore[call-overload]
        tuple(json.loads(str(canaries))),
        tuple(json.loads(str(others))),
        Stage(str(stage)),
        float(started),  # type: ignore[arg-type]
        None if decided is None else float(decided),  # type: ignore[arg-type]
        None if reason is None else str(reason),
    )


def _command(row: tuple[object, ...]) -> CommandRow:
    cid, action, nodes, version, requested, sent, outcome = row
    return CommandRow(
        int(cid),  # type: ignore[call-overload]
        str(action),
        tuple(json.loads(str(nodes))),
        None if version is None else int(version),  # type: ignore[call-overload]
        float(requested),  # type: ignore[arg-type]
        None if sent is None else float(sent),  # type: ignore[arg-type]
        None if outcome is None else str(outcome),
    )
