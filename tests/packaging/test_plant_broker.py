"""The plant broker example (packaging/mosquitto/) on a real Mosquitto, with identities made
by firmware_scripts/provision-identity and signed by firmware_scripts/plant-ca-sign: mutual
TLS, the certificate's CN as user name, and an ACL that lets each box write only its own
topics and only the aggregator publish rounds, global adapters and Sparkplug commands."""

import os
import ssl
import subprocess
import threading
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import paho.mqtt.client as paho
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from tests.support.mosquitto import Mosquitto
from tests.support.pki import TestCA
from tests.transport.waiting import wait_for

ROOT = Path(__file__).resolve().parents[2]
CONF = ROOT / "packaging" / "mosquitto" / "appliance.conf"
ACL = ROOT / "packaging" / "mosquitto" / "acl"
PROVISION = ROOT / "firmware_scripts" / "provision-identity"
CA_SIGN = ROOT / "firmware_scripts" / "plant-ca-sign"
BASE = "appliance/v1/plant1"
OK, NOT_AUTHORIZED = "accepted", 0x87
WAIT_S = 30.0


@dataclass
class PlantBroker(Mosquitto):
    """Mosquitto running the shipped snippet, its paths and port moved to the test's."""

    pki_dir: Path = field(default_factory=Path)

    def _config(self) -> str:
        snippet = CONF.read_text()
        snippet = snippet.replace("listener 8883", f"listener {self.port} 127.0.0.1")
        snippet = snippet.replace("/etc/mosquitto/appliance/", f"{self.pki_dir}/")
        head = [
            "user root" if os.geteuid() == 0 else "",
            f"log_dest file {self.log_file}",
            "log_type all",
            "persistence false",
        ]
        return "\n".join(line for line in head if line) + "\n" + snippet


def run(*args: object) -> str:
    done = subprocess.run(
        [str(a) for a in args], capture_output=True, text=True, check=False, timeout=60
    )
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


def provision(node: str, directory: Path, ca: Path, server: bool = False) -> None:
    """What a plant does: the node makes its key and CSR, the CA signs the CSR."""
    csr = run(PROVISION, "--id", node, "--plant", "plant1", "--dir", directory)
    extra = ["--server", "localhost,127.0.0.1"] if server else []
    run(CA_SIGN, "sign", ca, csr, *extra)


@pytest.fixture(scope="module")
def plant(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[PlantBroker, Path]]:
    base = tmp_path_factory.mktemp("plant")
    ca, pki, nodes = base / "ca", base / "pki", base / "nodes"
    run(CA_SIGN, "init", ca, "--name", "plant1 appliance CA")
    provision("broker", pki, ca, server=True)
    for node in ("box-01", "box-02", "aggregator"):
        provision(node, nodes, ca)
    (pki / "plant-ca.pem").write_bytes((ca / "ca.pem").read_bytes())
    (pki / "acl").write_bytes(ACL.read_bytes())
    broker = PlantBroker(base / "broker", pki_dir=pki)
    broker.start()
    yield broker, nodes
    broker.stop()


class Node:
    """A paho MQTT v5 client with a TLS client certificate."""

    def __init__(self, broker: PlantBroker, cert: Path, key: Path, ca: Path) -> None:
        self.connected, self.gone = threading.Event(), threading.Event()
        self.acks: dict[int, int] = {}
        self.received: list[str] = []
        self._lock = threading.Lock()
        self.client = paho.Client(
            CallbackAPIVersion.VERSION2, client_id=f"t-{uuid.uuid4().hex[:8]}",
            protocol=paho.MQTTv5,
        )
        self.client.tls_set(ca_certs=str(ca), certfile=str(cert), keyfile=str(key))
        self.client.on_connect = lambda c, u, f, rc, p: rc.is_failure or self.connected.set()
        self.client.on_disconnect = lambda c, u, f, rc, p: self.gone.set()
        self.client.on_publish = self._on_publish
        self.client.on_message = lambda c, u, m: self.received.append(m.topic)
        self.port = broker.port

    def _on_publish(self, _c: object, _u: object, mid: int, rc: paho.ReasonCode, _p: object) -> None:
        with self._lock:
            self.acks[mid] = rc.value

    def connect(self) -> bool:
        """True once the broker accepted us; False if TLS or the broker refused."""
        try:
            self.client.connect("127.0.0.1", self.port, keepalive=10)
        except (ssl.SSLError, OSError):
            return False
        self.client.loop_start()
        wait_for(lambda: self.connected.is_set() or self.gone.is_set(), "CONNACK or refusal")
        return self.connected.is_set()

    def publish(self, topic: str) -> int | str:
        """PUBACK of one QoS 1 message: OK for any success code (0x00, or 0x10 "no matching
        subscribers"), else the failure's reason code."""
        info = self.client.publish(topic, b"x", qos=1)
        wait_for(lambda: info.mid in self.acks, f"PUBACK for {topic}", WAIT_S)
        code = self.acks[info.mid]
        return OK if code < 0x80 else code

    def subscribe(self, *filters: str) -> None:
        done = threading.Event()
        self.client.on_subscribe = lambda c, u, mid, rcs, p: done.set()
        self.client.subscribe([(f, 1) for f in filters])
        assert done.wait(WAIT_S)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


