"""The fleet store on real SQLite: latest values, batches, retention and downsampling."""

import sqlite3
from pathlib import Path

import pytest

from appliance.errors import ApplianceError
from appliance.telemetry.store import AlertRow, FleetStore, HostRow

HOUR_MS = 3600 * 1000


def test_latest_values_history_and_committed_reads(tmp_path: Path) -> None:
    store = FleetStore(tmp_path / "fleet.sqlite")
    store.node_online("b1", 4, 1_000)
    store.record("b1", [("t", 40.0, 1_000), ("state", "idle", 1_000), ("ok", True, 1_000)])
    reader = FleetStore(tmp_path / "fleet.sqlite", read_only=True)
    assert reader.nodes() == []  # not committed yet
    store.commit()
    assert reader.latest("b1") == {"t": 40.0, "state": "idle", "ok": 1.0}
    store.record("b1", [("t", 30.0, 500)], historical=True)  # older, replayed
    store.record("b1", [("t", 20.0, 900)])  # late, older than the latest
    store.commit()
    assert reader.latest("b1")["t"] == 40.0
    assert reader.samples("b1", "t") == [(500, 30.0), (900, 20.0), (1_000, 40.0)]
    assert reader.samples("b1", "state") == []  # text is kept as latest only
    store.node_offline("b1", "NDEATH", 2_000)
    store.commit()
    (node,) = reader.nodes()
    assert (node.online, node.bdseq, node.offline_since_ms, node.offline_reason) == (
        False,
        4,
        2_000,
        "NDEATH",
    )
    store.close()


def test_compaction_folds_old_samples_into_buckets_and_expires(tmp_path: Path) -> None:
    store = FleetStore(tmp_path / "fleet.sqlite")
    bucket = 300_000
    store.record("b1", [("t", v, ts) for v, ts in ((10.0, 0), (20.0, 1_000), (60.0, 299_999))])
    store.record("b1", [("t", 5.0, bucket)])
    store.record("b1", [("t", 99.0, 10 * HOUR_MS)])  # recent: stays raw
    now = 10 * HOUR_MS + 1
    assert (
        store.compact(now, raw_keep_ms=HOUR_MS, bucket_ms=bucket, rollup_keep_ms=100 * HOUR_MS) == 4
    )
    assert store.rollups("b1", "t") == [(0, 3, 10.0, 60.0, 30.0), (bucket, 1, 5.0, 5.0, 5.0)]
    assert store.samples("b1", "t") == [(10 * HOUR_MS, 99.0)]
    store.record("b1", [("t", 40.0, 2_000)], historical=True)  # late replay into a bucket
    store.compact(now, HOUR_MS, bucket, 100 * HOUR_MS)
    assert store.rollups("b1", "t")[0] == (0, 4, 10.0, 60.0, 32.5)
    store.alert_fired(AlertRow("b1", "r", "s", "warning", "m", 0, None))
    store.alert_resolved("b1", "r", "s", 1_000)
    store.compact(200 * HOUR_MS, HOUR_MS, bucket, 100 * HOUR_MS)
    assert store.rollups("b1", "t") == [] and store.active_alerts() == []
    assert store.samples("b1", "t") == []
    store.close()


def test_host_heartbeat_is_one_row_a_stop_marks_it_and_a_restart_clears_it(
    tmp_path: Path,
) -> None:
    store = FleetStore(tmp_path / "fleet.sqlite")
    reader = FleetStore(tmp_path / "fleet.sqlite", read_only=True)
    assert reader.host() is None
    store.host_heartbeat("scada", 1_000, connected=False)
    store.host_heartbeat("scada", 2_000, connected=True)
    assert reader.host() is None  # written with the tick's batch, like the data
    store.commit()
    assert reader.host() == HostRow("scada", 2_000, True, None)
    store.host_stopped("scada", 3_000)
    store.commit()
    assert reader.host() == HostRow("scada", 3_000, False, 3_000)
    store.host_heartbeat("scada", 4_000, connected=True)
    store.close()
    assert reader.host() == HostRow("scada", 4_000, True, None)


def test_a_store_from_before_the_heartbeat_reads_as_no_host(tmp_path: Path) -> None:
    path = tmp_path / "old.sqlite"
    with sqlite3.connect(path) as db:
        db.execute("CREATE TABLE nodes (node TEXT PRIMARY KEY)")
    assert FleetStore(path, read_only=True).host() is None


def test_the_store_runs_wal_with_normal_durability(tmp_path: Path) -> None:
    """Samples are re-sent by the boxes, so the host may lose the last ticks to a power cut
    (NORMAL) rather than pay an fsync per tick (FULL)."""
    store = FleetStore(tmp_path / "fleet.sqlite")
    assert store._db.execute("PRAGMA journal_mode").fetchone() == ("wal",)
    assert store._db.execute("PRAGMA synchronous").fetchone() == (1,)  # NORMAL
    store.close()


def test_a_reader_of_a_missing_store_says_so_and_creates_nothing(tmp_path: Path) -> None:
    path = tmp_path / "state" / "fleet.sqlite"
    with pytest.raises(ApplianceError) as caught:
        FleetStore(path, read_only=True)
    assert str(caught.value) == f"no fleet health store at {path}; has the aggregator run yet?"
    assert not path.parent.exists()


def test_a_reader_of_an_unopenable_store_names_it(tmp_path: Path) -> None:
    path = tmp_path / "fleet.sqlite"
    path.mkdir()
    with pytest.raises(ApplianceError, match="fleet health store unreadable") as caught:
        FleetStore(path, read_only=True)
    assert str(path) in str(caught.value)
