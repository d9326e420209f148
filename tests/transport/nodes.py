"""Transport nodes for tests and test processes, assembled by `TransportNode` itself.

`transport_node` builds a node the way the daemons do (there is no second way to wire
client, outbox, sender and receiver together); `start_node` adds a consumer thread playing
the service: it pulls each artifact, hashes it and acknowledges it.

Run as a script it is one node in its own process, driven by a JSON file, printing one JSON
event per line on stdout, so tests can kill it with SIGKILL and start it again:

    python -m tests.transport.nodes CONFIG.json
"""

import hashlib
import json
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from appliance.config.mqtt import MqttSettings
from appliance.config.transfer import OutboxSettings, TransferSettings
from appliance.identity import NodeKey, TrustStore
from appliance.transport.client import Will
from appliance.transport.events import ArtifactArrived
from appliance.transport.node import NodeSettings, TransportNode
from appliance.transport.topics import Topics
from appliance.transport.wire import Manifest

PLANT = "plant1"
OnReceived = Callable[[Manifest, str], None]


def transport_node(
    key: NodeKey,
    trust: TrustStore,
    mqtt: MqttSettings,
    state_dir: Path,
    *,
    transfer: TransferSettings | None = None,
    outbox: OutboxSettings | None = None,
    will: Will | None = None,
) -> TransportNode:
    """A pull-mode node (not started) with its state in `state_dir`."""
    settings = NodeSettings(
        PLANT, mqtt, outbox or OutboxSettings(), transfer or TransferSettings(), state_dir
    )
    return TransportNode(key, trust, settings, will=will)


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while block := handle.read(1 << 22):
            digest.update(block)
    return digest.hexdigest()


class Node:
    """A started node whose artifacts a consumer thread takes and acknowledges, as a
    service's main loop would; `received` lists (manifest, sha256 of the file)."""

    def __init__(self, transport: TransportNode, on_received: OnReceived | None = None) -> None:
        self.transport = transport
        self.client, self.outbox = transport.client, transport.outbox
        self.sender, self.receiver = transport.sender, transport.receiver
        self.received: list[tuple[Manifest, str]] = []
        self._on_received = on_received
        self._stopping = threading.Event()
        self._consumer = threading.Thread(target=self._consume, name="consumer", daemon=True)

    @property
    def counters(self) -> dict[str, int]:
        return self.client.counters.snapshot()

    def start(self) -> "Node":
        self._consumer.start()
        self.transport.start()
        return self

    def stop(self) -> None:
        self._stopping.set()
        self._consumer.join()
        self.transport.stop()

    def _consume(self) -> None:
        while not self._stopping.is_set():
            event = self.transport.next_event(timeout_s=0.05)
            if isinstance(event, ArtifactArrived):
                sha = file_sha256(event.path)
                self.received.append((event.manifest, sha))
                if self._on_received is not None:
                    self._on_received(event.manifest, sha)
                self.transport.acknowledge(event)


def start_node(
    key: NodeKey,
    trust: TrustStore,
    mqtt: MqttSettings,
    state_dir: Path,
    *,
    transfer: TransferSettings | None = None,
    outbox: OutboxSettings | None = None,
    on_received: OnReceived | None = None,
    will: Will | None = None,
) -> Node:
    """Build and start a node whose received artifacts are hashed and acknowledged."""
    transport = transport_node(
        key, trust, mqtt, state_dir, transfer=transfer, outbox=outbox, will=will
    )
    return Node(transport, on_received).start()


def _emit(event: str, **fields: Any) -> None:
    sys.stdout.write(json.dumps({"event": event, **fields}) + "\n")
    sys.stdout.flush()


def main(config_path: str) -> None:
    """Run one node until killed; report progress as JSON lines."""
    config = json.loads(Path(config_path).read_text())
    key = NodeKey.load(config["node_id"], Path(config["key_file"]))
    node = start_node(
        key,
        TrustStore(Path(config["trust_dir"])),
        MqttSettings(**config["mqtt"]),
        Path(config["state_dir"]),
        transfer=TransferSettings(**config.get("transfer", {})),
        on_received=lambda manifest, sha: _emit(
            "received", artifact_id=manifest.artifact_id, sha256=sha
        ),
        will=Will(config["will"], b"offline") if config.get("will") else None,
    )
    _emit("started", outbox=node.outbox.count(), partial=node.receiver.progress())
    for number in range(config.get("messages", 0)):
        topic = Topics(PLANT).message(key.node_id, "test")
        node.sender.send_message(topic, json.dumps({"n": number}).encode())
    if config.get("messages"):
        _emit("messages_queued", count=config["messages"])
    if config.get("send"):
        artifact_id = node.sender.send_artifact(
            "update", Path(config["send"]), config["recipients"]
        )
        _emit("queued", artifact_id=artifact_id)
    last: dict[str, Any] = {}
    stop = threading.Event()
    while not stop.wait(0.02):
        state = {"counters": node.counters, "outbox": node.outbox.count()}
        if state != last:
            _emit("progress", **state)
            last = state


if __name__ == "__main__":
    main(sys.argv[1])
