"""A running aggregator under 10,000 hostile messages while honest boxes finish a round.

Real Mosquitto (no ACL, so an attacker can publish anywhere), the aggregator in this process
on the tiny model, three honest boxes (in-process transport nodes that send genuine updates;
they skip training, which is not what is under test) and one rogue box whose key is trusted
but who is not a participant. An attacker client publishes 10,000 random and mutated
messages on every topic filter the aggregator subscribes to (taken from its clients, so a
new subscription is covered automatically); the rogue sends undecodable and uninvited
updates through the real artifact protocol. Then:

- nothing escapes a handler (`handler_errors` stays 0) and the main loop never raises;
- every hostile message is refused with a reason and counted, exactly once: the transport's
  `rejected.<reason>` / `ignored.<reason>` / `*.unknown_artifact` counters, the Sparkplug
  host's `rejected` / `ignored` counters and the audit log's `update_rejected` lines add up
  to the number of hostile messages sent;
- the honest round completes, and the global adapter equals the configured strategy applied
  to the honest updates alone; the signed audit log verifies.

Bad-by-construction only: a mutation that still passes every check a receiver makes (e.g.
JSON whitespace changed outside a signed body) is a valid message, not a hostile one, so the
generator checks candidates locally and redraws those. Hostile chunks on an honest transfer's
topic always carry a wrong hash: a self-consistent forged chunk racing an honest one is
what the broker ACL (docs/protocol.md) prevents, not something a receiver can detect.
"""

import base64
import hashlib
import json
import logging
import random
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import numpy as np
import paho.mqtt.client as paho
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from paho.mqtt.enums import CallbackAPIVersion

from appliance.aggregator.service import AggregatorService
from appliance.aggregator.strategy import build_strategy
from appliance.config import AggregatorConfig, EdgeConfig, load_config
from appliance.demo.fleet import AGGREGATOR, PLANT, FleetLayout, FleetOptions, lay_out
from appliance.demo.run import TINY_TRAINING
from appliance.errors import ModelError
from appliance.federation.audit import check
from appliance.federation.codec import RoundContext, decode_update, encode_update
from appliance.federation.downlink import can_step, quantized_step
from appliance.federation.global_adapter import initial_global_adapter, load_global_adapter
from appliance.federation.messages import Evaluation, RoundAnnouncement
from appliance.federation.updates import Delta
from appliance.identity import NodeKey, TrustStore, generate_key_pair, load_public_key
from appliance.llm.gguf_file import open_gguf, tensor_shapes
from appliance.llm.tiny import make_tiny_model
from appliance.telemetry.sparkplug import DataType, Metric, Payload, encode
from appliance.transport.events import ArtifactArrived
from appliance.transport.node import NodeSettings, TransportNode
from appliance.transport.rejects import RejectedError
from appliance.transport.wire import Ack, Manifest, Want, encode_chunk, open_envelope, seal
from tests.support.mosquitto import Mosquitto
from tests.transport.forge import manifest_for, sealed_text

HOSTILE = 10_000
ROGUE_UPDATES = 10
ROGUE_OTHER = 2  # a validly signed evaluation claiming another box; an artifact of a junk kind
WAIT_S = 240.0
BOXES = ("box-1", "box-2", "box-3")


def wait_until(condition: Callable[[], object], what: str) -> None:
    deadline = time.monotonic() + WAIT_S
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)


