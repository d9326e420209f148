"""The durable outbox: everything a node must still deliver, on disk before it is sent.

paho keeps unacknowledged QoS 1 messages in RAM only, so a process kill or a long broker
outage loses them. Every outgoing message and artifact is therefore committed to SQLite (WAL,
`synchronous=FULL`) first and deleted only when delivery is confirmed: by the broker's PUBACK
for a message, by every recipient's signed ack for an artifact.

The outbox is bounded in bytes and age. When a new entry does not fit, entries are dropped
lowest priority first, oldest first within a priority; the new entry itself is dropped if it
ranks lowest. Every drop is logged with its reason and counted (`dropped.full`,
`dropped.expired`).

An artifact's bytes live in a file beside the database (`<outbox>.blobs/<artifact_id>`),
written to a temporary name, fsynced and renamed before its row is committed; the row is the
commit point. Measured on a 50 MB artifact, SQLite BLOBs cost 0.7 s to store, 0.2 s to read
back chunk by chunk and 0.2 s to delete; a file costs a few hundredths of that. A file with
no row (a crash between the two steps) is deleted when the outbox is opened.
"""

import hashlib
import json
import logging
import os
import sqlite3
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from enum import IntEnum
from pathlib import Path

from appliance.config.transfer import OutboxSettings
from appliance.errors import ApplianceError
from appliance.system.sqlite import Durability, StoreOpenError, open_db
from appliance.transport.rejects import Counters

log = logging.getLogger(__name__)

MIB = 1024 * 1024
_COPY_BYTES = 4 * MIB

_SCHEMA = """
CREATE TABLE IF NOT EXISTS entries (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    kind TEXT NOT NULL CHECK (kind IN ('message', 'artifact')),
    priority INTEGER NOT NULL,
    created REAL NOT NULL,
    size INTEGER NOT NULL,
    topic TEXT,
    artifact_id TEXT UNIQUE,
    artifact_kind TEXT,
    recipients TEXT,
    acked TEXT NOT NULL DEFAULT '[]',
    meta TEXT,
    sha256 TEXT,
    manifest BLOB,
    data BLOB
);
CREATE INDEX IF NOT EXISTS entries_eviction ON entries (priority, seq);
"""


class Priority(IntEnum):
    """Eviction order when the outbox is full: LOW goes first."""

    LOW = 0
    NORMAL = 5
    HIGH = 9


class OutboxError(ApplianceError):
    """The outbox database cannot be opened or written."""


@dataclass(frozen=True)
class MessageEntry:
    seq: int
    topic: str
    payload: bytes


@dataclass(frozen=True)
class ArtifactEntry:
    """An artifact waiting for its recipients' acks (its bytes stay in the database)."""

    seq: int
    artifact_id: str
    kind: str
    size: int
    sha256: str
    recipients: tuple[str, ...]
    acked: frozenset[str]
    meta: dict[str, str | int | float | bool]
    created: float
    manifest: bytes | None


