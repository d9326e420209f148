"""How every SQLite store of the appliance opens its file: one place for durability.

Six stores (rounds, rollout, outbox, transfers, records, telemetry) each opened their file
with their own pragmas, so their durability differed by accident. A store now names what it
needs:

- `Durability.FULL`: WAL with `synchronous=FULL`. A committed transaction is on disk before
  the call returns, so what the store acknowledged to a peer (an update, an outbox entry)
  survives a power cut. For every store whose rows are promises.
- `Durability.NORMAL`: WAL with `synchronous=NORMAL`. A power cut may lose the last few
  transactions but never corrupts the file. For data that is re-read or re-sent anyway
  (telemetry samples, partial transfers that restart).

`read_only=True` opens an existing file with `mode=ro` (reports, `fleet status`): it never
creates the file or takes a write lock, and a missing file is a `StoreOpenError` that says
so instead of an empty database appearing.
"""

import sqlite3
from enum import StrEnum
from pathlib import Path


class Durability(StrEnum):
    """What a committed transaction survives (see the module docstring)."""

    FULL = "FULL"
    NORMAL = "NORMAL"


class StoreOpenError(Exception):
    """A store's file cannot be opened; the message names the file and the cause."""


def open_db(
    path: Path,
    *,
    durability: Durability = Durability.FULL,
    read_only: bool = False,
    shared_between_threads: bool = False,
    busy_timeout_s: float = 30.0,
    schema: str | None = None,
) -> sqlite3.Connection:
    """Open `path` in autocommit mode (transactions are explicit `BEGIN`s).

    `schema` (CREATE ... IF NOT EXISTS statements) is applied on a writable open.
    `shared_between_threads` allows use from a thread other than the opener's; the caller
    then serialises access itself (a lock, or one worker thread).
    """
    try:
        if read_only:
            if not path.exists():
                raise StoreOpenError(f"{path}: no such store (nothing has written it yet)")
            db = sqlite3.connect(
                f"file:{path}?mode=ro",
                uri=True,
                isolation_level=None,
                timeout=busy_timeout_s,
                check_same_thread=not shared_between_threads,
            )
            return db
        path.parent.mkdir(parents=True, exist_ok=True)
        db = sqlite3.connect(
            path,
            isolation_level=None,
            timeout=busy_timeout_s,
            check_same_thread=not shared_between_threads,
        )
        db.execute("PRAGMA journal_mode=WAL")
        db.execute(f"PRAGMA synchronous={durability.value}")
        if schema is not None:
            db.executescript(schema)
        return db
    except (OSError, sqlite3.Error) as exc:
        raise StoreOpenError(f"{path}: cannot open the store: {exc}") from None
