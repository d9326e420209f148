"""The client wrapper against a real Mosquitto: publish/subscribe, packet limits, reconnect."""

import threading
from collections.abc import Callable
from pathlib import Path

import pytest

from appliance.identity import NodeKey
from appliance.transport.client import Inbound, MqttClient, PacketTooLargeError, PublishResult
from tests.support.mosquitto import Mosquitto
from tests.transport.conftest import WAIT_S, mqtt_settings
from tests.transport.processes import NodeProcess
from tests.transport.waiting import wait_for


def _collect(client: MqttClient, topic_filter: str) -> list[Inbound]:
    got: list[Inbound] = []
    client.subscribe(topic_filter, got.append)
    return got


def test_own_messages_are_not_echoed_back(
    broker: Mosquitto, clients: Callable[..., MqttClient]
) -> None:
    client = clients(mqtt_settings(broker), "echo")
    own = _collect(client, "e/#")
    client.start()
    client.wait_connected(WAIT_S)
    other = clients(mqtt_settings(broker), "other")
    other.start()
    other.wait_connected(WAIT_S)
    done: list[PublishResult] = []
    client.publish("e/mine", b"1", on_done=done.append)
    wait_for(lambda: done, "PUBACK of our own message")
    other.publish("e/theirs", b"2")
    wait_for(lambda: own, "the other client's message")
    assert [m.topic for m in own] == ["e/theirs"]


def test_publish_reaches_subscriber_and_completion_runs_in_worker(
    broker: Mosquitto, clients: Callable[..., MqttClient]
) -> None:
    receiver = clients(mqtt_settings(broker), "rx")
    got = _collect(receiver, "t/#")
    receiver.start()
    receiver.wait_connected(WAIT_S)
    sender = clients(mqtt_settings(broker), "tx")
    sender.start()
    sender.wait_connected(WAIT_S)
    done: list[tuple[PublishResult, str]] = []
    for i in range(50):
        sender.publish(
            f"t/{i}",
            b"x" * i,
            on_done=lambda r: done.append((r, threading.current_thread().name)),
        )
    wait_for(lambda: len(done) == 50 and len(got) == 50, "50 completions and 50 messages")
    assert all(result.ok for result, _ in done)
    assert {thread for _, thread in done} == {"mqtt-tx"}
    assert sorted(len(m.payload) for m in got) == list(range(50))


def test_broker_packet_limit_from_connack_refuses_locally_without_disconnect(
    broker_factory: Callable[..., Mosquitto], clients: Callable[..., MqttClient]
) -> None:
    broker = broker_factory(max_packet_size=10_000)
    listener = clients(mqtt_settings(broker), "listener")
    got = _collect(listener, "big/#")
    listener.start()
    listener.wait_connected(WAIT_S)
    client = clients(mqtt_settings(broker, max_packet_bytes=1_000_000), "box")
    client.start()
    client.wait_connected(WAIT_S)
    assert client.max_packet_bytes == 10_000
    limit = client.max_payload_bytes("big/one")
    with pytest.raises(PacketTooLargeError, match="limit is 10000 bytes"):
        client.publish("big/one", b"x" * (limit + 1))
    client.publish("big/one", b"x" * limit)
    wait_for(lambda: len(got) == 1, "the largest allowed message")
    assert client.counters.get("disconnects") == 0
    assert client.counters.get("refused.too_large") == 1
    assert "disconnected" not in broker.log_text()


def test_without_broker_limit_the_configured_cap_applies(
    broker: Mosquitto, clients: Callable[..., MqttClient]
) -> None:
    client = clients(mqtt_settings(broker, max_packet_bytes=5000), "box")
    client.start()
    client.wait_connected(WAIT_S)
    assert client.max_packet_bytes == 5000
    with pytest.raises(PacketTooLargeError):
        client.publish("a/b", b"x" * 5000)


def test_reconnects_after_broker_restart_and_keeps_session(
    broker_factory: Callable[..., Mosquitto], clients: Callable[..., MqttClient]
) -> None:
    broker = broker_factory(persistence=True)
    receiver = clients(mqtt_settings(broker), "rx")
    got = _collect(receiver, "s/#")
    receiver.start()
    receiver.wait_connected(WAIT_S)
    receiver.stop()  # offline, but its persistent session keeps queueing QoS 1 messages
    sender = clients(mqtt_settings(broker), "tx")
    sender.start()
    sender.wait_connected(WAIT_S)
    acked: list[PublishResult] = []
    sender.publish("s/1", b"queued while rx was away", on_done=acked.append)
    wait_for(lambda: acked, "PUBACK")
    broker.restart()
    wait_for(lambda: sender.counters.get("connects") == 2, "sender reconnect")
    again = clients(mqtt_settings(broker), "rx")
    again_got = _collect(again, "s/#")
    again.start()
    wait_for(lambda: again_got, "the message queued in the persisted session")
    assert again_got[0].payload == b"queued while rx was away"
    assert not got


def test_last_will_is_published_when_the_process_is_killed(
    tmp_path: Path,
    broker: Mosquitto,
    clients: Callable[..., MqttClient],
    keys: Callable[[str], NodeKey],
) -> None:
    watcher = clients(mqtt_settings(broker), "watcher")
    got = _collect(watcher, "status/#")
    watcher.start()
    watcher.wait_connected(WAIT_S)
    keys("box1")
    box = NodeProcess(
        {
            "node_id": "box1",
            "key_file": str(tmp_path / "keys" / "box1.key"),
            "trust_dir": str(tmp_path / "trust"),
            "state_dir": str(tmp_path / "box1" / "state"),
            "mqtt": {"host": "127.0.0.1", "port": broker.port},
            "will": "status/box1",
        },
        tmp_path / "box1",
    )
    box.start()
    try:
        box.wait(lambda n: n.counter("connects") >= 1, "box1 connected")
        assert not got
        box.kill()
        wait_for(lambda: got, "the Last Will")
    finally:
        box.kill()
    assert [(m.topic, m.payload) for m in got] == [("status/box1", b"offline")]
