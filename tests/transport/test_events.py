"""Pull mode through a real Mosquitto: what arrives is an event; an artifact stays the
transport's until the service acknowledges it, and a restart offers it again exactly once."""

import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Literal

import pytest

from appliance.config.transfer import TransferSettings
from appliance.identity import NodeKey, TrustStore, generate_key_pair
from appliance.transport.client import MqttClient
from appliance.transport.events import ArtifactArrived, MessageArrived
from appliance.transport.node import TransportNode
from appliance.transport.topics import Topics
from appliance.transport.wire import WireModel, seal
from tests.support.mosquitto import Mosquitto
from tests.transport.conftest import WAIT_S, mqtt_settings
from tests.transport.forge import sealed_text
from tests.transport.nodes import PLANT, Node, start_node, transport_node
from tests.transport.waiting import wait_for

TOPICS = Topics(PLANT)
DATA = os.urandom(120_000)
RESEND = TransferSettings(resend_after_s=1)
"""The sender re-announces every second while it waits for the Ack."""


class Note(WireModel):
    v: Literal[1] = 1
    text: str


@pytest.fixture
def box(
    tmp_path: Path, broker: Mosquitto, keys: Callable[[str], NodeKey], trust: TrustStore
) -> Iterator[Node]:
    node = start_node(
        keys("box1"), trust, mqtt_settings(broker), tmp_path / "box1", transfer=RESEND
    )
    node.client.wait_connected(WAIT_S)
    yield node
    node.stop()


@pytest.fixture
def agg_node(
    tmp_path: Path, broker: Mosquitto, keys: Callable[[str], NodeKey], trust: TrustStore
) -> Iterator[Callable[[], TransportNode]]:
    """`agg_node()`: the aggregator's pull-mode node (not started) on one state directory;
    made again, it is the same node after a restart. All are stopped at teardown."""
    key = keys("agg")
    made: list[TransportNode] = []

    def make() -> TransportNode:
        node = transport_node(key, trust, mqtt_settings(broker), tmp_path / "agg")
        made.append(node)
        return node

    yield make
    for node in made:
        node.stop()


@pytest.fixture
def raw(broker: Mosquitto, clients: Callable[..., MqttClient]) -> MqttClient:
    client = clients(mqtt_settings(broker), "raw-publisher")
    client.start()
    client.wait_connected(WAIT_S)
    return client


def _started(node: TransportNode) -> TransportNode:
    node.start()
    node.client.wait_connected(WAIT_S)
    return node


def _artifact(node: TransportNode) -> ArtifactArrived:
    event = node.next_event(timeout_s=WAIT_S)
    assert isinstance(event, ArtifactArrived), event
    return event


def _counter(node: TransportNode, name: str) -> int:
    return node.client.counters.get(name)


def _reannounced(node: TransportNode, times: int = 1) -> None:
    """Wait until the sender re-announced `times` more: a round trip in which an Ack could
    have been sent."""
    target = _counter(node, "ignored.awaiting_acknowledge") + times
    wait_for(lambda: _counter(node, "ignored.awaiting_acknowledge") >= target, "a re-announce")


def test_an_artifact_waits_in_the_inbox_until_acknowledged_then_a_replay_is_refused(
    box: Node, agg_node: Callable[[], TransportNode], raw: MqttClient
) -> None:
    agg = _started(agg_node())
    artifact_id = box.sender.send_artifact("update", DATA, ["agg"], meta={"round_id": "r1"})
    event = _artifact(agg)
    assert event.manifest.artifact_id == artifact_id
    assert event.manifest.meta == {"round_id": "r1"}
    assert event.path.read_bytes() == DATA
    _reannounced(agg)
    assert _counter(agg, "acks_sent") == 0
    assert box.outbox.count() == 1
    assert box.counters.get("artifacts_delivered", 0) == 0
    assert event.path.exists()
    (entry,) = box.outbox.artifacts()
    assert entry.manifest is not None
    envelope = entry.manifest

    agg.acknowledge(event)
    wait_for(lambda: box.outbox.count() == 0, "the Ack emptying the sender's outbox")
    assert not event.path.exists()
    assert _counter(agg, "artifacts_received") == 1
    assert box.counters["artifacts_delivered"] == 1

    raw.publish(TOPICS.manifest("box1", event.manifest.artifact_id), envelope)
    wait_for(lambda: _counter(agg, "rejected.replay") == 1, "the replay refused")
    assert agg.next_event(timeout_s=0.5) is None


def test_acknowledging_twice_is_harmless(box: Node, agg_node: Callable[[], TransportNode]) -> None:
    agg = _started(agg_node())
    box.sender.send_artifact("update", DATA, ["agg"])
    event = _artifact(agg)
    agg.acknowledge(event)
    agg.acknowledge(event)
    wait_for(lambda: _counter(agg, "ignored.already_acknowledged") == 1, "the second ack")
    wait_for(lambda: box.outbox.count() == 0, "the Ack emptying the sender's outbox")
    assert _counter(agg, "acks_sent") == 1
    assert _counter(agg, "artifacts_received") == 1