@pytest.fixture
def nodes(plant: tuple[PlantBroker, Path]) -> Iterator[dict[str, Node]]:
    broker, directory = plant
    made = {}
    for name in ("box-01", "box-02", "aggregator"):
        node = Node(broker, directory / f"{name}.pem", directory / f"{name}.key",
                    broker.pki_dir / "plant-ca.pem")
        assert node.connect(), broker.log_text()[-2000:]
        made[name] = node
    yield made
    for node in made.values():
        node.close()


ARTIFACT = uuid.uuid4().hex


@pytest.mark.parametrize(
    ("topic", "expected"),
    [
        (f"{BASE}/msg/box-01/evaluation", OK),
        (f"{BASE}/artifact/box-01/{ARTIFACT}/manifest", OK),
        (f"{BASE}/want/box-01/aggregator/{ARTIFACT}", OK),
        ("spBv1.0/plant1/NBIRTH/box-01", OK),
        ("spBv1.0/plant1/DDATA/box-01/gpu0", OK),
        (f"{BASE}/msg/box-02/evaluation", NOT_AUTHORIZED),  # another box's topic
        (f"{BASE}/msg/aggregator/round", NOT_AUTHORIZED),  # a round announcement
        (f"{BASE}/artifact/aggregator/{ARTIFACT}/manifest", NOT_AUTHORIZED),  # a global adapter
        (f"{BASE}/ack/box-02/aggregator/{ARTIFACT}", NOT_AUTHORIZED),
        ("spBv1.0/plant1/NBIRTH/box-02", NOT_AUTHORIZED),
        ("spBv1.0/plant1/NCMD/box-02", NOT_AUTHORIZED),  # only the host sends commands
        ("spBv1.0/STATE/aggregator", NOT_AUTHORIZED),  # only the host has a STATE
        ("appliance/v1/plant2/msg/box-01/evaluation", NOT_AUTHORIZED),  # another plant
    ],
)
def test_a_box_writes_only_its_own_topics(
    nodes: dict[str, Node], topic: str, expected: int | str
) -> None:
    assert nodes["box-01"].publish(topic) == expected


@pytest.mark.parametrize(
    "topic",
    [
        f"{BASE}/msg/aggregator/round",
        f"{BASE}/artifact/aggregator/{ARTIFACT}/chunk",
        f"{BASE}/want/aggregator/box-01/{ARTIFACT}",
        "spBv1.0/plant1/NCMD/box-01",
        "spBv1.0/STATE/aggregator",
    ],
)
def test_the_aggregator_publishes_rounds_adapters_and_commands(
    nodes: dict[str, Node], topic: str
) -> None:
    assert nodes["aggregator"].publish(topic) == OK


def test_boxes_read_the_aggregator_but_not_each_other(nodes: dict[str, Node]) -> None:
    box1, box2, agg = nodes["box-01"], nodes["box-02"], nodes["aggregator"]
    box2.subscribe("appliance/v1/#", "spBv1.0/#")
    agg.subscribe("appliance/v1/plant1/#", "spBv1.0/plant1/#")
    private = [f"{BASE}/msg/box-01/evaluation", "spBv1.0/plant1/NDATA/box-01",
               f"{BASE}/want/box-01/aggregator/{ARTIFACT}"]
    for topic in private:
        assert box1.publish(topic) == OK
    for topic in (f"{BASE}/want/aggregator/box-01/{ARTIFACT}", "spBv1.0/plant1/NCMD/box-01"):
        assert agg.publish(topic) == OK  # addressed to box-01: box-02 must not see it
    marker = f"{BASE}/msg/aggregator/round"
    assert agg.publish(marker) == OK
    wait_for(lambda: marker in box2.received, "the round at box-02")
    assert box2.received == [marker]
    wait_for(lambda: set(private) <= set(agg.received), "box-01's messages at the aggregator")


def test_identities_from_another_ca_or_without_a_certificate_are_refused(
    plant: tuple[PlantBroker, Path], tmp_path: Path
) -> None:
    broker, _ = plant
    rogue_ca = TestCA(tmp_path / "rogue")
    forged = rogue_ca.issue("aggregator")  # the right name, the wrong CA
    node = Node(broker, forged.cert_file, forged.key_file, broker.pki_dir / "plant-ca.pem")
    assert not node.connect()
    node.client.loop_stop()
    anonymous = paho.Client(CallbackAPIVersion.VERSION2, protocol=paho.MQTTv5)
    anonymous.tls_set(ca_certs=str(broker.pki_dir / "plant-ca.pem"))
    refused = threading.Event()
    anonymous.on_connect = lambda c, u, f, rc, p: rc.is_failure and refused.set()
    anonymous.on_disconnect = lambda c, u, f, rc, p: refused.set()
    try:
        anonymous.connect("127.0.0.1", broker.port, keepalive=10)
    except (ssl.SSLError, OSError):
        refused.set()
    else:
        anonymous.loop_start()
    assert refused.wait(WAIT_S)
    anonymous.loop_stop()
