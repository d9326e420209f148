"""The whole system on one machine with the tiny model: real broker, real processes."""

import json
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from appliance.demo.broker import start_broker
from appliance.demo.fleet import AGGREGATOR, FleetOptions, lay_out
from appliance.demo.run import TINY_TRAINING, spawn_node, stop_process
from appliance.federation.audit import verify
from appliance.identity import NodeKey
from appliance.llm.tiny import make_tiny_model
from appliance.transport.events import ArtifactArrived
from tests.support.fleet_watch import aggregator_service
from tests.transport.forge import manifest_for

WAIT_S = 240.0


def test_demo_three_boxes_two_rounds_every_box_gains(tmp_path: Path) -> None:
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "appliance.cli",
            "demo",
            "--model",
            "tiny",
            "--boxes",
            "3",
            "--rounds",
            "2",
            "--json",
            "--dir",
            str(tmp_path / "demo"),
            "--timeout",
            str(WAIT_S),
        ],
        capture_output=True,
        text=True,
        timeout=WAIT_S + 60,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.loads(result.stdout)
    assert [r["global_version"] for r in summary["rounds"]] == [1, 2]
    for round_ in summary["rounds"]:
        assert set(round_["boxes"]) == {"box-1", "box-2", "box-3"}
        assert set(round_["bytes_up"]) == {"box-1", "box-2", "box-3"}
        assert round_["bytes_down"] > 0
        for numbers in round_["boxes"].values():
            assert numbers["nll_global"] < numbers["nll_base"]
            assert numbers["nll_local"] < numbers["nll_base"]
    last = summary["rounds"][-1]["boxes"]
    first = summary["rounds"][0]["boxes"]
    assert all(last[b]["nll_global"] < first[b]["nll_global"] for b in last)
    verify(tmp_path / "demo" / AGGREGATOR / "state" / "audit.jsonl")
    assert_globals_went_down_as_deltas(tmp_path / "demo")


def assert_globals_went_down_as_deltas(root: Path) -> None:
    """Every box held each round's base (v0 from the seed, then the version it trained on),
    so each global went to all as a delta, and each box rebuilt the aggregator's very file."""
    sent = audit_records(root / AGGREGATOR / "state" / "audit.jsonl", "global_sent")
    boxes = ["box-1", "box-2", "box-3"]
    assert [(r["global_version"], sorted(r["delta_to"]), r["full_to"]) for r in sent] == [
        (1, boxes, []),
        (2, boxes, []),
    ]
    for record in sent:
        assert record["delta_bytes"] * 5 < record["full_bytes"]
        version = record["global_version"]
        made = root / AGGREGATOR / "state" / "globals" / f"global-v{version}.gguf"
        for box in boxes:
            rebuilt = root / box / "state" / "adapters" / f"global-v{version}.gguf"
            assert rebuilt.read_bytes() == made.read_bytes()


def accepted_updates(db: Path) -> dict[str, int]:
    if not db.exists():
        return {}
    try:
        with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as conn:
            rows = conn.execute(
                "SELECT r.round_id, COUNT(u.node_id) FROM rounds r LEFT JOIN updates u "
                "ON u.round_id = r.round_id WHERE r.state = 'open' GROUP BY r.round_id"
            ).fetchall()
    except sqlite3.OperationalError:  # the aggregator is still creating its tables
        return {}
    return dict(rows)


def audit_records(path: Path, kind: str) -> list[dict]:
    if not path.exists():
        return []
    return [
        r["data"]
        for line in path.read_text().splitlines()
        if (r := json.loads(line))["kind"] == kind
    ]


def wait_until(condition, what: str) -> None:
    deadline = time.monotonic() + WAIT_S
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.2)


