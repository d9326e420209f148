"""Secure aggregation through a real Mosquitto: four boxes and the aggregator, each a full
transport node (own outbox, signed envelopes, chunked artifacts), run a round in which one box
drops out; its late update and a replayed update are refused; forged messages are refused."""

import threading
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from appliance.config.transfer import OutboxSettings, TransferSettings
from appliance.identity import NodeKey
from appliance.privacy.secagg import (
    Collector,
    MaskKey,
    Participant,
    SecAggError,
    secure_fedavg,
)
from appliance.privacy.secagg.session import (
    KEY,
    MASKED_UPDATE,
    AggregatorSession,
    BoxSession,
)
from appliance.transport.events import ArtifactArrived
from appliance.transport.node import NodeSettings, TransportNode
from tests.privacy.secagg_support import AGG, FIXED, ROUND, World, deltas, mask_key, world
from tests.support.mosquitto import Mosquitto
from tests.transport.conftest import mqtt_settings
from tests.transport.waiting import wait_for

WAIT_S = 60.0
PLANT = "plant1"


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[Mosquitto]:
    mosquitto = Mosquitto(tmp_path / "broker")
    mosquitto.start()
    yield mosquitto
    mosquitto.kill()


class Fleet:
    """The aggregator's and the boxes' transport nodes and secure-aggregation sessions."""

    def __init__(self, w: World, broker: Mosquitto, tmp_path: Path) -> None:
        self.w, self.broker = w, broker
        self.nodes: list[TransportNode] = []
        self.agg_node = self._node(w.agg, tmp_path)
        self.agg = AggregatorSession(self.agg_node)
        self.ignored: list[str] = []
        self.boxes: dict[str, BoxSession] = {}
        for key in w.boxes:
            node = self._node(key, tmp_path)
            self.boxes[key.node_id] = BoxSession(node, AGG)
        for node in self.nodes:
            node.start()
        self._stopping = threading.Event()
        self._consumer = threading.Thread(target=self._take_artifacts, daemon=True)
        self._consumer.start()
        for node in self.nodes:
            node.client.wait_connected(WAIT_S)

    def _node(self, key: NodeKey, tmp_path: Path) -> TransportNode:
        settings = NodeSettings(
            PLANT,
            mqtt_settings(self.broker),
            OutboxSettings(),
            TransferSettings(),
            tmp_path / f"state-{key.node_id}",
        )
        node = TransportNode(key, self.w.trust, settings)
        self.nodes.append(node)
        return node

    def _take_artifacts(self) -> None:
        """The aggregator's main loop, as far as this test needs one: pull, hand masked
        updates to the session, acknowledge."""
        while not self._stopping.is_set():
            event = self.agg_node.next_event(timeout_s=0.1)
            if not isinstance(event, ArtifactArrived):
                continue
            if event.manifest.kind == MASKED_UPDATE:
                self.agg.on_artifact(event)
            else:
                self.ignored.append(event.manifest.kind)
            self.agg_node.acknowledge(event)

    def rejected(self, node: TransportNode, reason: str) -> int:
        return node.client.counters.get(f"rejected.{reason}")

    def stop(self) -> None:
        self._stopping.set()
        self._consumer.join(timeout=5)
        for node in self.nodes:
            node.stop()


@pytest.fixture
def fleet(tmp_path: Path, broker: Mosquitto) -> Iterator[Fleet]:
    made = Fleet(world(tmp_path, 4, seed=5), broker, tmp_path)
    yield made
    made.stop()


