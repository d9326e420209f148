"""Bad input on the transfer topics: each case refused with its own reason, nothing lost.

One receiver (`agg`) takes a stream of forged, damaged and replayed messages; each must raise
its own `rejected.<reason>` counter and log line, and the receiver must still accept a good
artifact afterwards.
"""

import hashlib
import json
import logging
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from appliance.config.transfer import TransferSettings
from appliance.identity import NodeKey, TrustStore, generate_key_pair
from appliance.transport.client import MqttClient
from appliance.transport.outbox import Outbox
from appliance.transport.topics import Topics
from appliance.transport.wire import Ack, Want, encode_chunk, seal
from tests.support.mosquitto import Mosquitto
from tests.transport.conftest import WAIT_S, mqtt_settings
from tests.transport.forge import chunks_for, manifest_for, sealed, sealed_text
from tests.transport.nodes import PLANT, Node, start_node
from tests.transport.waiting import wait_for

TOPICS = Topics(PLANT)
DATA = bytes(range(256)) * 200  # 51,200 bytes: 6 chunks of 10,000


@pytest.fixture
def agg(
    tmp_path: Path, broker: Mosquitto, keys: Callable[[str], NodeKey], trust: TrustStore
) -> Iterator[Node]:
    settings = TransferSettings(max_artifact_mb=1, request_after_s=1)
    node = start_node(
        keys("agg"), trust, mqtt_settings(broker), tmp_path / "agg", transfer=settings
    )
    node.client.wait_connected(WAIT_S)
    yield node
    node.stop()


@pytest.fixture
def raw(broker: Mosquitto, clients: Callable[..., MqttClient]) -> MqttClient:
    """A plain client that publishes whatever a test hands it."""
    client = clients(mqtt_settings(broker), "raw-publisher")
    client.start()
    client.wait_connected(WAIT_S)
    return client


def _expect(node: Node, reason: str, count: int = 1) -> None:
    wait_for(lambda: node.counters.get(f"rejected.{reason}", 0) >= count, f"rejected.{reason}")


def test_signature_signer_replay_and_size_checks_on_manifests(
    agg: Node,
    raw: MqttClient,
    keys: Callable[[str], NodeKey],
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING)
    box = keys("box1")
    mallory = keys("mallory")  # trusted, but signs in box1's name

    forged = manifest_for(box, DATA)
    raw.publish(TOPICS.manifest("box1", forged.artifact_id), sealed(forged, mallory))
    _expect(agg, "bad_signature")
    assert "rejected manifest on appliance/v1/plant1/artifact/box1/" in caplog.text
    assert "bad_signature: signature does not match 'box1'" in caplog.text

    private, _ = generate_key_pair(tmp_path / "untrusted", "stranger")
    stranger = NodeKey.load("stranger", private)
    unknown = manifest_for(stranger, DATA)
    raw.publish(TOPICS.manifest("stranger", unknown.artifact_id), sealed(unknown, stranger))
    _expect(agg, "unknown_signer")
    assert "unknown_signer: no trusted key for 'stranger'" in caplog.text

    mismatch = manifest_for(box, DATA)
    raw.publish(TOPICS.manifest("mallory", mismatch.artifact_id), sealed(mismatch, mallory))
    _expect(agg, "sender_mismatch")

    big = manifest_for(box, b"x" * (2 * 1024 * 1024), chunk_bytes=100_000)
    raw.publish(TOPICS.manifest("box1", big.artifact_id), sealed(big, box))
    _expect(agg, "oversize")
    assert "has 2097152 bytes; the limit is 1048576 (transfer.max_artifact_mb)" in caplog.text

    old = manifest_for(box, DATA, created=1.0)
    raw.publish(TOPICS.manifest("box1", old.artifact_id), sealed(old, box))
    _expect(agg, "stale")

    good = manifest_for(box, DATA)
    payload = sealed(good, box)
    raw.publish(TOPICS.manifest("box1", good.artifact_id), payload)
    for chunk in chunks_for(good, DATA):
        raw.publish(TOPICS.chunk("box1", good.artifact_id), chunk)
    wait_for(lambda: len(agg.received) == 1, "the genuine artifact")
    raw.publish(TOPICS.manifest("box1", good.artifact_id), payload)  # replayed as is
    for chunk in chunks_for(good, DATA):
        raw.publish(TOPICS.chunk("box1", good.artifact_id), chunk)
    _expect(agg, "replay")
    assert f"replay: artifact {good.artifact_id} from box1 was already delivered" in caplog.text
    assert len(agg.received) == 1
    assert agg.counters["manifests_accepted"] == 1


