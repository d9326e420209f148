"""One node's whole transport, built from its config: client, outbox, sender, receiver.

The daemons use this and nothing lower: they publish signed messages by kind, subscribe to a
peer's messages by kind (verified against the trust store, refusals logged and counted), and
send or receive artifacts.
"""

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

from appliance.config.mqtt import MqttSettings
from appliance.config.transfer import OutboxSettings, TransferSettings
from appliance.identity import NodeKey, TrustStore
from appliance.transport.client import Inbound, MqttClient, Will
from appliance.transport.outbox import Outbox, Priority
from appliance.transport.receiver import ArtifactHandler, Receiver
from appliance.transport.rejects import RejectedError, record_rejection
from appliance.transport.sender import Sender
from appliance.transport.topics import TopicError, Topics
from appliance.transport.wire import WireModel, open_envelope, seal

log = logging.getLogger(__name__)
M = TypeVar("M", bound=WireModel)


@dataclass(frozen=True)
class NodeSettings:
    """Everything a node's transport needs from the config file."""

    plant: str
    mqtt: MqttSettings
    outbox: OutboxSettings
    transfer: TransferSettings
    state_dir: Path


class TransportNode:
    """A started transport for `key.node_id`."""

    def __init__(
        self,
        key: NodeKey,
        trust: TrustStore,
        settings: NodeSettings,
        on_artifact: ArtifactHandler,
        *,
        artifact_senders: Sequence[str] = ("+",),
        will: Will | None = None,
    ) -> None:
        self.key, self.trust = key, trust
        self.topics = Topics(settings.plant)
        settings.state_dir.mkdir(parents=True, exist_ok=True)
        self.client = MqttClient(settings.mqtt, key.node_id, will=will)
        self.outbox = Outbox(
            settings.state_dir / "outbox.sqlite", settings.outbox, self.client.counters
        )
        self.sender = Sender(
            self.client,
            self.outbox,
            key=key,
            trust=trust,
            topics=self.topics,
            settings=settings.transfer,
        )
        self.receiver = Receiver(
            self.client,
            on_artifact,
            key=key,
            trust=trust,
            topics=self.topics,
            settings=settings.transfer,
            state_dir=settings.state_dir / "transfers",
            senders=artifact_senders,
        )

    def start(self) -> None:
        """Connect (in the background; reconnects on its own)."""
        self.client.start()

    def stop(self) -> None:
        """Disconnect and close the stores."""
        self.client.stop()
        self.receiver.close()
        self.outbox.close()

    def publish(self, kind: str, message: WireModel, priority: int = Priority.NORMAL) -> None:
        """Sign `message` and queue it durably on `msg/<this node>/<kind>`."""
        self.sender.send_message(
            self.topics.message(self.key.node_id, kind), seal(message, self.key), priority
        )

    def on_message(
        self, sender: str, kind: str, schema: type[M], handler: Callable[[M, str], None]
    ) -> None:
        """Call `handler(message, signer)` for each verified `kind` message from `sender`
        (`+`: any trusted node; the signer is the topic's writer, checked by signature)."""

        def receive(inbound: Inbound) -> None:
            try:
                writer = self.topics.parse(inbound.topic).writer
                message = open_envelope(inbound.payload, writer, self.trust, schema)
            except TopicError as exc:
                record_rejection(
                    log,
                    self.client.counters,
                    kind,
                    inbound.topic,
                    RejectedError("bad_topic", str(exc)),
                )
                return
            except RejectedError as exc:
                record_rejection(log, self.client.counters, kind, inbound.topic, exc)
                return
            handler(message, writer)

        self.client.subscribe(self.topics.messages_from(sender, kind), receive)