def test_a_round_with_a_dropout_over_the_broker(fleet: Fleet) -> None:
    w, agg = fleet.w, fleet.agg
    rng = np.random.default_rng(5)
    names = [b.node_id for b in w.boxes]
    collector = Collector(ROUND, tuple(names), w.layout, FIXED, w.trust)
    agg.begin(collector)
    participants = {
        key.node_id: Participant(key, w.trust, AGG, ROUND, 2, mask_key(rng)) for key in w.boxes
    }
    for name, session in fleet.boxes.items():
        session.join(participants[name])
    assert agg.wait(lambda c: len(c.keys_received) == 4, WAIT_S), "all four mask keys"
    keyset = agg.publish_keys()
    for session in fleet.boxes.values():
        assert session.keys_ready.wait(WAIT_S)
        assert session.participant is not None and session.participant.keyset == keyset

    encoded = {
        name: FIXED.encode(deltas(w.base, rng), w.layout, int(rng.integers(10, 500)))
        for name in names
    }
    late_blob = participants["box3"].mask(encoded["box3"], w.layout)  # box3 goes quiet
    sent = {
        name: fleet.boxes[name].send(encoded[name], w.layout) for name in ("box1", "box2", "box4")
    }
    assert agg.wait(lambda c: len(c.reported) == 3, WAIT_S), "three masked updates"

    commit = agg.publish_commit()
    assert commit.reporting == ("box1", "box2", "box4") and commit.dropped == ("box3",)
    assert agg.wait(lambda c: not c.missing_reveals(), WAIT_S), "seed reveals"
    result = agg.unmask()
    plain = sum(encoded[n].values.view(np.int32).astype(np.int64) for n in commit.reporting)
    assert np.array_equal(result.total, plain)
    assert result.total_weight == sum(encoded[n].weight for n in commit.reporting)
    aggregate = secure_fedavg(w.base, result)
    assert aggregate.report["updates"] == 3 and aggregate.report["dropped"] == 1

    # box3 learns it was dropped: it reveals nothing (it did not report)
    box3 = fleet.boxes["box3"].transport
    wait_for(lambda: fleet.rejected(box3, "not_reporting") == 1, "box3 refusing to reveal")
    # its update, delivered late, is refused; so is box1's update sent again
    box3.sender.send_artifact(MASKED_UPDATE, late_blob, [AGG], meta={"round_id": ROUND})
    wait_for(lambda: fleet.rejected(fleet.agg_node, "late") == 1, "late update refused")
    with pytest.raises(SecAggError, match="already_masked"):  # a box masks once per round
        participants["box1"].mask(encoded["box1"], w.layout)
    box1 = fleet.boxes["box1"].transport
    box1.sender.send_artifact(MASKED_UPDATE, sent["box1"], [AGG], meta={"round_id": ROUND})
    wait_for(lambda: fleet.rejected(fleet.agg_node, "replay") == 1, "replayed update refused")
    # the refused traffic did not change the result
    assert np.array_equal(agg.unmask().total, plain)


def test_forged_secure_aggregation_messages_are_refused_over_the_broker(fleet: Fleet) -> None:
    w, agg = fleet.w, fleet.agg
    names = tuple(b.node_id for b in w.boxes)
    agg.begin(Collector(ROUND, names, w.layout, FIXED, w.trust))
    box1 = fleet.boxes["box1"].transport
    box2_key = next(k for k in w.boxes if k.node_id == "box2")
    # box1 publishes, under its own envelope, a key that claims to be box2's
    forged = MaskKey.create(box2_key, ROUND, b"\x01" * 32)
    box1.publish(KEY, forged)
    wait_for(lambda: fleet.rejected(fleet.agg_node, "sender_mismatch") == 1, "impersonation")
    # a key whose inner signature does not cover its public key
    genuine = MaskKey.create(box1.key, ROUND, b"\x02" * 32)
    box1.publish(KEY, genuine.model_copy(update={"public_key": forged.public_key}))
    wait_for(lambda: fleet.rejected(fleet.agg_node, "bad_signature") == 1, "bad signature")
    # a key for another round
    box1.publish(KEY, MaskKey.create(box1.key, "r7-elsewhere", b"\x03" * 32))
    wait_for(lambda: fleet.rejected(fleet.agg_node, "wrong_round") == 1, "wrong round")
    # a truncated masked update artifact (before the key set: refused as out of phase)
    box1.sender.send_artifact(MASKED_UPDATE, b"APSM\x01", [AGG], meta={"round_id": ROUND})
    wait_for(lambda: fleet.rejected(fleet.agg_node, "wrong_phase") == 1, "update before keys")
    # after all that, genuine keys are still accepted; then a truncated or overlong update
    box1.publish(KEY, genuine)
    box2 = fleet.boxes["box2"].transport
    box2.publish(KEY, MaskKey.create(box2.key, ROUND, b"\x04" * 32))
    assert agg.wait(lambda c: {"box1", "box2"} <= set(c.keys_received), WAIT_S)
    agg.publish_keys()
    box1.sender.send_artifact(MASKED_UPDATE, b"APSM\x01", [AGG], meta={"round_id": ROUND})
    wait_for(lambda: fleet.rejected(fleet.agg_node, "truncated") == 1, "truncated update")
    # a box that is not in the key set cannot take part either
    box3 = fleet.boxes["box3"].transport
    box3.publish(KEY, MaskKey.create(box3.key, ROUND, b"\x05" * 32))
    wait_for(lambda: fleet.rejected(fleet.agg_node, "late") == 1, "key after the key set")
    assert fleet.ignored == []