class HonestBox:
    """A box that answers a round with a genuine update (random deltas, no training)."""

    def __init__(self, config: EdgeConfig, seed: int) -> None:
        self.config = config
        self.node_id = config.identity.node_id
        self.rng = np.random.default_rng(seed)
        self.rounds: list[RoundAnnouncement] = []
        self.sent: list[bytes] = []
        self.artifact_ids: list[str] = []
        self.globals: list[bytes] = []
        settings = NodeSettings(
            PLANT, config.mqtt, config.outbox, config.transfer, config.paths.state_dir / "t"
        )
        self.node = TransportNode(
            NodeKey.load(self.node_id, config.identity.private_key_file.get_secret_value()),
            TrustStore(config.identity.trust_dir),
            settings,
            artifact_senders=(AGGREGATOR,),
        )
        self.node.on_message(AGGREGATOR, "round", RoundAnnouncement, self._on_round)

    def received_globals(self) -> list[bytes]:
        """Global adapters delivered so far (pulled from the transport and acknowledged)."""
        while (event := self.node.next_event()) is not None:
            if isinstance(event, ArtifactArrived):
                self.globals.append(event.path.read_bytes())
                self.node.acknowledge(event)
        return self.globals

    def _on_round(self, round_: RoundAnnouncement, _signer: str) -> None:
        if not self.rounds or self.rounds[-1].round_id != round_.round_id:
            self.rounds.append(round_)

    def send_update(self, shapes: dict[str, tuple[int, ...]]) -> None:
        round_ = self.rounds[-1]
        base = initial_global_adapter(shapes, round_.plan.lora)
        deltas = {
            name: Delta(None, self.rng.normal(0, 0.01, b.shape).astype(np.float32))
            for name, (_a, b) in base.factors.items()
        }
        context = RoundContext(
            self.node_id, round_.round_id, round_.base_sha256, round_.global_version
        )
        blob = encode_update(deltas, 10 + len(self.sent), round_.plan.codec, context).blob
        self.sent.append(blob)
        artifact_id = self.node.sender.send_artifact(
            "update", blob, [AGGREGATOR], meta={"round_id": round_.round_id}
        )
        assert artifact_id is not None
        self.artifact_ids.append(artifact_id)


