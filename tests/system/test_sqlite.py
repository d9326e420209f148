"""`open_db` on real files: the durability a store asks for is what SQLite runs with, a
reader never writes or creates, and every failure to open is a `StoreOpenError`."""

import sqlite3
import threading
from pathlib import Path

import pytest

from appliance.system.sqlite import Durability, StoreOpenError, open_db

SCHEMA = "CREATE TABLE IF NOT EXISTS rows (id INTEGER PRIMARY KEY, body TEXT NOT NULL);"
# PRAGMA synchronous reads back as a number: 1 is NORMAL, 2 is FULL.
SYNCHRONOUS = {Durability.NORMAL: 1, Durability.FULL: 2}


@pytest.mark.parametrize("durability", list(Durability))
def test_durability_sets_wal_and_synchronous(tmp_path: Path, durability: Durability) -> None:
    db = open_db(tmp_path / "nested" / "store.sqlite", durability=durability)
    try:
        assert db.execute("PRAGMA journal_mode").fetchone() == ("wal",)
        assert db.execute("PRAGMA synchronous").fetchone() == (SYNCHRONOUS[durability],)
    finally:
        db.close()


def test_schema_is_applied_and_the_connection_autocommits(tmp_path: Path) -> None:
    path = tmp_path / "store.sqlite"
    db = open_db(path, schema=SCHEMA)
    db.execute("INSERT INTO rows (body) VALUES ('kept')")
    assert not db.in_transaction  # no implicit BEGIN: stores write their own
    other = sqlite3.connect(path)
    try:
        assert other.execute("SELECT body FROM rows").fetchall() == [("kept",)]
    finally:
        other.close()
        db.close()


def test_read_only_refuses_writes(tmp_path: Path) -> None:
    path = tmp_path / "store.sqlite"
    open_db(path, schema=SCHEMA).close()
    reader = open_db(path, read_only=True)
    try:
        assert reader.execute("SELECT COUNT(*) FROM rows").fetchone() == (0,)
        with pytest.raises(sqlite3.OperationalError, match="readonly"):
            reader.execute("INSERT INTO rows (body) VALUES ('no')")
    finally:
        reader.close()


def test_read_only_does_not_create_a_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "absent" / "store.sqlite"
    with pytest.raises(StoreOpenError, match="no such store") as caught:
        open_db(path, read_only=True)
    assert str(path) in str(caught.value)
    assert not path.parent.exists()


def test_a_directory_in_place_of_the_file_is_a_store_open_error(tmp_path: Path) -> None:
    path = tmp_path / "store.sqlite"
    path.mkdir()
    with pytest.raises(StoreOpenError, match="cannot open the store") as caught:
        open_db(path, schema=SCHEMA)
    assert str(path) in str(caught.value)


def _errors_in_another_thread(db: sqlite3.Connection, sql: str) -> list[BaseException]:
    """Run `sql` on `db` from a new thread; what it raised, if anything."""
    errors: list[BaseException] = []

    def run() -> None:
        try:
            db.execute(sql)
        except Exception as exc:
            errors.append(exc)

    worker = threading.Thread(target=run)
    worker.start()
    worker.join()
    return errors


def test_shared_between_threads_works_from_another_thread(tmp_path: Path) -> None:
    db = open_db(tmp_path / "store.sqlite", schema=SCHEMA, shared_between_threads=True)
    try:
        assert _errors_in_another_thread(db, "INSERT INTO rows (body) VALUES ('worker')") == []
        assert db.execute("SELECT body FROM rows").fetchall() == [("worker",)]
    finally:
        db.close()


def test_an_unshared_connection_is_refused_in_another_thread(tmp_path: Path) -> None:
    """The counterpart of the test above: without the flag sqlite3 guards the connection,
    so that test shows the flag at work, not a lenient sqlite3."""
    db = open_db(tmp_path / "store.sqlite", schema=SCHEMA)
    try:
        (error,) = _errors_in_another_thread(db, "SELECT 1")
        assert isinstance(error, sqlite3.ProgrammingError)
    finally:
        db.close()