def test_aggregator_killed_mid_round_completes_the_round_after_restart(tmp_path: Path) -> None:
    """Box 1 delivers, the aggregator dies (SIGKILL) with the round open, boxes 2 and 3 come
    while it is down; after its restart the round completes with all three updates."""
    broker, port = start_broker(tmp_path / "broker")
    options = FleetOptions(
        3, 1, str(make_tiny_model(tmp_path / "tiny.gguf")), port, 120, TINY_TRAINING
    )
    layout = lay_out(tmp_path, options)
    db = layout.state_dir(AGGREGATOR) / "rounds.sqlite"
    first, *others = layout.boxes
    processes = [spawn_node(layout, first)]
    aggregator = spawn_node(layout, AGGREGATOR)
    try:
        wait_until(lambda: any(n >= 1 for n in accepted_updates(db).values()), "box 1's update")
        round_id, before = next(iter(accepted_updates(db).items()))
        assert before == 1
        aggregator.send_signal(signal.SIGKILL)
        aggregator.wait(timeout=30)
        processes += [spawn_node(layout, box) for box in others]
        aggregator = spawn_node(layout, AGGREGATOR)
        wait_until(
            lambda: audit_records(layout.audit_log, "round_aggregated"), "the round to aggregate"
        )
        done = audit_records(layout.audit_log, "round_aggregated")
        assert [d["round_id"] for d in done] == [round_id]
        assert sorted(done[0]["participants"]) == ["box-1", "box-2", "box-3"]
        assert len(audit_records(layout.audit_log, "round_opened")) == 1
        verify(layout.audit_log)
    finally:
        for process in [aggregator, *processes]:
            stop_process(process)
        stop_process(broker)


def update_arrived(sender: str, round_id: str, path: Path) -> ArtifactArrived:
    """An update as the transport hands it over (verified, signed by `sender`)."""
    key = NodeKey(sender, Ed25519PrivateKey.generate())
    manifest = manifest_for(key, path.read_bytes(), meta={"round_id": round_id})
    return ArtifactArrived(manifest, path)


@pytest.mark.parametrize("junk", [b"\x01", b"APUP", b"\x00" * 5000])  # the transport has no empty artifact
def test_an_undecodable_update_is_refused_and_the_round_goes_on(
    tmp_path: Path, junk: bytes
) -> None:
    options = FleetOptions(1, 1, str(make_tiny_model(tmp_path / "tiny.gguf")), 1, 10, TINY_TRAINING)
    layout = lay_out(tmp_path, options)
    service = aggregator_service(layout)
    try:
        service.step(now=time.time())
        round_id = service.store.current().round_id  # type: ignore[union-attr]
        path = tmp_path / "junk.update"
        path.write_bytes(junk)
        service.handle(update_arrived("box-1", round_id, path))
        refused = audit_records(layout.audit_log, "update_rejected")
        assert refused and refused[0]["node_id"] == "box-1"
        assert refused[0]["reason"].startswith("undecodable: ")
        assert service.store.count(round_id) == 0
        assert service.store.current() is not None
    finally:
        service.stop()


@pytest.mark.parametrize("stop_signal", [signal.SIGINT, signal.SIGTERM])
def test_stopping_the_demo_stops_every_process(tmp_path: Path, stop_signal: signal.Signals) -> None:
    demo_dir = tmp_path / "demo"
    demo = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "appliance.cli",
            "demo",
            "--model",
            "tiny",
            "--rounds",
            "50",
            "--dir",
            str(demo_dir),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    wait_until(
        lambda: audit_records(demo_dir / AGGREGATOR / "state" / "audit.jsonl", "round_opened"),
        "the first round",
    )
    demo.send_signal(stop_signal)
    assert demo.wait(timeout=120) == 130
    left = subprocess.run(
        ["pgrep", "-f", str(demo_dir)], capture_output=True, text=True, check=False
    )
    assert left.stdout.strip() == "", f"processes left running: {left.stdout}"


def test_an_update_for_a_closed_round_is_refused_as_late(tmp_path: Path) -> None:
    """The reason is the round's state, not the global version that moved on since (the
    partition test's cut-off box used to read "made for another ... global version")."""
    options = FleetOptions(1, 1, str(make_tiny_model(tmp_path / "tiny.gguf")), 1, 10, TINY_TRAINING)
    layout = lay_out(tmp_path, options)
    service = aggregator_service(layout)
    try:
        service.step(now=time.time())
        round_id = service.store.current().round_id  # type: ignore[union-attr]
        service.store.mark_failed(round_id, "closed for this test", time.time())
        path = tmp_path / "late.update"
        path.write_bytes(b"APUP late bytes")
        service.handle(update_arrived("box-1", round_id, path))
        refused = audit_records(layout.audit_log, "update_rejected")
        assert [r["reason"] for r in refused] == [f"late: round {round_id} is abandoned"]
        assert service.store.count(round_id) == 0
    finally:
        service.stop()