class Attacker:
    """Builds bad-by-construction messages for each topic filter the aggregator listens to."""

    def __init__(self, keys: dict[str, NodeKey], trust: TrustStore, seed: int) -> None:
        self.keys = keys
        self.trust = trust
        self.random = random.Random(seed)
        self.outsider = NodeKey("box-1", Ed25519PrivateKey.generate())  # right name, wrong key
        self.honest_topics: list[str] = []  # manifest topics of the honest transfers
        self.captured: list[tuple[str, bytes]] = []  # honest artifact traffic seen on the broker
        self.replaying = False
        self.kinds: Counter[str] = Counter()  # what was sent, for the failure message
        self.base = f"appliance/v1/{PLANT}"

    # -- helpers -------------------------------------------------------------------------
    def _bytes(self, n: int) -> bytes:
        return self.random.randbytes(n)

    def _mutate(self, data: bytes) -> bytes:
        out = bytearray(data)
        for _ in range(self.random.randint(1, 4)):
            op = self.random.choice("fstidp")
            pos = self.random.randrange(max(len(out), 1))
            if op == "f" and out:
                out[pos] ^= 1 << self.random.randrange(8)
            elif op == "s" and out:
                out[pos] = self.random.choice(b'\x00\xff{}":,0')
            elif op == "t":
                del out[pos:]
            elif op == "i":
                out[pos:pos] = self._bytes(self.random.randint(1, 12))
            elif op == "d" and out:
                del out[pos : pos + self.random.randint(1, 12)]
            elif op == "p" and out:
                out[pos:pos] = out[pos : pos + self.random.randint(1, 40)]
        return bytes(out)

    def _box(self) -> str:
        return self.random.choice(BOXES)

    def _valid_envelope(self, payload: bytes, writer: str, schema: type) -> bool:
        try:
            open_envelope(payload, writer, self.trust, schema)
        except RejectedError:
            return False
        return True

    def _signed_variants(self, writer: str, message: object, schema: type) -> bytes:
        """Random, mutated, outsider-signed, or trusted-signed-but-broken body."""
        key = self.keys[writer]
        good = seal(message, key)  # type: ignore[arg-type]
        for _ in range(100):
            choice = self.random.randrange(6)
            if choice == 0:
                payload = self._bytes(self.random.randint(0, 300))
            elif choice == 1:
                payload = self._mutate(good)
            elif choice == 2:
                payload = seal(message, self.outsider)  # type: ignore[arg-type]
            elif choice == 3:
                body = json.loads(good)["body"]
                try:
                    payload = sealed_text(self._mutate(body.encode()).decode(), key)
                except UnicodeDecodeError:
                    continue
            elif choice == 4:
                payload = sealed_text(json.dumps({"v": 1, "junk": self._bytes(4).hex()}), key)
            else:
                envelope = json.loads(good)
                envelope["signature"] = base64.b64encode(self._bytes(64)).decode()
                payload = json.dumps(envelope).encode()
            if not self._valid_envelope(payload, writer, schema):
                return payload
        raise AssertionError("could not draw a bad message")

    # -- per family ----------------------------------------------------------------------
    def evaluation(self, kind: str) -> tuple[str, bytes]:
        writer = self._box()
        message = Evaluation(
            round_id="r1-abc",
            global_version=1,
            node_id=writer,
            heldout_tokens=10,
            nll_base=2.0,
            nll_global=1.0,
            activated=True,
        )
        return f"{self.base}/msg/{writer}/{kind}", self._signed_variants(
            writer, message, Evaluation
        )

    def want_or_ack(self, channel: str) -> tuple[str, bytes]:
        writer, artifact = self._box(), uuid.uuid4().hex
        topic = f"{self.base}/{channel}/{writer}/{AGGREGATOR}/{artifact}"
        if self.random.random() < 0.3:  # validly signed, for an artifact we never sent
            if channel == "want":
                message: object = Want(
                    artifact_id=artifact, sender=AGGREGATOR, receiver=writer, ranges=((0, 2),)
                )
            else:
                message = Ack(
                    artifact_id=artifact, sender=AGGREGATOR, receiver=writer, sha256="0" * 64
                )
            return topic, seal(message, self.keys[writer])  # type: ignore[arg-type]
        schema = Want if channel == "want" else Ack
        message = schema(
            artifact_id=artifact,
            sender=AGGREGATOR,
            receiver=writer,
            **({"ranges": ((0, 1),)} if channel == "want" else {"sha256": "1" * 64}),
        )
        return topic, self._signed_variants(writer, message, schema)

    def manifest(self) -> tuple[str, bytes]:
        writer = self._box()
        key = self.keys[writer]
        data = b"u" * 5000
        kind = self.random.randrange(8)
        self.kinds[f"manifest.{kind}"] += 1
        now = time.time()
        if kind == 0:
            m = manifest_for(key, data, recipients=(AGGREGATOR,), created=1.0)  # 1970
        elif kind == 1:
            m = manifest_for(key, data, recipients=(AGGREGATOR,), created=now + 86400)
        elif kind == 2:
            m = manifest_for(
                key,
                b"",
                recipients=(AGGREGATOR,),
                size_bytes=10**12,
                chunk_count=10**8,
                chunk_bytes=10_000,
            )
        elif kind == 3:
            m = manifest_for(key, data, recipients=("box-9",))  # not for the aggregator
        elif kind == 4:  # published under another writer's name
            m = manifest_for(key, data, recipients=(AGGREGATOR,))
            other = next(b for b in BOXES if b != writer)
            return f"{self.base}/artifact/{other}/{m.artifact_id}/manifest", seal(m, key)
        elif kind == 5:  # topic names another artifact id
            m = manifest_for(key, data, recipients=(AGGREGATOR,))
            return f"{self.base}/artifact/{writer}/{uuid.uuid4().hex}/manifest", seal(m, key)
        else:
            m = manifest_for(key, data, recipients=(AGGREGATOR,))
            topic = f"{self.base}/artifact/{writer}/{m.artifact_id}/manifest"
            return topic, self._signed_variants(writer, m, Manifest)
        return f"{self.base}/artifact/{writer}/{m.artifact_id}/manifest", seal(m, key)

    def chunk(self) -> tuple[str, bytes]:
        if self.honest_topics and self.random.random() < 0.2:
            # aimed at a real transfer: wrong hash, index out of range, wrong size or wrong id
            manifest_topic = self.random.choice(self.honest_topics)
            artifact = manifest_topic.split("/")[-2]
            topic = manifest_topic.rsplit("/", 1)[0] + "/chunk"
            variant = self.random.randrange(4)
            if variant == 0:
                good = encode_chunk(artifact, 0, self._bytes(100))
                payload = good[:24] + hashlib.sha256(b"not this").digest() + good[56:]
            elif variant == 1:
                payload = encode_chunk(artifact, 10**6, b"x")
            elif variant == 2:
                payload = encode_chunk(artifact, 0, b"7 bytes")
            else:
                payload = encode_chunk(uuid.uuid4().hex, 0, b"x")
            return topic, payload
        writer, artifact = self._box(), uuid.uuid4().hex
        topic = f"{self.base}/artifact/{writer}/{artifact}/chunk"
        good = encode_chunk(artifact, self.random.randrange(5), self._bytes(50))
        return topic, self._mutate(good) if self.random.random() < 0.5 else self._bytes(80)

    def bad_topic(self, topic_filter: str) -> tuple[str, bytes]:
        """The filter with its wildcards filled by levels the topic tree does not allow (so the
        broker still delivers it); a filled level may be fine as long as one is not."""
        bad = ["", "..", "a" * 70, "x y", "é", "-lead"]
        levels = [
            self.random.choice([*bad, "box-1", "manifest", "chunk"]) if level == "+" else level
            for level in topic_filter.split("/")
        ]
        wild = [i for i, level in enumerate(topic_filter.split("/")) if level == "+"]
        levels[self.random.choice(wild)] = self.random.choice(bad)
        return "/".join(levels), self._bytes(20)

    def sparkplug(self, group: str) -> tuple[str, bytes]:
        ghost = f"ghost-{self.random.randrange(50)}"
        kind = self.random.randrange(6)
        birth = encode(Payload(1, 0, (Metric("bdSeq", DataType.INT64, 1),)))
        if kind == 0:
            for _ in range(100):  # a birth that fails: garbage or mutated without a bdSeq/seq
                payload = self._mutate(birth) if self.random.random() < 0.5 else self._bytes(40)
                if not _valid_birth(payload):
                    return f"spBv1.0/{group}/NBIRTH/{ghost}", payload
        if kind == 1:
            return f"spBv1.0/{group}/NDATA/{ghost}", self._bytes(30)  # never born
        if kind == 2:  # NDEATH: garbage, or a well-formed one for a session that is not live
            payload = self._bytes(30) if self.random.random() < 0.5 else birth
            return f"spBv1.0/{group}/NDEATH/{ghost}", payload
        if kind == 3:
            return f"spBv1.0/{group}/DDATA/{ghost}/dev", self._bytes(30)
        if kind == 4:
            return f"spBv1.0/{group}/NCMD/{ghost}", self._bytes(30)
        levels = self.random.choice(["XDATA/n", "NDATA", "NDATA/a/b/c", "NBIRTH//", "DDATA/n"])
        return f"spBv1.0/{group}/{levels}", self._bytes(10)

    def generic(self, topic_filter: str) -> tuple[str, bytes]:
        topic = topic_filter.replace("+", self._box()).replace("#", "x/y")
        return topic, self._bytes(self.random.randint(0, 200))

    def message_for(self, topic_filter: str) -> tuple[str, bytes]:
        levels = topic_filter.split("/")
        if topic_filter.startswith("spBv1.0/"):
            return self.sparkplug(levels[1])
        known = levels[:3] == ["appliance", "v1", PLANT]
        if known and self.random.random() < 0.05:
            return self.bad_topic(topic_filter)
        channel = levels[3] if known else ""
        family: dict[str, Callable[[], tuple[str, bytes]]] = {
            "artifact": self.artifact,
            "want": lambda: self.want_or_ack("want"),
            "ack": lambda: self.want_or_ack("ack"),
            "msg": lambda: (
                self.evaluation("evaluation")
                if levels[5] == "evaluation"
                else self.generic(topic_filter)
            ),  # a kind added later: random bytes at least
        }
        return family.get(channel, lambda: self.generic(topic_filter))()

    def artifact(self) -> tuple[str, bytes]:
        honest = {t.split("/")[5] for t in self.honest_topics}
        replays = [c for c in self.captured if c[0].split("/")[5] in honest]
        if self.replaying and replays and self.random.random() < 0.3:
            topic, payload = self.random.choice(replays)  # delivered already: a replay
            self.kinds["replay." + topic.rsplit("/", 1)[1]] += 1
            return topic, payload
        return self.manifest() if self.random.random() < 0.5 else self.chunk()


