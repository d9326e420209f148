"""The aggregator's fleet health store: SQLite (WAL), one file, read by `fleet status` too.

Tables: `nodes` (online state per box and when the host last heard from it), `latest`
(current value of every metric, numbers and text), `samples` (numeric history, raw),
`rollups` (min/mean/max per bucket for samples older than the raw retention), `alerts`
(firing and resolved) and `host` (one row: the primary host's heartbeat, so a reader can
tell fresh data from the last words of a host that stopped). Writes from the host are
batched into one transaction per tick (`commit()`): at thousands of messages a second a
commit (or even a statement) per message would be the bottleneck: rows wait in memory and
go in with one `executemany` per table per batch. Readers see the last committed tick.
"""

import math
import sqlite3
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from appliance.errors import ApplianceError
from appliance.system.sqlite import Durability, StoreOpenError, open_db
from appliance.telemetry.sparkplug import Value

_SCHEMA = """
CREATE TABLE IF NOT EXISTS nodes (
    node TEXT PRIMARY KEY,
    online INTEGER NOT NULL,
    bdseq INTEGER,
    born_ms INTEGER,
    last_seen_ms INTEGER NOT NULL,
    offline_since_ms INTEGER,
    offline_reason TEXT
);
CREATE TABLE IF NOT EXISTS latest (
    node TEXT NOT NULL,
    metric TEXT NOT NULL,
    number REAL,
    text TEXT,
    ts_ms INTEGER NOT NULL,
    PRIMARY KEY (node, metric)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS samples (
    node TEXT NOT NULL,
    metric TEXT NOT NULL,
    ts_ms INTEGER NOT NULL,
    value REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS samples_by_time ON samples (ts_ms);
CREATE TABLE IF NOT EXISTS rollups (
    node TEXT NOT NULL,
    metric TEXT NOT NULL,
    bucket_ms INTEGER NOT NULL,
    count INTEGER NOT NULL,
    min REAL NOT NULL,
    max REAL NOT NULL,
    mean REAL NOT NULL,
    PRIMARY KEY (node, metric, bucket_ms)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS alerts (
    node TEXT NOT NULL,
    rule TEXT NOT NULL,
    subject TEXT NOT NULL,
    severity TEXT NOT NULL,
    message TEXT NOT NULL,
    since_ms INTEGER NOT NULL,
    resolved_ms INTEGER,
    PRIMARY KEY (node, rule, subject, since_ms)
);
CREATE TABLE IF NOT EXISTS host (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    host_id TEXT NOT NULL,
    alive_ms INTEGER NOT NULL,
    connected INTEGER NOT NULL,
    stopped_ms INTEGER
);
"""


@dataclass(frozen=True)
class NodeRow:
    node: str
    online: bool
    bdseq: int | None
    last_seen_ms: int
    offline_since_ms: int | None
    offline_reason: str | None


@dataclass(frozen=True)
class HostRow:
    """The primary host's heartbeat: refreshed every tick while it runs."""

    host_id: str
    alive_ms: int
    connected: bool  # to the broker: a host that is cut off hears from no box
    stopped_ms: int | None  # set by a clean stop, cleared by the next heartbeat


@dataclass(frozen=True)
class AlertRow:
    node: str
    rule: str
    subject: str
    severity: str
    message: str
    since_ms: int
    resolved_ms: int | None


def as_number(value: Value) -> float | None:
    """A stored number: bools as 0/1, finite numbers as floats, anything else None."""
    if isinstance(value, bool):
        return 1.0 if value else 0.0
    if isinstance(value, int | float) and math.isfinite(value):
        return float(value)
    return None


def _open_reader(path: Path) -> sqlite3.Connection:
    """A read-only connection; an operator who asks before the aggregator ever ran is told
    so, rather than shown an SQLite error (or handed a new, empty store)."""
    try:
        return open_db(path, read_only=True)
    except StoreOpenError as exc:
        if path.exists():
            raise ApplianceError(f"fleet health store unreadable: {exc}") from exc
        raise ApplianceError(
            f"no fleet health store at {path}; has the aggregator run yet?"
        ) from exc


