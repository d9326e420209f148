"""SIGTERM's outbox flush against a real broker: queued messages go out before the daemon
disconnects; while the broker is away they stay on disk for the next start."""

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from appliance.config.transfer import OutboxSettings, TransferSettings
from appliance.identity import NodeKey, TrustStore
from appliance.system.shutdown import flush_outbox
from appliance.transport.client import MqttClient
from appliance.transport.node import NodeSettings, TransportNode
from appliance.transport.outbox import Outbox
from tests.support.mosquitto import Mosquitto
from tests.transport.conftest import WAIT_S, broker, broker_factory, keys, mqtt_settings
from tests.transport.waiting import wait_for

__all__ = ["broker", "broker_factory", "keys"]  # fixtures used below


@pytest.fixture
def node(
    tmp_path: Path, broker: Mosquitto, keys: Callable[[str], NodeKey]
) -> Iterator[TransportNode]:
    settings = NodeSettings(
        "plant1", mqtt_settings(broker), OutboxSettings(), TransferSettings(), tmp_path / "state"
    )
    made = TransportNode(keys("box1"), TrustStore(tmp_path / "trust"), settings)
    made.start()
    made.client.wait_connected(WAIT_S)
    yield made
    made.stop()


def test_flush_waits_until_queued_messages_reached_the_broker(
    node: TransportNode, broker: Mosquitto
) -> None:
    received: list[bytes] = []
    watcher = MqttClient(mqtt_settings(broker), "watcher", clean_start=True)
    watcher.subscribe("appliance/v1/plant1/msg/box1/#", lambda m: received.append(m.payload))
    watcher.start()
    try:
        watcher.wait_connected(WAIT_S)  # connected = SUBACK received
        for n in range(20):
            node.sender.send_message(node.topics.message("box1", "note"), b"note %d" % n)
        assert flush_outbox(node, timeout_s=WAIT_S) == 0
        assert node.outbox.messages(set(), 100) == []
        wait_for(lambda: len(received) == 20, "the 20 notes at the watcher")
    finally:
        watcher.stop()


def test_without_a_broker_the_messages_stay_on_disk(
    node: TransportNode, broker: Mosquitto, tmp_path: Path
) -> None:
    broker.kill()
    wait_for(lambda: not node.client.connected, "the node to notice the broker is gone")
    node.sender.send_message(node.topics.message("box1", "note"), b"last words")
    assert flush_outbox(node, timeout_s=WAIT_S) == 1  # returns at once: nobody to send to
    node.stop()
    reopened = Outbox(tmp_path / "state" / "outbox.sqlite", OutboxSettings())
    try:
        assert [m.payload for m in reopened.messages(set(), 10)] == [b"last words"]
    finally:
        reopened.close()