def _valid_birth(payload: bytes) -> bool:
    from appliance.telemetry.host import _bdseq
    from appliance.telemetry.sparkplug import SparkplugError, decode

    try:
        decoded = decode(payload)
        _bdseq(decoded)
    except SparkplugError:
        return False
    return decoded.seq == 0


def refusals(service: AggregatorService, audit: Path) -> dict[str, int]:
    """Every refusal the aggregator counted, by reason (transport, Sparkplug host, audit)."""
    out: dict[str, int] = {}
    for name, value in service.transport.client.counters.snapshot().items():
        if name.startswith(("rejected.", "ignored.")) or name.endswith(".unknown_artifact"):
            out[name] = value
    host = service.health.host
    for name, value in host.rejected.items():
        out[f"sparkplug.rejected.{name}"] = value
    for name, value in host.ignored.items():
        out[f"sparkplug.ignored.{name}"] = value
    if audit.exists():
        rejected = [
            r
            for line in audit.read_text().splitlines()
            if (r := json.loads(line))["kind"] == "update_rejected"
        ]
        if rejected:
            out["audit.update_rejected"] = len(rejected)
    return out


def total(counts: dict[str, int]) -> int:
    return sum(counts.values())


def settle(read: Callable[[], dict[str, int]], target: int) -> dict[str, int]:
    """The counts once they reach `target` and stay there for a few seconds (a straggler
    would push them above it), or once they stop moving below it (a message went uncounted)."""
    last, still_since = read(), time.monotonic()
    while True:
        time.sleep(0.5)
        now = read()
        if total(now) != total(last):
            last, still_since = now, time.monotonic()
        elif time.monotonic() - still_since > (3 if total(now) >= target else 20):
            return now