class Outbox:
    """A bounded, prioritised, crash-safe queue in one SQLite file. Thread-safe."""

    def __init__(self, path: Path, settings: OutboxSettings, counters: Counters | None = None):
        self.path = path
        self.settings = settings
        self.counters = counters or Counters()
        self._lock = threading.Lock()
        self.blob_dir = path.with_name(path.name + ".blobs")
        try:
            self.blob_dir.mkdir(parents=True, exist_ok=True)
            # FULL: an entry is a promise (the caller goes on as if it were sent). Shared:
            # application threads and the worker use it, serialised by `_lock`.
            self._db = open_db(
                path, durability=Durability.FULL, shared_between_threads=True, schema=_SCHEMA
            )
        except OSError as exc:
            raise OutboxError(f"{path}: cannot open the outbox: {exc}") from None
        except StoreOpenError as exc:
            raise OutboxError(f"cannot open the outbox: {exc}") from None
        self._remove_orphan_blobs()

    def _remove_orphan_blobs(self) -> None:
        known = {
            aid
            for (aid,) in self._db.execute(
                "SELECT artifact_id FROM entries WHERE kind = 'artifact'"
            )
        }
        for blob in self.blob_dir.iterdir():
            if blob.name not in known:
                blob.unlink(missing_ok=True)

    def _blob(self, artifact_id: str) -> Path:
        return self.blob_dir / artifact_id

    @property
    def max_bytes(self) -> int:
        return self.settings.max_mb * MIB

    def close(self) -> None:
        with self._lock:
            self._db.close()

    # ------------------------------------------------------------ writing
    def put_message(
        self, topic: str, payload: bytes, priority: int = Priority.NORMAL
    ) -> int | None:
        """Queue one message; its sequence number, or None if it was dropped (outbox full)."""
        with self._transaction():
            if not self._make_room(len(payload), priority, f"message on {topic}"):
                return None
            cursor = self._db.execute(
                "INSERT INTO entries (kind, priority, created, size, topic, data)"
                " VALUES ('message', ?, ?, ?, ?, ?)",
                (priority, time.time(), len(payload), topic, payload),
            )
        return _rowid(cursor)

    def put_artifact(
        self,
        artifact_id: str,
        kind: str,
        data: bytes | Path,
        recipients: Sequence[str],
        *,
        priority: int = Priority.NORMAL,
        meta: dict[str, str | int | float | bool] | None = None,
    ) -> ArtifactEntry | None:
        """Copy an artifact (bytes or a file) into the outbox; None if dropped (full)."""
        size = len(data) if isinstance(data, bytes) else data.stat().st_size
        blob = self._blob(artifact_id)
        digest = _copy_durably(data, blob)
        created = time.time()
        try:
            with self._transaction():
                if not self._make_room(size, priority, f"{kind} artifact {artifact_id}"):
                    blob.unlink()
                    return None
                cursor = self._db.execute(
                    "INSERT INTO entries (kind, priority, created, size, artifact_id,"
                    " artifact_kind, recipients, meta, sha256)"
                    " VALUES ('artifact', ?, ?, ?, ?, ?, ?, ?, ?)",
                    (
                        priority,
                        created,
                        size,
                        artifact_id,
                        kind,
                        json.dumps(list(recipients)),
                        json.dumps(meta or {}),
                        digest,
                    ),
                )
        except BaseException:
            blob.unlink(missing_ok=True)
            raise
        seq = _rowid(cursor)
        return ArtifactEntry(
            seq,
            artifact_id,
            kind,
            size,
            digest,
            tuple(recipients),
            frozenset(),
            dict(meta or {}),
            created,
            None,
        )

    def _make_room(self, size: int, priority: int, what: str) -> bool:
        """Evict lower-or-equal priority, older entries until `size` fits; False: drop new."""
        self._expire_locked()
        if size > self.max_bytes:
            self._drop_new(what, f"larger ({size} bytes) than the whole outbox")
            return False
        used = self._used_bytes()
        while used + size > self.max_bytes:
            victim = self._db.execute(
                "SELECT seq, priority, size, kind, COALESCE(topic, artifact_id) FROM entries"
                " ORDER BY priority, seq LIMIT 1"
            ).fetchone()
            if victim is None or victim[1] > priority:
                self._drop_new(what, "it has the lowest priority")
                return False
            seq, victim_priority, victim_size, kind, name = victim
            self._delete(seq)
            used -= victim_size
            self.counters.inc("dropped.full")
            log.warning(
                "outbox full (%d MiB): dropped %s %s (priority %d, %d bytes) to make room",
                self.settings.max_mb,
                kind,
                name,
                victim_priority,
                victim_size,
            )
        return True

    def _drop_new(self, what: str, why: str) -> None:
        self.counters.inc("dropped.full")
        log.warning("outbox full (%d MiB): dropped new %s: %s", self.settings.max_mb, what, why)

    # ------------------------------------------------------------ reading
    def messages(self, exclude: set[int], limit: int) -> list[MessageEntry]:
        """The oldest queued messages not in `exclude` (those already in flight)."""
        with self._lock:
            rows = self._db.execute(
                "SELECT seq, topic, data FROM entries WHERE kind = 'message' ORDER BY seq LIMIT ?",
                (limit + len(exclude),),
            ).fetchall()
        return [MessageEntry(s, t, bytes(d)) for s, t, d in rows if s not in exclude][:limit]

    def artifacts(self) -> list[ArtifactEntry]:
        """Every artifact still waiting for acks, oldest first."""
        with self._lock:
            rows = self._db.execute(
                "SELECT seq, artifact_id, artifact_kind, size, sha256, recipients, acked, meta,"
                " created, manifest FROM entries WHERE kind = 'artifact' ORDER BY seq"
            ).fetchall()
        return [
            ArtifactEntry(
                seq,
                aid,
                kind,
                size,
                sha,
                tuple(json.loads(recipients)),
                frozenset(json.loads(acked)),
                json.loads(meta),
                created,
                None if manifest is None else bytes(manifest),
            )
            for seq, aid, kind, size, sha, recipients, acked, meta, created, manifest in rows
        ]

    def holds_artifact(self, kind: str, meta: dict[str, str | int | float | bool]) -> bool:
        """Whether an artifact of `kind` whose meta includes `meta` still waits for acks (a
        daemon restarted after a crash asks before it queues the same thing again)."""
        with self._lock:
            rows = self._db.execute(
                "SELECT meta FROM entries WHERE kind = 'artifact' AND artifact_kind = ?", (kind,)
            ).fetchall()
        return any(meta.items() <= json.loads(row).items() for (row,) in rows)

    def read(self, artifact_id: str, offset: int, length: int) -> bytes | None:
        """`length` bytes of an artifact from `offset`; None if the entry is gone."""
        try:
            fd = os.open(self._blob(artifact_id), os.O_RDONLY)
        except FileNotFoundError:
            return None
        try:
            return os.pread(fd, length, offset)
        finally:
            os.close(fd)

    def contains(self, seq: int) -> bool:
        with self._lock:
            row = self._db.execute("SELECT 1 FROM entries WHERE seq = ?", (seq,)).fetchone()
        return row is not None

    def used_bytes(self) -> int:
        with self._lock:
            return self._used_bytes()

    def count(self) -> int:
        with self._lock:
            return int(self._db.execute("SELECT COUNT(*) FROM entries").fetchone()[0])

    def _used_bytes(self) -> int:
        return int(self._db.execute("SELECT COALESCE(SUM(size), 0) FROM entries").fetchone()[0])

    # ------------------------------------------------------------ updating
    def set_manifest(self, seq: int, manifest: bytes) -> None:
        with self._transaction():
            self._db.execute("UPDATE entries SET manifest = ? WHERE seq = ?", (manifest, seq))

    def record_ack(self, seq: int, receiver: str) -> bool:
        """Note `receiver`'s ack; delete the artifact once all recipients acked (True then)."""
        with self._transaction():
            row = self._db.execute(
                "SELECT recipients, acked FROM entries WHERE seq = ?", (seq,)
            ).fetchone()
            if row is None:
                return True
            recipients, acked = set(json.loads(row[0])), set(json.loads(row[1])) | {receiver}
            if recipients <= acked:
                self._delete(seq)
                return True
            self._db.execute(
                "UPDATE entries SET acked = ? WHERE seq = ?", (json.dumps(sorted(acked)), seq)
            )
            return False

    def remove(self, seq: int) -> None:
        with self._transaction():
            self._delete(seq)

    def _delete(self, seq: int) -> None:
        """Delete a row (inside a transaction) and its artifact file, if any."""
        row = self._db.execute("SELECT artifact_id FROM entries WHERE seq = ?", (seq,)).fetchone()
        self._db.execute("DELETE FROM entries WHERE seq = ?", (seq,))
        if row is not None and row[0] is not None:
            # Unlinked before the commit: a crash in between leaves a row without a file,
            # which `read` reports as gone; the reverse would leak the file.
            self._blob(row[0]).unlink(missing_ok=True)

    def expire(self) -> int:
        """Drop entries older than `max_age_s`; how many were dropped."""
        with self._transaction():
            return self._expire_locked()

    def _expire_locked(self) -> int:
        cutoff = time.time() - self.settings.max_age_s
        rows = self._db.execute(
            "SELECT seq, kind, COALESCE(topic, artifact_id), created FROM entries"
            " WHERE created < ?",
            (cutoff,),
        ).fetchall()
        for seq, kind, name, created in rows:
            self._delete(seq)
            self.counters.inc("dropped.expired")
            log.warning(
                "outbox: dropped %s %s: not delivered within %d s (queued %.0f s ago)",
                kind,
                name,
                self.settings.max_age_s,
                time.time() - created,
            )
        return len(rows)

    @contextmanager
    def _transaction(self) -> Iterator[None]:
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")


def _copy_durably(data: bytes | Path, target: Path) -> str:
    """Write `data` to `target` via a fsynced temporary file; its sha256 (hex)."""
    digest = hashlib.sha256()
    tmp = target.with_name(target.name + ".tmp")
    try:
        with tmp.open("wb") as out:
            if isinstance(data, bytes):
                out.write(data)
                digest.update(data)
            else:
                with data.open("rb") as source:
                    while block := source.read(_COPY_BYTES):
                        out.write(block)
                        digest.update(block)
            out.flush()
            os.fsync(out.fileno())
        tmp.rename(target)
        dir_fd = os.open(target.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return digest.hexdigest()


def _rowid(cursor: sqlite3.Cursor) -> int:
    if cursor.lastrowid is None:
        raise OutboxError("SQLite returned no row id for a new outbox entry")
    return cursor.lastrowid
