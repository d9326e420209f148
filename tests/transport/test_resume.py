"""Transfers survive SIGKILL of either side and a broker restart.

Sender and receiver run as separate processes (`tests.transport.nodes`), killed with a real
SIGKILL halfway through a transfer of about 1000 chunks and started again on the same state
directory. The artifact must arrive intact, exactly once, and leave the sender's outbox.
"""

import hashlib
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from appliance.config.transfer import TransferSettings
from appliance.identity import NodeKey, TrustStore
from tests.support.mosquitto import Mosquitto
from tests.transport.conftest import WAIT_S, mqtt_settings
from tests.transport.nodes import Node, start_node
from tests.transport.processes import NodeProcess
from tests.transport.waiting import wait_for

SIZE = 16_000_000
PACKET = 16_384  # about 1000 chunks, so a kill lands mid-transfer
TRANSFER = {"request_after_s": 1, "resend_after_s": 2}
SLOW_S = 180.0


@pytest.fixture
def artifact(tmp_path: Path) -> tuple[Path, str]:
    data = os.urandom(SIZE)
    path = tmp_path / "update.bin"
    path.write_bytes(data)
    return path, hashlib.sha256(data).hexdigest()


@pytest.fixture
def processes(
    tmp_path: Path, broker: Mosquitto, keys: Callable[[str], NodeKey]
) -> Iterator[Callable[..., NodeProcess]]:
    made: list[NodeProcess] = []

    def make(node_id: str, **config: Any) -> NodeProcess:
        key = keys(node_id)
        directory = tmp_path / node_id
        base = {
            "node_id": node_id,
            "key_file": str(tmp_path / "keys" / f"{node_id}.key"),
            "trust_dir": str(tmp_path / "trust"),
            "state_dir": str(directory / "state"),
            "mqtt": {
                "host": "127.0.0.1",
                "port": broker.port,
                "max_packet_bytes": PACKET,
                "reconnect_max_delay_s": 1,
            },
            "transfer": TRANSFER,
        }
        assert key.node_id == node_id
        process = NodeProcess({**base, **config}, directory)
        made.append(process)
        return process

    yield make
    for process in made:
        process.kill()


def _connected(node: NodeProcess) -> bool:
    return node.counter("connects") >= 1


def _chunks(node: NodeProcess) -> int:
    return node.counter("chunks_received")


def test_sender_killed_mid_transfer_resumes_from_its_outbox(
    processes: Callable[..., NodeProcess], artifact: tuple[Path, str]
) -> None:
    path, sha = artifact
    agg = processes("agg").start()
    agg.wait(_connected, "receiver connected")
    box = processes("box1").start(send=str(path), recipients=["agg"])
    agg.wait(lambda n: _chunks(n) >= 50, "first chunks at the receiver", SLOW_S)
    box.kill()
    assert not agg.find("received")
    box.start()  # same state directory, nothing to send: it must find the outbox entry
    box.wait(lambda n: n.find("started"), "restart")
    assert box.find("started")[0]["outbox"] == 1
    agg.wait(lambda n: n.find("received"), "the artifact", SLOW_S)
    box.wait(lambda n: n.latest()["outbox"] == 0, "the ack emptying the outbox", SLOW_S)
    agg.wait(lambda n: n.counter("artifacts_received") == 1, "the receiver's counters")
    (received,) = agg.find("received")  # handed over exactly once
    assert received["sha256"] == sha


def test_receiver_killed_mid_transfer_resumes_from_its_partial_file(
    processes: Callable[..., NodeProcess], artifact: tuple[Path, str]
) -> None:
    path, sha = artifact
    agg = processes("agg").start()
    agg.wait(_connected, "receiver connected")
    box = processes("box1").start(send=str(path), recipients=["agg"])
    agg.wait(lambda n: _chunks(n) >= 200, "a fifth of the chunks", SLOW_S)
    agg.kill()
    agg.start()
    agg.wait(lambda n: n.find("started"), "receiver restart")
    (partial,) = agg.find("started")[0]["partial"].values()
    assert 200 <= partial[0] < partial[1]  # resumes with what it had on disk
    agg.wait(lambda n: n.find("received"), "the artifact", SLOW_S)
    box.wait(lambda n: n.latest()["outbox"] == 0, "the ack emptying the outbox", SLOW_S)
    (received,) = agg.find("received")
    assert received["sha256"] == sha


def test_broker_restart_mid_transfer_completes(
    tmp_path: Path,
    broker_factory: Callable[..., Mosquitto],
    keys: Callable[[str], NodeKey],
    trust: TrustStore,
    artifact: tuple[Path, str],
) -> None:
    path, sha = artifact
    broker = broker_factory(persistence=True)
    settings = mqtt_settings(broker, max_packet_bytes=PACKET, reconnect_max_delay_s=1)
    transfer = TransferSettings(**TRANSFER)
    nodes: list[Node] = []
    try:
        for name in ("agg", "box1"):
            nodes.append(
                start_node(keys(name), trust, settings, tmp_path / name, transfer=transfer)
            )
        agg, box = nodes
        for node in nodes:
            node.client.wait_connected(WAIT_S)
        box.sender.send_artifact("update", path, ["agg"])
        wait_for(lambda: agg.counters.get("chunks_received", 0) >= 50, "first chunks", SLOW_S)
        broker.restart()
        assert not agg.received
        wait_for(lambda: agg.received and box.outbox.count() == 0, "delivery and ack", SLOW_S)
        assert agg.client.counters.get("connects") >= 2
        ((_, received_sha),) = agg.received
        assert received_sha == sha
    finally:
        for node in nodes:
            node.stop()