class RunningAggregator:
    """The aggregator daemon's loop in a thread (its SQLite objects live in that thread)."""

    def __init__(self, config: AggregatorConfig) -> None:
        self.config = config
        self.crashed: list[BaseException] = []
        self._stop = threading.Event()
        self._started = threading.Event()
        self._holder: list[AggregatorService] = []
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        try:
            service = AggregatorService(self.config)
            self._holder.append(service)
            service.start()
            self._started.set()
            try:
                while not self._stop.is_set():
                    service.step()
                    time.sleep(0.05)
            finally:
                service.stop()
        except BaseException as exc:  # the test reports it
            self.crashed.append(exc)
            self._started.set()

    def start(self) -> AggregatorService:
        self._thread.start()
        self._started.wait(60)
        assert self._holder and not self.crashed, self.crashed
        return self._holder[0]

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=30)


def start_rogue(tmp_path: Path, layout: FleetLayout, template: EdgeConfig) -> TransportNode:
    """A box whose key is trusted (added after the round opened) but who was not invited."""
    private, public = generate_key_pair(tmp_path / "rogue", "rogue")
    (layout.root / "trust" / "rogue.pub").write_bytes(public.read_bytes())
    rogue = TransportNode(
        NodeKey.load("rogue", private),
        TrustStore(layout.root / "trust"),
        NodeSettings(
            PLANT, template.mqtt, template.outbox, template.transfer, tmp_path / "rogue" / "t"
        ),
        artifact_senders=(AGGREGATOR,),
    )
    rogue.start()
    return rogue


def audit_data(audit: Path, kind: str) -> list[dict]:
    records = [json.loads(line) for line in audit.read_text().splitlines()]
    return [r["data"] for r in records if r["kind"] == kind]


