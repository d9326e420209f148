"""Artifact transfer between two nodes through a real Mosquitto."""

import hashlib
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from appliance.config.transfer import OutboxSettings, TransferSettings
from appliance.identity import NodeKey, TrustStore
from appliance.transport.client import MqttClient
from appliance.transport.outbox import Outbox
from appliance.transport.topics import Topics
from tests.support.mosquitto import Mosquitto
from tests.transport.conftest import WAIT_S, mqtt_settings
from tests.transport.forge import chunks_for, manifest_for, sealed
from tests.transport.nodes import PLANT, Node, start_node
from tests.transport.waiting import wait_for

MB = 1_000_000
TOPICS = Topics(PLANT)


@pytest.fixture
def nodes(tmp_path: Path, trust: TrustStore) -> Iterator[Callable[..., Node]]:
    """`nodes(key, broker, **mqtt_overrides)`: a started node; all stopped at teardown."""
    made: list[Node] = []

    def make(
        key: NodeKey, broker: Mosquitto, transfer: TransferSettings | None = None, **mqtt: Any
    ) -> Node:
        node = start_node(
            key,
            trust,
            mqtt_settings(broker, **mqtt),
            tmp_path / f"state-{key.node_id}",
            transfer=transfer,
        )
        made.append(node)
        node.client.wait_connected(WAIT_S)
        return node

    yield make
    for node in made:
        node.stop()


def test_small_artifact_round_trip_and_ack_empties_outbox(
    broker: Mosquitto, keys: Callable[[str], NodeKey], nodes: Callable[..., Node]
) -> None:
    box = nodes(keys("box1"), broker)
    agg = nodes(keys("agg"), broker)
    data = b"adapter delta " * 1000
    artifact_id = box.sender.send_artifact("update", data, ["agg"], meta={"round": 3})
    wait_for(lambda: agg.received and box.outbox.count() == 0, "delivery and ack")
    ((manifest, sha),) = agg.received
    assert manifest.artifact_id == artifact_id
    assert manifest.meta == {"round": 3}
    assert sha == hashlib.sha256(data).hexdigest()
    assert box.counters["artifacts_delivered"] == 1


def test_50mb_artifact_through_broker_with_max_packet_size_2000000(
    tmp_path: Path,
    broker_factory: Callable[..., Mosquitto],
    keys: Callable[[str], NodeKey],
    nodes: Callable[..., Node],
) -> None:
    broker = broker_factory(max_packet_size=2_000_000)
    source = tmp_path / "update.bin"
    source.write_bytes(os.urandom(50 * MB))
    # The configured cap is far above the broker's: only CONNACK tells the sender to chunk.
    box = nodes(keys("box1"), broker, max_packet_bytes=64 * 1024 * 1024)
    agg = nodes(keys("agg"), broker, max_packet_bytes=64 * 1024 * 1024)
    assert box.client.max_packet_bytes == 2_000_000
    box.sender.send_artifact("update", source, ["agg"])
    wait_for(lambda: agg.received and box.outbox.count() == 0, "50 MB delivered and acked", 300)
    ((manifest, sha),) = agg.received
    assert sha == hashlib.sha256(source.read_bytes()).hexdigest()
    assert manifest.chunk_count == 26
    for node in (box, agg):
        assert node.counters.get("disconnects", 0) == 0
        assert node.counters["connects"] == 1
    assert "disconnected" not in broker.log_text()  # both nodes are still connected here


def test_stalled_transfer_is_dropped_after_the_timeout(  # noqa: PLR0917 - fixtures
    tmp_path: Path,
    broker: Mosquitto,
    keys: Callable[[str], NodeKey],
    nodes: Callable[..., Node],
    clients: Callable[..., MqttClient],
    caplog: pytest.LogCaptureFixture,
) -> None:
    agg = nodes(keys("agg"), broker, TransferSettings(stall_timeout_s=3, request_after_s=1))
    raw = clients(mqtt_settings(broker), "raw")
    raw.start()
    raw.wait_connected(WAIT_S)
    data = os.urandom(30_000)
    box = keys("box1")  # trusted, but never answers the receiver's wants
    manifest = manifest_for(box, data)
    raw.publish(TOPICS.manifest("box1", manifest.artifact_id), sealed(manifest, box))
    raw.publish(TOPICS.chunk("box1", manifest.artifact_id), chunks_for(manifest, data)[0])
    wait_for(lambda: agg.counters.get("stalled"), "the stalled transfer to be dropped")
    assert agg.receiver.progress() == {}
    assert not list((tmp_path / "state-agg" / "transfers" / "partial").iterdir())
    assert "dropped transfer" in caplog.text and "no progress for" in caplog.text
    assert agg.counters["wants_sent"] >= 1  # it asked before giving up


def test_manifest_is_rebuilt_when_the_broker_allows_smaller_packets(
    tmp_path: Path,
    broker_factory: Callable[..., Mosquitto],
    keys: Callable[[str], NodeKey],
    trust: TrustStore,
    nodes: Callable[..., Node],
) -> None:
    broker = broker_factory(max_packet_size=20_000)
    box = keys("box1")
    data = os.urandom(200_000)
    # A previous run, connected to a broker without a limit, chunked it by 100,000 bytes.
    outbox = Outbox(tmp_path / "box1" / "outbox.sqlite", OutboxSettings())
    entry = outbox.put_artifact("ab" * 16, "update", data, ["agg"])
    assert entry is not None
    old = manifest_for(box, data, chunk_bytes=100_000, artifact_id=entry.artifact_id)
    outbox.set_manifest(entry.seq, sealed(old, box))
    outbox.close()
    agg = nodes(keys("agg"), broker)
    sender = start_node(box, trust, mqtt_settings(broker), tmp_path / "box1")
    try:
        wait_for(lambda: agg.received and sender.outbox.count() == 0, "delivery and ack")
        ((manifest, sha),) = agg.received
        assert manifest.chunk_bytes < 20_000
        assert sha == hashlib.sha256(data).hexdigest()
        assert sender.counters.get("disconnects", 0) == 0
    finally:
        sender.stop()


def test_artifact_for_several_recipients_leaves_the_outbox_after_the_last_ack(
    broker: Mosquitto, keys: Callable[[str], NodeKey], nodes: Callable[..., Node]
) -> None:
    agg = nodes(keys("agg"), broker, TransferSettings(resend_after_s=1))
    box1 = nodes(keys("box1"), broker)
    data = os.urandom(300_000)
    box2_key = keys("box2")  # box2 is offline when the global adapter goes out
    agg.sender.send_artifact("global_adapter", data, ["box1", "box2"])
    wait_for(lambda: agg.outbox.artifacts()[0].acked == {"box1"}, "box1's ack")
    assert agg.outbox.count() == 1
    box2 = nodes(box2_key, broker, TransferSettings(request_after_s=1))
    # box2 never saw the manifest: the aggregator re-announces, box2 asks for everything.
    wait_for(lambda: box2.received and agg.outbox.count() == 0, "box2's copy and ack", 120)
    digest = hashlib.sha256(data).hexdigest()
    assert [sha for _, sha in box1.received + box2.received] == [digest, digest]
