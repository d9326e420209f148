"""Fixtures of the telemetry tests: a real broker, an independent observer, nodes and hosts."""

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from appliance.config.mqtt import MqttSettings
from appliance.telemetry.edge_node import EdgeNode, EdgeNodeOptions
from appliance.telemetry.host import PrimaryHost
from appliance.telemetry.store import FleetStore
from appliance.transport.client import MqttClient
from tests.support.mosquitto import Mosquitto
from tests.telemetry.observer import Observer

GROUP = "plant1"


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[Mosquitto]:
    broker = Mosquitto(tmp_path / "broker")
    broker.start()
    yield broker
    broker.kill()


@pytest.fixture
def settings(broker: Mosquitto) -> MqttSettings:
    return MqttSettings(host="127.0.0.1", port=broker.port, keepalive_s=5, reconnect_max_delay_s=1)


@pytest.fixture
def observer(broker: Mosquitto) -> Iterator[Observer]:
    """Every message under spBv1.0/# and appliance/#, as mosquitto_sub sees it."""
    with Observer(broker.port) as observer:
        yield observer


@pytest.fixture
def edge_nodes(tmp_path: Path, settings: MqttSettings) -> Iterator[Callable[..., EdgeNode]]:
    """`edge_nodes("box1", primary_host_id=...)`: a started edge node; stopped at teardown."""
    made: list[EdgeNode] = []

    def make(node_id: str, start: bool = True, **options: Any) -> EdgeNode:
        node = EdgeNode(
            settings, GROUP, node_id, tmp_path / node_id, options=EdgeNodeOptions(**options)
        )
        made.append(node)
        if start:
            node.start()
        return node

    yield make
    for node in made:
        node.client.stop()


@pytest.fixture
def hosts(tmp_path: Path, settings: MqttSettings) -> Iterator[Callable[..., PrimaryHost]]:
    made: list[PrimaryHost] = []

    def make(host_id: str = "scada", **options: Any) -> PrimaryHost:
        store = FleetStore(tmp_path / f"{host_id}.sqlite")
        host = PrimaryHost(settings, host_id, GROUP, store, **options)
        made.append(host)
        host.start()
        # STATE is published after the subscriptions on the same connection: once the
        # broker acknowledged it, the host hears every box
        assert host.announced.wait(60), "host did not announce itself"
        return host

    yield make
    for host in made:
        host.stop()


@pytest.fixture
def raw_clients(settings: MqttSettings) -> Iterator[Callable[[str], MqttClient]]:
    """Plain project clients that play a (possibly misbehaving) box or host."""
    made: list[MqttClient] = []

    def make(client_id: str) -> MqttClient:
        client = MqttClient(settings, client_id, clean_start=True)
        made.append(client)
        client.start()
        client.wait_connected(60)
        return client

    yield make
    for client in made:
        client.stop()
