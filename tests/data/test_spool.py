"""The edge data spool: validate, deduplicate, quarantine, fixed held-out split."""

import json
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from appliance.data.spool import Spool
from appliance.data.synthetic import line_for, maintenance_records, write_jsonl


@pytest.fixture
def spool(tmp_path: Path) -> Iterator[Spool]:
    s = Spool(tmp_path / "spool", tmp_path / "state", "box-1", 0.2)
    yield s
    s.close()


def drop(spool: Spool, name: str, content: bytes) -> Path:
    tmp = spool.spool_dir / f".{name}.part"
    tmp.write_bytes(content)
    tmp.rename(spool.spool_dir / name)
    return spool.spool_dir / name


def test_good_file_is_ingested_and_moved(spool: Spool) -> None:
    records = maintenance_records(line_for(0), 50)
    unique = len({json.dumps(r, sort_keys=True) for r in records})
    write_jsonl(spool.spool_dir / "a.jsonl", records)
    report = spool.ingest()
    assert (report.files, report.added, report.duplicates, report.quarantined) == (
        1,
        unique,
        50 - unique,
        0,
    )
    train, heldout = spool.counts()
    assert train + heldout == unique and 2 <= heldout <= 20
    assert (spool.processed_dir / "a.jsonl").exists()
    assert not (spool.spool_dir / "a.jsonl").exists()


def test_bad_lines_are_quarantined_with_reasons_and_good_ones_kept(spool: Spool) -> None:
    lines = [
        b'{"text": "good one"}',
        b'{"text": "truncated',
        b'{"text": 5}',
        b'{"prompt": "p", "completion": NaN}',
        b"\xff\xfe garbage",
        b'["not", "an", "object"]',
        b'{"text": "x", "extra": 1}',
        b'{"prompt": "alarm PK-101?", "completion": "worn bearing"}',
        b"",
        b'{"text": "' + b"a" * 1_100_000 + b'"}',
    ]
    drop(spool, "mixed.jsonl", b"\n".join(lines) + b"\n")
    report = spool.ingest()
    assert (report.added, report.quarantined) == (2, 7)
    quarantined = [
        json.loads(x)
        for x in (spool.quarantine_dir / "mixed.jsonl.rejected.jsonl").read_text().splitlines()
    ]
    assert [q["line"] for q in quarantined] == [2, 3, 4, 5, 6, 7, 10]
    reasons = " | ".join(q["reason"] for q in quarantined)
    for expected in (
        "not valid JSON",
        '"text" must be a string',
        "NaN is not a number",
        "not valid UTF-8",
        "expected a JSON object",
        "expected the keys",
        "more than",
    ):
        assert expected in reasons
    assert len(quarantined[-1]["excerpt"]) <= 200


def test_duplicates_across_files_are_stored_once(spool: Spool) -> None:
    records = maintenance_records(line_for(1), 20)
    write_jsonl(spool.spool_dir / "a.jsonl", records)
    write_jsonl(
        spool.spool_dir / "b.jsonl", records[10:] + maintenance_records(line_for(1), 30, seed=5)[:5]
    )
    report = spool.ingest()
    assert report.duplicates >= 10
    assert sum(spool.counts()) == report.added


def test_held_out_split_is_fixed_across_restarts(tmp_path: Path) -> None:
    first = Spool(tmp_path / "spool", tmp_path / "state", "box-1", 0.3)
    write_jsonl(first.spool_dir / "a.jsonl", maintenance_records(line_for(2), 60))
    first.ingest()
    held_before = [r.text or r.prompt for r in first.records(heldout=True)]
    first.close()
    again = Spool(tmp_path / "spool", tmp_path / "state", "box-1", 0.3)
    write_jsonl(again.spool_dir / "b.jsonl", maintenance_records(line_for(2), 60))
    again.ingest()
    held_after = [r.text or r.prompt for r in again.records(heldout=True)]
    assert held_after[: len(held_before)] == held_before
    again.close()


def test_other_boxes_hold_out_other_records(tmp_path: Path) -> None:
    held = []
    for box in ("box-1", "box-2"):
        s = Spool(tmp_path / box / "spool", tmp_path / box / "state", box, 0.3)
        write_jsonl(s.spool_dir / "a.jsonl", maintenance_records(line_for(0), 80))
        s.ingest()
        held.append({r.text or r.prompt for r in s.records(heldout=True)})
        s.close()
    assert held[0] != held[1]


def test_partial_files_and_odd_entries_are_left_alone(spool: Spool) -> None:
    (spool.spool_dir / "incoming.jsonl.part").write_text('{"text": "not yet"}\n')
    (spool.spool_dir / "dir.jsonl").mkdir()
    os.mkfifo(spool.spool_dir / "pipe.jsonl")
    write_jsonl(spool.spool_dir / "z.jsonl", [{"text": "fine"}])
    report = spool.ingest()
    assert report.added == 1
    assert sorted(report.failed_files) == ["dir.jsonl", "pipe.jsonl"]
    assert (spool.spool_dir / "incoming.jsonl.part").exists()


def test_a_file_of_garbage_is_quarantined_whole(spool: Spool) -> None:
    drop(spool, "junk.jsonl", os.urandom(4096))
    report = spool.ingest()
    assert report.added == 0 and report.quarantined >= 1
    assert (spool.processed_dir / "junk.jsonl").exists()


def test_the_record_store_is_fully_durable(spool: Spool) -> None:
    """Ingested files move to processed/ right after their commit: a commit a power cut
    could undo (synchronous=NORMAL in WAL) would lose those records for good."""
    assert spool._db.execute("PRAGMA journal_mode").fetchone() == ("wal",)
    assert spool._db.execute("PRAGMA synchronous").fetchone() == (2,)  # FULL