def test_hash_mismatch_of_reassembled_artifact_is_rejected(
    tmp_path: Path,
    agg: Node,
    raw: MqttClient,
    keys: Callable[[str], NodeKey],
    caplog: pytest.LogCaptureFixture,
) -> None:
    box = keys("box1")
    lie = manifest_for(box, DATA, sha256=hashlib.sha256(b"something else").hexdigest())
    raw.publish(TOPICS.manifest("box1", lie.artifact_id), sealed(lie, box))
    for chunk in chunks_for(lie, DATA):
        raw.publish(TOPICS.chunk("box1", lie.artifact_id), chunk)
    _expect(agg, "hash_mismatch")
    assert "differs from the signed manifest" in caplog.text
    assert agg.received == []
    assert not list((tmp_path / "agg" / "transfers" / "inbox").iterdir())
    assert not list((tmp_path / "agg" / "transfers" / "partial").iterdir())


def test_malformed_payloads_are_each_rejected_and_receiver_keeps_working(
    agg: Node, raw: MqttClient, keys: Callable[[str], NodeKey]
) -> None:
    box = keys("box1")
    aid = "ab" * 16
    manifest_topic = TOPICS.manifest("box1", aid)
    cases: list[tuple[bytes, str]] = [
        (b"\xff not json at all", "malformed"),
        (b'{"v": 1, "body": "{}", "signa', "malformed"),  # truncated
        (b'{"v": 1, "body": 5, "signature": "AA=="}', "malformed"),  # wrong type
        (b"x" * 70_000, "too_large"),
        (sealed_text('{"v": 1}', box), "invalid"),
    ]
    good = manifest_for(box, DATA, artifact_id=aid)
    body = json.loads(good.model_dump_json())
    for field, value in [("created", "NaN"), ("size_bytes", '"51200"'), ("v", "2")]:
        text = json.dumps({**body, field: "@"}).replace('"@"', value)
        cases.append((sealed_text(text, box), "invalid"))
    for payload, reason in cases:
        before = agg.counters.get(f"rejected.{reason}", 0)
        raw.publish(manifest_topic, payload)
        _expect(agg, reason, before + 1)
    assert agg.counters["rejected.invalid"] == 4

    raw.publish(TOPICS.manifest("box1", aid), sealed(good, box))
    wait_for(lambda: agg.counters.get("manifests_accepted") == 1, "the good manifest")
    chunk_topic = TOPICS.chunk("box1", aid)
    chunks = chunks_for(good, DATA)
    bad_chunks: list[tuple[bytes, str]] = [
        (b"short", "malformed_chunk"),
        (b"XXXX" + chunks[0][4:], "malformed_chunk"),
        (encode_chunk("cd" * 16, 0, DATA[:10_000]), "malformed_chunk"),
        (encode_chunk(aid, 99, DATA[:10_000]), "bad_chunk_index"),
        (encode_chunk(aid, 0, DATA[:9_999]), "bad_chunk_size"),
        (chunks[0][:-1] + b"\x00", "corrupt_chunk"),
    ]
    for payload, reason in bad_chunks:
        before = agg.counters.get(f"rejected.{reason}", 0)
        raw.publish(chunk_topic, payload)
        _expect(agg, reason, before + 1)
    raw.publish(f"appliance/v1/{PLANT}/artifact/box1/{aid}/unknown", b"?")
    _expect(agg, "bad_topic")
    for chunk in chunks:
        raw.publish(chunk_topic, chunk)
    wait_for(lambda: agg.received, "the artifact after all the garbage")
    assert agg.received[0][1] == hashlib.sha256(DATA).hexdigest()
    assert agg.counters.get("handler_errors", 0) == 0


