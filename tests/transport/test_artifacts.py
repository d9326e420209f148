"""Artifact transfer between two nodes through a real Mosquitto."""

import hashlib
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from appliance.config.transfer import TransferSettings
from appliance.identity import NodeKey, TrustStore
from tests.support.mosquitto import Mosquitto
from tests.transport.conftest import WAIT_S, mqtt_settings
from tests.transport.nodes import Node, start_node
from tests.transport.waiting import wait_for

MB = 1_000_000


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
