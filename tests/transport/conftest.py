"""Fixtures of the transport tests: brokers, keys and node settings on loopback."""

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from appliance.config.mqtt import MqttSettings
from appliance.identity import NodeKey, TrustStore, generate_key_pair
from appliance.transport.client import MqttClient
from tests.support.mosquitto import Mosquitto

WAIT_S = 60.0
"""Generous: tests wait for conditions, never assert on durations."""


@pytest.fixture
def broker_factory(tmp_path: Path) -> Iterator[Callable[..., Mosquitto]]:
    """Start brokers on demand; every one is stopped at teardown."""
    brokers: list[Mosquitto] = []

    def make(**options: Any) -> Mosquitto:
        broker = Mosquitto(tmp_path / f"broker{len(brokers)}", **options)
        brokers.append(broker)
        return broker.start()

    yield make
    for broker in brokers:
        broker.kill()


@pytest.fixture
def broker(broker_factory: Callable[..., Mosquitto]) -> Mosquitto:
    return broker_factory()


@pytest.fixture
def keys(tmp_path: Path) -> Callable[[str], NodeKey]:
    """`keys("box1")`: a key pair for a node, its public key in the shared trust dir."""
    trust_dir = tmp_path / "trust"
    key_dir = tmp_path / "keys"

    def make(node_id: str) -> NodeKey:
        private, public = generate_key_pair(key_dir, node_id)
        trust_dir.mkdir(exist_ok=True)
        (trust_dir / public.name).write_bytes(public.read_bytes())
        return NodeKey.load(node_id, private)

    return make


@pytest.fixture
def trust(tmp_path: Path) -> TrustStore:
    return TrustStore(tmp_path / "trust")


def mqtt_settings(broker: Mosquitto, **overrides: Any) -> MqttSettings:
    values: dict[str, Any] = {"host": "127.0.0.1", "port": broker.port, "keepalive_s": 10}
    values["reconnect_max_delay_s"] = 2
    values.update(overrides)
    return MqttSettings(**values)


@pytest.fixture
def clients() -> Iterator[Callable[..., MqttClient]]:
    """Make clients (not started); all are stopped at teardown."""
    made: list[MqttClient] = []

    def make(settings: MqttSettings, client_id: str, **options: Any) -> MqttClient:
        client = MqttClient(settings, client_id, **options)
        made.append(client)
        return client

    yield make
    for client in made:
        client.stop()