def test_an_unacknowledged_artifact_comes_again_exactly_once_after_a_restart(
    box: Node, agg_node: Callable[[], TransportNode]
) -> None:
    first_run = _started(agg_node())
    box.sender.send_artifact("update", DATA, ["agg"])
    first = _artifact(first_run)
    first_run.stop()  # killed before it acknowledged

    agg = agg_node()  # not started: the redelivery needs no broker
    again = agg.next_event()
    assert again == first
    assert again.path.read_bytes() == DATA
    assert agg.next_event() is None
    _started(agg)
    _reannounced(agg, 2)  # the sender still has no Ack and says so; it is not received anew
    assert agg.next_event() is None
    assert box.outbox.count() == 1

    agg.acknowledge(again)
    wait_for(lambda: box.outbox.count() == 0, "the Ack emptying the sender's outbox")
    agg.acknowledge(first)  # the killed run's event: already done
    wait_for(lambda: _counter(agg, "ignored.already_acknowledged") == 1, "the stale ack")
    assert _counter(agg, "acks_sent") == 1
    assert agg.next_event(timeout_s=0.5) is None
    agg.stop()
    assert agg_node().next_event() is None  # acknowledged: not offered at the next start


def test_an_inbox_file_gone_before_its_delivery_was_recorded_is_fetched_again(
    box: Node, agg_node: Callable[[], TransportNode]
) -> None:
    """A power cut lost 'delivered' but not the file's deletion: the artifact is received
    anew from the sender (which has no Ack) instead of being ignored forever."""
    first_run = _started(agg_node())
    box.sender.send_artifact("update", DATA, ["agg"])
    first = _artifact(first_run)
    first_run.stop()
    first.path.unlink()

    agg = agg_node()
    assert agg.next_event() is None
    _started(agg)
    again = _artifact(agg)
    assert again.manifest == first.manifest
    assert again.path.read_bytes() == DATA
    agg.acknowledge(again)
    wait_for(lambda: box.outbox.count() == 0, "the Ack emptying the sender's outbox")


def test_verified_messages_arrive_with_their_signer_and_forgeries_never_do(
    tmp_path: Path,
    box: Node,
    agg_node: Callable[[], TransportNode],
    raw: MqttClient,
    keys: Callable[[str], NodeKey],
) -> None:
    agg = agg_node()
    agg.subscribe("+", "note", Note)
    _started(agg)
    mallory = keys("mallory")  # trusted, but only for its own name
    private, _ = generate_key_pair(tmp_path / "untrusted", "stranger")
    stranger = NodeKey.load("stranger", private)
    box_topic = TOPICS.message("box1", "note")
    forgeries = [
        (box_topic, seal(Note(text="in box1's name"), mallory), "bad_signature"),
        (box_topic, Note(text="unsigned").model_dump_json().encode(), "malformed"),
        (TOPICS.message("stranger", "note"), seal(Note(text="hi"), stranger), "unknown_signer"),
        (box_topic, sealed_text('{"v": 1, "other": 1}', box.transport.key), "invalid"),
    ]
    for topic, payload, reason in forgeries:
        raw.publish(topic, payload)
        wait_for(lambda r=reason: _counter(agg, f"rejected.{r}") == 1, f"rejected.{reason}")
    raw.publish(TOPICS.message("mallory", "note"), seal(Note(text="mine"), mallory))
    box.transport.publish("note", Note(text="hello"))

    events = [agg.next_event(timeout_s=WAIT_S) for _ in range(2)]  # two writers: any order
    assert sorted(events, key=repr) == [
        MessageArrived("note", Note(text="hello"), "box1"),
        MessageArrived("note", Note(text="mine"), "mallory"),
    ]
    assert agg.next_event(timeout_s=0.5) is None


def test_a_message_not_acknowledged_before_a_restart_comes_again_then_not(
    box: Node, agg_node: Callable[[], TransportNode]
) -> None:
    """The broker keeps a subscribed message until the service acknowledges it: a node
    stopped (the daemon killed) after the event was queued but before the service handled
    it gets the message again from its saved session; once acknowledged, it never comes
    again."""
    first = agg_node()
    first.subscribe("+", "note", Note)
    _started(first)
    box.transport.publish("note", Note(text="evaluation of v1"))
    event = first.next_event(timeout_s=WAIT_S)
    assert event == MessageArrived("note", Note(text="evaluation of v1"), "box1")
    first.stop()  # not acknowledged: the service never handled it

    second = agg_node()
    second.subscribe("+", "note", Note)
    _started(second)
    again = second.next_event(timeout_s=WAIT_S)
    assert again == event
    assert isinstance(again, MessageArrived)
    second.acknowledge(again)
    second.stop()  # the acknowledgement goes out before the DISCONNECT

    third = agg_node()
    third.subscribe("+", "note", Note)
    _started(third)
    assert third.next_event(timeout_s=3) is None
