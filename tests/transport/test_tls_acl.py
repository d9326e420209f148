"""Mutual TLS with a test CA and a `%u` ACL: identities come from certificates."""

import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

from appliance.config.mqtt import TlsSettings
from appliance.transport.client import Inbound, MqttClient, PublishResult
from appliance.transport.tls import TransportConfigError
from appliance.transport.topics import Topics
from tests.support.mosquitto import BrokerTls, Mosquitto
from tests.support.pki import TestCA
from tests.transport.conftest import WAIT_S, mqtt_settings
from tests.transport.waiting import wait_for

TOPICS = Topics("plant1")
ACL = """\
# The aggregator reads the whole plant; every node writes only below its own name (the 5th
# level); boxes read only what the aggregator writes (docs/protocol.md).
user agg
topic read appliance/v1/plant1/#

pattern write appliance/v1/plant1/+/%u/#
pattern read appliance/v1/plant1/+/agg/#
"""


@pytest.fixture
def pki(tmp_path: Path) -> TestCA:
    return TestCA(tmp_path / "pki")


@pytest.fixture
def tls_broker(tmp_path: Path, pki: TestCA, broker_factory: Callable[..., Mosquitto]) -> Mosquitto:
    server = pki.issue("broker", server=True)
    acl = tmp_path / "acl"
    acl.write_text(ACL)
    tls = BrokerTls(
        pki.ca_file,
        server.cert_file,
        server.key_file,
        require_certificate=True,
        use_identity_as_username=True,
    )
    return broker_factory(tls=tls, acl_file=acl, allow_anonymous=False)


def _client(
    broker: Mosquitto, pki: TestCA, clients: Callable[..., MqttClient], name: str | None
) -> MqttClient:
    if name is None:
        tls = TlsSettings(ca_file=pki.ca_file)
    else:
        issued = pki.issue(name)
        tls = TlsSettings(ca_file=pki.ca_file, cert_file=issued.cert_file, key_file=issued.key_file)
    return clients(mqtt_settings(broker, tls=tls), name or "anonymous")


def test_encrypted_client_key_with_password_from_credentials_directory(
    tmp_path: Path,
    tls_broker: Mosquitto,
    pki: TestCA,
    clients: Callable[..., MqttClient],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    issued = pki.issue("boxC", password=b"s3cret")
    credentials = tmp_path / "credentials"
    credentials.mkdir()
    (credentials / "mqtt-key-password").write_text("s3cret\n")
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(credentials))
    tls = TlsSettings(ca_file=pki.ca_file, cert_file=issued.cert_file, key_file=issued.key_file)
    client = clients(mqtt_settings(tls_broker, tls=tls), "boxC")
    client.start()
    client.wait_connected(WAIT_S)
    (credentials / "mqtt-key-password").write_text("wrong")
    with pytest.raises(TransportConfigError, match="wrong key password") as caught:
        clients(mqtt_settings(tls_broker, tls=tls), "boxC2")
    assert str(issued.key_file) not in str(caught.value)  # key paths are never shown


def test_client_without_certificate_is_refused(
    tls_broker: Mosquitto, pki: TestCA, clients: Callable[..., MqttClient]
) -> None:
    client = _client(tls_broker, pki, clients, None)
    client.start()
    wait_for(lambda: client.counters.get("connect_failed") >= 1, "a failed connection")
    assert client.counters.get("connects") == 0
    result = subprocess.run(
        [
            "mosquitto_pub",
            "-h",
            "127.0.0.1",
            "-p",
            str(tls_broker.port),
            "-V",
            "mqttv5",
            "--cafile",
            str(pki.ca_file),
            "-t",
            "appliance/v1/plant1/msg/x/y",
            "-m",
            "hello",
        ],
        capture_output=True,
        text=True,
        timeout=WAIT_S,
        check=False,
    )
    assert result.returncode != 0


def test_acl_confines_each_box_to_its_own_topics_and_reports_not_authorized(
    tls_broker: Mosquitto, pki: TestCA, clients: Callable[..., MqttClient]
) -> None:
    agg = _client(tls_broker, pki, clients, "agg")
    got: list[Inbound] = []
    agg.subscribe(TOPICS.messages_from(), got.append)
    agg.start()
    agg.wait_connected(WAIT_S)
    box_a = _client(tls_broker, pki, clients, "boxA")
    box_a.start()
    box_a.wait_connected(WAIT_S)
    results: list[PublishResult] = []
    box_a.publish(TOPICS.message("boxB", "status"), b"spoofed", on_done=results.append)
    box_a.publish(TOPICS.message("boxA", "status"), b"genuine", on_done=results.append)
    wait_for(lambda: len(results) == 2 and got, "both PUBACKs and the genuine message")
    spoofed, genuine = results
    assert not spoofed.ok
    assert spoofed.reason == "Not authorized"
    assert genuine.ok
    assert [m.payload for m in got] == [b"genuine"]
    assert box_a.counters.get("publish_refused") == 1
    assert box_a.counters.get("disconnects") == 0


def test_boxes_read_the_aggregator_but_not_each_other(
    tls_broker: Mosquitto, pki: TestCA, clients: Callable[..., MqttClient]
) -> None:
    box_b = _client(tls_broker, pki, clients, "boxB")
    seen_by_b: list[Inbound] = []
    box_b.subscribe(TOPICS.messages_from(), seen_by_b.append)
    box_b.start()
    box_b.wait_connected(WAIT_S)
    agg = _client(tls_broker, pki, clients, "agg")
    seen_by_agg: list[Inbound] = []
    agg.subscribe(TOPICS.messages_from(), seen_by_agg.append)
    agg.start()
    agg.wait_connected(WAIT_S)
    box_a = _client(tls_broker, pki, clients, "boxA")
    box_a.start()
    box_a.wait_connected(WAIT_S)
    box_a.publish(TOPICS.message("boxA", "status"), b"from boxA")
    wait_for(lambda: seen_by_agg, "boxA's message at the aggregator")
    # Published after the broker routed boxA's message: once boxB has it, boxA's would be in.
    agg.publish(TOPICS.message("agg", "round"), b"from agg")
    wait_for(lambda: seen_by_b, "the aggregator's message at boxB")
    assert [m.payload for m in seen_by_b] == [b"from agg"]