class FleetStore:
    """One SQLite connection; the host writes through it from one thread."""

    def __init__(self, path: Path, *, read_only: bool = False) -> None:
        """Open (and create) the store; `read_only` for `fleet status` and `/metrics`,
        which never write it and never create it."""
        self.path = path
        self._samples: list[tuple[str, str, int, float]] = []
        self._latest: list[tuple[str, str, float | None, str | None, int]] = []
        self._seen: dict[str, int] = {}
        if read_only:
            self._db = _open_reader(path)
            return
        # NORMAL: a power cut may lose the last ticks' samples (the next reports replace
        # them) but never corrupts the file. Shared: the host writes from the MQTT client's
        # worker thread, not the thread that opened the store.
        self._db = open_db(
            path, durability=Durability.NORMAL, shared_between_threads=True, schema=_SCHEMA
        )
        self._db.execute("BEGIN")

    def close(self) -> None:
        if self._db.in_transaction:
            self._flush()
            self._db.execute("COMMIT")
        self._db.close()

    def commit(self) -> None:
        """Write the batch, end it (readers see it) and start the next one."""
        self._flush()
        self._db.execute("COMMIT")
        self._db.execute("BEGIN")

    def _flush(self) -> None:
        """Rows of `record` and `node_seen` wait here: one statement per batch, not per row."""
        self._db.executemany("INSERT INTO samples VALUES (?, ?, ?, ?)", self._samples)
        self._db.executemany(
            "INSERT INTO latest VALUES (?, ?, ?, ?, ?) ON CONFLICT (node, metric) DO UPDATE SET "
            "number = excluded.number, text = excluded.text, ts_ms = excluded.ts_ms "
            "WHERE excluded.ts_ms >= latest.ts_ms",
            self._latest,
        )
        self._db.executemany(
            "UPDATE nodes SET last_seen_ms = ? WHERE node = ?",
            [(seen, node) for node, seen in self._seen.items()],
        )
        self._samples, self._latest, self._seen = [], [], {}

    # ------------------------------------------------------------ writes
    def node_online(self, node: str, bdseq: int, now_ms: int) -> None:
        self._db.execute(
            "INSERT INTO nodes VALUES (?, 1, ?, ?, ?, NULL, NULL) ON CONFLICT (node) DO UPDATE "
            "SET online = 1, bdseq = excluded.bdseq, born_ms = excluded.born_ms, "
            "last_seen_ms = excluded.last_seen_ms, offline_since_ms = NULL, offline_reason = NULL",
            (node, bdseq, now_ms, now_ms),
        )

    def node_seen(self, node: str, now_ms: int) -> None:
        self._seen[node] = now_ms

    def host_heartbeat(self, host_id: str, now_ms: int, *, connected: bool) -> None:
        """One row, overwritten: it goes in with the tick's batch, so a reader that sees a
        fresh heartbeat also sees everything the host stored before it."""
        self._db.execute(
            "INSERT INTO host VALUES (1, ?, ?, ?, NULL) ON CONFLICT (id) DO UPDATE SET "
            "host_id = excluded.host_id, alive_ms = excluded.alive_ms, "
            "connected = excluded.connected, stopped_ms = NULL",
            (host_id, now_ms, int(connected)),
        )

    def host_stopped(self, host_id: str, now_ms: int) -> None:
        """A clean stop: readers say "stopped" at once instead of waiting for staleness."""
        self.host_heartbeat(host_id, now_ms, connected=False)
        self._db.execute("UPDATE host SET stopped_ms = ?", (now_ms,))

    def node_offline(self, node: str, reason: str, now_ms: int) -> None:
        self._db.execute(
            "UPDATE nodes SET online = 0, offline_since_ms = ?, offline_reason = ? "
            "WHERE node = ? AND online = 1",
            (now_ms, reason, node),
        )

    def record(
        self, node: str, values: Iterable[tuple[str, Value, int]], *, historical: bool = False
    ) -> None:
        """Store `(metric, value, timestamp_ms)`; historical values skip `latest`."""
        for name, value, ts in values:
            number = as_number(value)
            if number is not None:
                self._samples.append((node, name, ts, number))
            if not historical:
                text = value if isinstance(value, str) else None
                self._latest.append((node, name, number, text, ts))

    def alert_fired(self, alert: AlertRow) -> None:
        self._db.execute(
            "INSERT OR IGNORE INTO alerts VALUES (?, ?, ?, ?, ?, ?, NULL)",
            (alert.node, alert.rule, alert.subject, alert.severity, alert.message, alert.since_ms),
        )

    def alert_resolved(self, node: str, rule: str, subject: str, now_ms: int) -> None:
        self._db.execute(
            "UPDATE alerts SET resolved_ms = ? WHERE node = ? AND rule = ? AND subject = ? "
            "AND resolved_ms IS NULL",
            (now_ms, node, rule, subject),
        )

    def compact(self, now_ms: int, raw_keep_ms: int, bucket_ms: int, rollup_keep_ms: int) -> int:
        """Fold raw samples older than `raw_keep_ms` into buckets; drop expired rows.

        Returns the number of raw samples folded. Buckets already present (a sample that
        arrived late, as historical data) are merged by count-weighted mean.
        """
        self._flush()
        cutoff = now_ms - raw_keep_ms
        self._db.execute(
            "INSERT INTO rollups SELECT node, metric, (ts_ms / ?) * ?, COUNT(*), MIN(value), "
            "MAX(value), AVG(value) FROM samples WHERE ts_ms < ? GROUP BY 1, 2, 3 "
            "ON CONFLICT (node, metric, bucket_ms) DO UPDATE SET "
            "mean = (rollups.mean * rollups.count + excluded.mean * excluded.count) "
            "/ (rollups.count + excluded.count), count = rollups.count + excluded.count, "
            "min = MIN(rollups.min, excluded.min), max = MAX(rollups.max, excluded.max)",
            (bucket_ms, bucket_ms, cutoff),
        )
        folded = self._db.execute("DELETE FROM samples WHERE ts_ms < ?", (cutoff,)).rowcount
        expired = now_ms - rollup_keep_ms
        self._db.execute("DELETE FROM rollups WHERE bucket_ms < ?", (expired,))
        self._db.execute("DELETE FROM alerts WHERE resolved_ms < ?", (expired,))
        return folded

    # ------------------------------------------------------------ reads
    def nodes(self) -> list[NodeRow]:
        rows = self._db.execute(
            "SELECT node, online, bdseq, last_seen_ms, offline_since_ms, offline_reason "
            "FROM nodes ORDER BY node"
        )
        return [NodeRow(r[0], bool(r[1]), r[2], r[3], r[4], r[5]) for r in rows]

    def host(self) -> HostRow | None:
        """The heartbeat; None if no host wrote one (a store from before it was kept)."""
        try:
            row = self._db.execute(
                "SELECT host_id, alive_ms, connected, stopped_ms FROM host"
            ).fetchone()
        except sqlite3.OperationalError:  # read-only reader of a store without the table
            return None
        return None if row is None else HostRow(row[0], row[1], bool(row[2]), row[3])

    def latest(self, node: str) -> dict[str, float | str | None]:
        rows = self._db.execute("SELECT metric, number, text FROM latest WHERE node = ?", (node,))
        return {metric: text if text is not None else number for metric, number, text in rows}

    def latest_numbers(self) -> list[tuple[str, str, float]]:
        rows = self._db.execute(
            "SELECT node, metric, number FROM latest WHERE number IS NOT NULL ORDER BY 1, 2"
        )
        return list(rows)

    def active_alerts(self, node: str | None = None) -> list[AlertRow]:
        query = "SELECT * FROM alerts WHERE resolved_ms IS NULL"
        args: tuple[str, ...] = ()
        if node is not None:
            query, args = query + " AND node = ?", (node,)
        return [AlertRow(*row) for row in self._db.execute(query + " ORDER BY 1, 2, 3", args)]

    def samples(self, node: str, metric: str) -> list[tuple[int, float]]:
        rows = self._db.execute(
            "SELECT ts_ms, value FROM samples WHERE node = ? AND metric = ? ORDER BY ts_ms",
            (node, metric),
        )
        return list(rows)

    def rollups(self, node: str, metric: str) -> list[tuple[int, int, float, float, float]]:
        rows = self._db.execute(
            "SELECT bucket_ms, count, min, max, mean FROM rollups WHERE node = ? AND metric = ? "
            "ORDER BY bucket_ms",
            (node, metric),
        )
        return list(rows)