def test_corrupted_chunk_is_fetched_again_from_the_sender(
    tmp_path: Path,
    agg: Node,
    raw: MqttClient,
    keys: Callable[[str], NodeKey],
    trust: TrustStore,
) -> None:
    box = keys("box1")
    # box1's outbox holds the artifact and its manifest, as a previous run would have left.
    outbox = Outbox(tmp_path / "box1" / "outbox.sqlite", agg.outbox.settings)
    entry = outbox.put_artifact("ef" * 16, "update", DATA, ["agg"])
    assert entry is not None
    manifest = manifest_for(box, DATA, artifact_id=entry.artifact_id, created=entry.created)
    outbox.set_manifest(entry.seq, sealed(manifest, box))
    outbox.close()
    # The chunks arrive, chunk 2 damaged on the way.
    chunks = chunks_for(manifest, DATA)
    chunks[2] = chunks[2][:-5] + b"\x00" * 5
    raw.publish(TOPICS.manifest("box1", manifest.artifact_id), sealed(manifest, box))
    for chunk in chunks:
        raw.publish(TOPICS.chunk("box1", manifest.artifact_id), chunk)
    _expect(agg, "corrupt_chunk")
    expected = {f"box1/{manifest.artifact_id}": (5, 6)}
    wait_for(lambda: agg.receiver.progress() == expected, "the five intact chunks on disk")
    # The sender comes up, re-announces; the receiver asks for chunk 2 and gets it.
    sender = start_node(box, trust, agg.client.settings, tmp_path / "box1")
    try:
        wait_for(lambda: agg.received and sender.outbox.count() == 0, "repair and ack")
        assert agg.received[0][1] == hashlib.sha256(DATA).hexdigest()
        assert sender.counters["wants_received"] >= 1
        assert sender.counters["chunks_sent"] >= 1
    finally:
        sender.stop()


def test_forged_and_mismatched_acks_do_not_release_the_outbox(
    tmp_path: Path,
    broker: Mosquitto,
    raw: MqttClient,
    keys: Callable[[str], NodeKey],
    trust: TrustStore,
) -> None:
    box_key, agg_key, mallory = keys("box1"), keys("agg"), keys("mallory")
    box = start_node(box_key, trust, mqtt_settings(broker), tmp_path / "box1")
    try:
        box.client.wait_connected(WAIT_S)
        aid = box.sender.send_artifact("update", DATA, ["agg"])
        assert aid is not None
        wait_for(lambda: box.counters.get("chunks_sent", 0) >= 1, "chunks out")
        sha = hashlib.sha256(DATA).hexdigest()
        forged = Ack(artifact_id=aid, sender="box1", receiver="agg", sha256=sha)
        raw.publish(TOPICS.ack("agg", "box1", aid), seal(forged, mallory))
        _expect(box, "bad_signature")
        wrong = Ack(artifact_id=aid, sender="box1", receiver="agg", sha256="0" * 64)
        raw.publish(TOPICS.ack("agg", "box1", aid), seal(wrong, agg_key))
        _expect(box, "ack_mismatch")
        outsider = Ack(artifact_id=aid, sender="box1", receiver="mallory", sha256=sha)
        raw.publish(TOPICS.ack("mallory", "box1", aid), seal(outsider, mallory))
        _expect(box, "not_recipient")
        assert box.outbox.count() == 1
        want_topic = TOPICS.want("agg", "box1", aid)
        raw.publish(want_topic, b'{"v": 1, "body": "{\\"v\\": 1}", "signature": "%%%"}')
        _expect(box, "malformed")
        lying = Want(artifact_id=aid, sender="box1", receiver="mallory", ranges=((0, 1),))
        raw.publish(want_topic, seal(lying, agg_key))
        _expect(box, "sender_mismatch")
        raw.publish(want_topic, seal(lying, mallory))
        _expect(box, "bad_signature", 2)
        assert box.counters.get("wants_received", 0) == 0
        genuine = Ack(artifact_id=aid, sender="box1", receiver="agg", sha256=sha)
        raw.publish(TOPICS.ack("agg", "box1", aid), seal(genuine, agg_key))
        wait_for(lambda: box.outbox.count() == 0, "the genuine ack")
    finally:
        box.stop()
