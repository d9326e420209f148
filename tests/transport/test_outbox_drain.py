"""The outbox across broker outages and process kills: nothing lost, nothing doubled."""

import json
import sqlite3
from collections.abc import Callable
from pathlib import Path

from appliance.config.transfer import OutboxSettings
from appliance.identity import NodeKey, TrustStore
from appliance.transport.client import Inbound, MqttClient
from appliance.transport.outbox import Priority
from appliance.transport.topics import Topics
from tests.support.mosquitto import Mosquitto
from tests.transport.conftest import WAIT_S, mqtt_settings
from tests.transport.nodes import PLANT, start_node
from tests.transport.processes import NodeProcess
from tests.transport.waiting import wait_for

TOPICS = Topics(PLANT)


def _sink(broker: Mosquitto, clients: Callable[..., MqttClient]) -> list[Inbound]:
    """A subscriber with a persistent session, made while the broker is up."""
    got: list[Inbound] = []
    sink = clients(mqtt_settings(broker), "sink")
    sink.subscribe(TOPICS.messages_from("box1"), got.append)
    sink.start()
    sink.wait_connected(WAIT_S)
    return got


def _rows(database: Path) -> int:
    with sqlite3.connect(database) as db:
        return int(db.execute("SELECT COUNT(*) FROM entries").fetchone()[0])


def test_broker_down_and_sender_killed_then_outbox_drains_in_order_exactly_once(
    tmp_path: Path,
    broker_factory: Callable[..., Mosquitto],
    clients: Callable[..., MqttClient],
    keys: Callable[[str], NodeKey],
) -> None:
    broker = broker_factory(persistence=True)
    got = _sink(broker, clients)
    broker.stop()
    keys("box1")
    state = tmp_path / "box1" / "state"
    box = NodeProcess(
        {
            "node_id": "box1",
            "key_file": str(tmp_path / "keys" / "box1.key"),
            "trust_dir": str(tmp_path / "trust"),
            "state_dir": str(state),
            "mqtt": {"host": "127.0.0.1", "port": broker.port, "reconnect_max_delay_s": 1},
        },
        tmp_path / "box1",
    )
    try:
        box.start(messages=200)
        box.wait(lambda n: n.find("messages_queued"), "200 messages queued")
        box.kill()  # while the broker is still down
        assert _rows(state / "outbox.sqlite") == 200
        broker.start()
        box.start()
        box.wait(lambda n: n.latest()["outbox"] == 0, "the outbox to drain")
        wait_for(lambda: len(got) >= 200, "200 messages at the subscriber")
    finally:
        box.kill()
    numbers = [json.loads(message.payload)["n"] for message in got]
    assert numbers == list(range(200))


def test_full_outbox_during_outage_evicts_lowest_priority_oldest_first(
    tmp_path: Path,
    broker_factory: Callable[..., Mosquitto],
    clients: Callable[..., MqttClient],
    keys: Callable[[str], NodeKey],
    trust: TrustStore,
) -> None:
    broker = broker_factory(persistence=True)
    got = _sink(broker, clients)
    broker.stop()
    node = start_node(
        keys("box1"),
        trust,
        mqtt_settings(broker),
        tmp_path / "box1",
        outbox=OutboxSettings(max_mb=1),
    )
    try:
        topic = TOPICS.message("box1", "test")
        for number in range(8):
            payload = json.dumps({"n": f"low{number}"}).encode().ljust(200_000)
            node.sender.send_message(topic, payload, Priority.LOW)
        for number in range(2):
            payload = json.dumps({"n": f"high{number}"}).encode().ljust(200_000)
            node.sender.send_message(topic, payload, Priority.HIGH)
        assert node.counters["dropped.full"] == 5
        broker.start()
        wait_for(lambda: node.outbox.count() == 0, "the outbox to drain")
        wait_for(lambda: len(got) >= 5, "the surviving messages")
    finally:
        node.stop()
    names = [json.loads(message.payload)["n"] for message in got]
    assert names == ["low5", "low6", "low7", "high0", "high1"]
