"""The durable outbox on its own: persistence, bounds, priorities, expiry."""

import logging
import sqlite3
import time
from pathlib import Path

import pytest

from appliance.config.transfer import OutboxSettings
from appliance.transport.outbox import MIB, Outbox, OutboxError, Priority


def _outbox(path: Path, max_mb: int = 1, max_age_s: int = 3600) -> Outbox:
    return Outbox(path / "outbox.sqlite", OutboxSettings(max_mb=max_mb, max_age_s=max_age_s))


def test_entries_survive_reopen_in_wal_mode(tmp_path: Path) -> None:
    outbox = _outbox(tmp_path)
    first = outbox.put_message("a/1", b"one")
    entry = outbox.put_artifact("ab" * 16, "update", b"x" * 1000, ["agg"], priority=Priority.HIGH)
    outbox.close()
    reopened = _outbox(tmp_path)
    assert [m.payload for m in reopened.messages(set(), 10)] == [b"one"]
    assert reopened.messages({first or 0}, 10) == []
    (artifact,) = reopened.artifacts()
    assert entry is not None
    assert artifact.sha256 == entry.sha256
    assert reopened.read(artifact.artifact_id, 990, 100) == b"x" * 10
    mode = sqlite3.connect(tmp_path / "outbox.sqlite").execute("PRAGMA journal_mode").fetchone()
    assert mode == ("wal",)


def test_artifact_from_file_and_acks_of_every_recipient(tmp_path: Path) -> None:
    source = tmp_path / "blob"
    source.write_bytes(bytes(range(256)) * 4096)
    outbox = _outbox(tmp_path, max_mb=2)
    entry = outbox.put_artifact("cd" * 16, "global_adapter", source, ["box1", "box2"])
    assert entry is not None
    assert outbox.read(entry.artifact_id, 256, 4) == bytes(range(4))
    assert outbox.record_ack(entry.seq, "box1") is False
    assert outbox.artifacts()[0].acked == {"box1"}
    assert outbox.record_ack(entry.seq, "box2") is True
    assert outbox.count() == 0
    assert outbox.read(entry.artifact_id, 0, 4) is None
    assert list(outbox.blob_dir.iterdir()) == []


def test_holds_artifact_matches_kind_and_meta_until_every_ack(tmp_path: Path) -> None:
    outbox = _outbox(tmp_path)
    meta = {"round_id": "r1-a.b", "global_version": 1}
    entry = outbox.put_artifact("ab" * 16, "global", b"adapter", ["box1"], meta=meta)
    assert entry is not None
    assert outbox.holds_artifact("global", meta)
    assert outbox.holds_artifact("global", {"round_id": "r1-a.b"})  # a part of the meta
    assert not outbox.holds_artifact("global", {"round_id": "r1-a.b", "global_version": 2})
    assert not outbox.holds_artifact("update", {"round_id": "r1-a.b"})
    outbox.record_ack(entry.seq, "box1")
    assert not outbox.holds_artifact("global", meta)


def test_when_full_lowest_priority_oldest_go_first(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    outbox = _outbox(tmp_path, max_mb=1)
    quarter = b"q" * (MIB // 4)
    low_old = outbox.put_message("low/old", quarter, Priority.LOW)
    high = outbox.put_message("high", quarter, Priority.HIGH)
    low_new = outbox.put_message("low/new", quarter, Priority.LOW)
    normal = outbox.put_message("normal", quarter, Priority.NORMAL)
    assert None not in (low_old, high, low_new, normal)
    caplog.set_level(logging.WARNING)
    assert outbox.put_message("normal/2", quarter, Priority.NORMAL) is not None
    topics = [m.topic for m in outbox.messages(set(), 10)]
    assert topics == ["high", "low/new", "normal", "normal/2"]
    assert "dropped message low/old (priority 0" in caplog.text
    outbox.put_message("high/2", quarter + quarter, Priority.HIGH)
    assert [m.topic for m in outbox.messages(set(), 10)] == ["high", "normal/2", "high/2"]
    assert outbox.counters.get("dropped.full") == 3
    # A new entry ranked below everything queued is the one dropped.
    assert outbox.put_message("low/late", quarter, Priority.LOW) is None
    assert "dropped new message on low/late: it has the lowest priority" in caplog.text
    assert outbox.put_message("huge", b"h" * (MIB + 1), Priority.HIGH) is None
    assert outbox.used_bytes() <= MIB


def test_entries_older_than_max_age_expire(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    outbox = _outbox(tmp_path, max_age_s=1)
    outbox.put_message("old", b"1")
    time.sleep(1.5)  # let the entry age past max_age_s; nothing is timed
    caplog.set_level(logging.WARNING)
    assert outbox.expire() == 1
    assert outbox.count() == 0
    assert outbox.counters.get("dropped.expired") == 1
    assert "dropped message old: not delivered within 1 s" in caplog.text


def test_artifact_file_without_a_row_is_removed_on_open(tmp_path: Path) -> None:
    outbox = _outbox(tmp_path)
    kept = outbox.put_artifact("ab" * 16, "update", b"kept", ["agg"])
    assert kept is not None
    outbox.close()
    (outbox.blob_dir / ("cd" * 16)).write_bytes(b"written, then killed before the commit")
    (outbox.blob_dir / ("ef" * 16 + ".tmp")).write_bytes(b"killed while copying")
    reopened = _outbox(tmp_path)
    assert sorted(p.name for p in reopened.blob_dir.iterdir()) == ["ab" * 16]
    assert reopened.read("ab" * 16, 0, 10) == b"kept"


def test_an_outbox_that_cannot_be_opened_is_an_outbox_error(tmp_path: Path) -> None:
    (tmp_path / "outbox.sqlite").mkdir()  # a directory where the database should be
    with pytest.raises(OutboxError, match=r"cannot open the outbox: .*outbox\.sqlite"):
        _outbox(tmp_path)
