"""A whole transport node (client, outbox, sender, receiver) for tests and test processes.

Run as a script it is one node in its own process, driven by a JSON file, printing one JSON
event per line on stdout, so tests can kill it with SIGKILL and start it again:

    python -m tests.transport.nodes CONFIG.json
"""

import hashlib
import json
import shutil
import sys
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from appliance.config.mqtt import MqttSettings
from appliance.config.transfer import OutboxSettings, TransferSettings
from appliance.identity import NodeKey, TrustStore
from appliance.transport.client import MqttClient, Will
from appliance.transport.outbox import Outbox
from appliance.transport.receiver import ReceivedArtifact, Receiver
from appliance.transport.sender import Sender
from appliance.transport.topics import Topics

PLANT = "plant1"


@dataclass
class Node:
    """One node's transport, started; `received` lists (manifest, sha256 of the file)."""

    client: MqttClient
    outbox: Outbox
    sender: Sender
    receiver: Receiver
    received: list[tuple[Any, str]] = field(default_factory=list)

    @property
    def counters(self) -> dict[str, int]:
        return self.client.counters.snapshot()

    def stop(self) -> None:
        self.client.stop()
        self.receiver.close()
        self.outbox.close()


def start_node(
    key: NodeKey,
    trust: TrustStore,
    mqtt: MqttSettings,
    state_dir: Path,
    *,
    transfer: TransferSettings | None = None,
    outbox: OutboxSettings | None = None,
    save_dir: Path | None = None,
    on_received: Any = None,
    will: Will | None = None,
) -> Node:
    """Build and start a node; received artifacts are hashed (and moved to `save_dir`)."""
    transfer = transfer or TransferSettings()
    topics = Topics(PLANT)
    client = MqttClient(mqtt, key.node_id, will=will, tick_s=0.1)
    box = Outbox(state_dir / "outbox.sqlite", outbox or OutboxSettings(), client.counters)
    received: list[tuple[Any, str]] = []

    def handle(artifact: ReceivedArtifact) -> None:
        digest = hashlib.sha256()
        with artifact.path.open("rb") as handle:
            while block := handle.read(1 << 22):
                digest.update(block)
        if save_dir is not None:
            save_dir.mkdir(parents=True, exist_ok=True)
            shutil.move(artifact.path, save_dir / artifact.manifest.artifact_id)
        received.append((artifact.manifest, digest.hexdigest()))
        if on_received is not None:
            on_received(artifact.manifest, digest.hexdigest())

    sender = Sender(client, box, key=key, trust=trust, topics=topics, settings=transfer)
    receiver = Receiver(
        client,
        handle,
        key=key,
        trust=trust,
        topics=topics,
        settings=transfer,
        state_dir=state_dir,
    )
    client.start()
    return Node(client, box, sender, receiver, received)


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
        save_dir=Path(config["save_dir"]) if config.get("save_dir") else None,
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