def assert_honest_aggregate(
    config: AggregatorConfig, service: AggregatorService, boxes: list[HonestBox]
) -> None:
    """The global adapter is the strategy applied to the honest updates alone, as the
    downlink defines it: the base plus the int8-coded step every box rebuilds."""
    done = audit_data(service.audit.path, "round_aggregated")
    assert len(done) == 1
    assert sorted(done[0]["participants"]) == list(BOXES)
    start = load_global_adapter(service.layout.global_adapter(0))
    strategy = build_strategy(config.fleet.strategy)
    strategy.begin(start)
    for box in boxes:
        _header, update = decode_update(box.sent[0], start, 1 << 30)
        strategy.accept(update)
    want = strategy.finish().factors
    if config.fleet.downlink.mode == "delta" and can_step(start, want):
        want = quantized_step(start, want, config.fleet.downlink.block).rebuilt
    got = load_global_adapter(service.layout.global_adapter(1)).factors
    assert set(got) == set(want)
    for name in want:
        np.testing.assert_allclose(got[name][1], want[name][1], rtol=1e-6, atol=1e-9)
        np.testing.assert_array_equal(got[name][0], want[name][0])


class Storm:
    """The attacker's client and its pacing: at most ~1000 messages ahead of the aggregator,
    so the broker's queue for it never overflows (a dropped message would look uncounted)."""

    def __init__(self, port: int, attacker: Attacker, filters: list[str], counted) -> None:
        self.attacker = attacker
        self.filters = filters
        self.counted = counted
        self.sent = dict.fromkeys(filters, 0)
        self._turn = 0  # round-robin over the filters across floods, so each gets its share
        self.client = paho.Client(
            CallbackAPIVersion.VERSION2, client_id="attacker", protocol=paho.MQTTv5
        )
        self.client.on_message = self._capture
        self.client.connect("127.0.0.1", port)
        self.client.subscribe(f"appliance/v1/{PLANT}/artifact/+/+/+", qos=1)
        self.client.loop_start()

    def _capture(self, _client: object, _userdata: object, message: paho.MQTTMessage) -> None:
        if message.topic.split("/")[4] in BOXES:  # what the boxes publish (and ours)
            self.attacker.captured.append((message.topic, bytes(message.payload)))

    def flood(self, count: int) -> None:
        for i in range(count):
            topic_filter = self.filters[self._turn % len(self.filters)]
            self._turn += 1
            topic, payload = self.attacker.message_for(topic_filter)
            self.sent[topic_filter] += 1
            self.client.publish(topic, payload, qos=1).wait_for_publish(30)
            if i % 200 == 199:
                total_sent = sum(self.sent.values())
                wait_until(
                    lambda s=total_sent: self.counted() >= s - 1000, "the aggregator to keep up"
                )

    def stop(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


REASONS = (
    "rejected.malformed",
    "rejected.bad_signature",
    "rejected.invalid",
    "rejected.stale",
    "rejected.future",
    "rejected.oversize",
    "rejected.sender_mismatch",
    "rejected.bad_topic",
    "rejected.replay",
    "ignored.unknown_transfer",
    "want.unknown_artifact",
    "ack.unknown_artifact",
    "sparkplug.rejected.unborn",
    "sparkplug.rejected.nbirth",
    "audit.update_rejected",
    "rejected.claims_other_node",
    "rejected.unexpected_artifact",
)


def assert_every_message_refused(
    running: RunningAggregator, service: AggregatorService, storm: Storm, baseline: int
) -> None:
    """No crash, nothing escaped a handler, each hostile message counted exactly once."""
    expected = HOSTILE + ROGUE_UPDATES + ROGUE_OTHER
    counts = settle(lambda: refusals(service, service.audit.path), baseline + expected)
    assert total(counts) - baseline == expected, json.dumps([counts, storm.attacker.kinds])
    assert not running.crashed, running.crashed
    assert service.transport.client.counters.get("handler_errors") == 0
    assert service.health.host.client.counters.get("handler_errors") == 0
    assert all(sent >= HOSTILE // len(storm.filters) for sent in storm.sent.values())
    missing = [r for r in REASONS if not counts.get(r)]
    assert not missing, (missing, counts)


@pytest.mark.timeout(600)
def test_aggregator_survives_10000_hostile_messages_during_an_honest_round(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.ERROR)  # 10,000 warnings are the point; keep the report short
    broker = Mosquitto(tmp_path / "broker", max_packet_size=2_000_000).start()
    model = make_tiny_model(tmp_path / "tiny.gguf")
    layout = lay_out(tmp_path, FleetOptions(3, 1, str(model), broker.port, 20, TINY_TRAINING))
    config = load_config(layout.config(AGGREGATOR))
    assert isinstance(config, AggregatorConfig)
    configs = [load_config(layout.config(box)) for box in BOXES]
    boxes = [HonestBox(c, seed=100 + i) for i, c in enumerate(configs)]  # type: ignore[arg-type]
    keys = {
        b.node_id: NodeKey.load(b.node_id, layout.root / b.node_id / "keys" / f"{b.node_id}.key")
        for b in boxes
    }
    running = RunningAggregator(config)
    service = running.start()
    audit = layout.audit_log
    storm: Storm | None = None
    rogue: TransportNode | None = None
    try:
        for box in boxes:
            box.node.start()
        wait_until(lambda: running.crashed or all(b.rounds for b in boxes), "the round at boxes")
        assert not running.crashed, running.crashed
        filters = sorted(  # every subscription of the aggregator's two MQTT clients
            {f for f, _ in service.transport.client._handlers}
            | {f for f, _ in service.health.host.client._handlers}
        )
        assert any(f.startswith("spBv1.0/") for f in filters)
        attacker = Attacker(keys, TrustStore(layout.root / "trust"), seed=8)
        baseline = total(refusals(service, audit))
        storm = Storm(
            broker.port, attacker, filters, lambda: total(refusals(service, audit)) - baseline
        )
        storm.flood(HOSTILE // 4)  # the round is open; no update has arrived yet
        shapes = tensor_shapes(open_gguf(model, ModelError))
        for box in boxes:  # the honest updates go out in the middle of the storm
            box.send_update(shapes)
        attacker.honest_topics = [
            f"appliance/v1/{PLANT}/artifact/{b.node_id}/{b.artifact_ids[0]}/manifest" for b in boxes
        ]
        rogue = start_rogue(tmp_path, layout, boxes[0].config)
        round_id = boxes[0].rounds[-1].round_id
        for i in range(ROGUE_UPDATES):  # garbage, and a well-formed update from a non-participant
            data = boxes[0].sent[0] if i % 2 else attacker._bytes(3000)
            rogue.sender.send_artifact("update", data, [AGGREGATOR], meta={"round_id": round_id})
        rogue.publish(
            "evaluation",
            Evaluation(
                round_id=round_id,
                global_version=1,
                node_id=boxes[0].node_id,
                heldout_tokens=10,
                nll_base=2.0,
                nll_global=1.0,
                activated=True,
            ),
        )
        rogue.sender.send_artifact(
            "junk", boxes[0].sent[0], [AGGREGATOR], meta={"round_id": round_id}
        )
        storm.flood(HOSTILE // 2)
        wait_until(lambda: audit_data(audit, "round_aggregated"), "the honest round")
        attacker.replaying = True  # replays of what the honest boxes delivered are refused too
        storm.flood(HOSTILE - HOSTILE // 4 - HOSTILE // 2)

        assert_every_message_refused(running, service, storm, baseline)
        assert_honest_aggregate(config, service, boxes)
        wait_until(
            lambda: all(b.received_globals() for b in boxes), "the global adapter at every box"
        )
        key = load_public_key(layout.root / AGGREGATOR / "keys" / f"{AGGREGATOR}.pub")
        verified = check(audit, key)
        assert verified.signed == verified.head.seq
    finally:
        running.stop()
        for node in [*(b.node for b in boxes), *([rogue] if rogue else [])]:
            node.stop()
        if storm is not None:
            storm.stop()
        broker.stop()
