"""One node's whole transport, built from its config: client, outbox, sender, receiver.

The daemons use this and nothing lower: they publish signed messages by kind, send
artifacts, and pull what arrives from `next_event()` in their own main loop (in the style of
aiomqtt): a verified message subscribed with `subscribe` becomes a `MessageArrived`, a
verified artifact an `ArtifactArrived`. Nothing of the service runs on the MQTT worker thread.

An artifact's file stays in the receiver's inbox until the service calls `acknowledge`,
which it does once its own store holds what it needs; only then is the sender acked. An
artifact not acknowledged when the process ends is queued again when the node is next
created on the same state directory, before any broker connection: that is the only
redelivery, so a service keeps no inbox copy and scans nothing at start. It must still
expect an artifact it stored once to come again (a crash between its store and
`acknowledge`) and count it once.

`on_message` (a handler on the worker thread) stays for protocol code that must answer
there, e.g. the secure-aggregation sessions.
"""

import logging
import queue
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import TypeVar

from appliance.config.mqtt import MqttSettings
from appliance.config.transfer import OutboxSettings, TransferSettings
from appliance.identity import NodeKey, TrustStore
from appliance.transport.client import Inbound, MqttClient, Will
from appliance.transport.events import InboundEvent, MessageArrived
from appliance.transport.outbox import Outbox, Priority
from appliance.transport.receiver import Receiver
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
    """A transport for `key.node_id`; `start()` connects it. Artifacts and subscribed
    messages become events the service pulls (`next_event`)."""

    def __init__(
        self,
        key: NodeKey,
        trust: TrustStore,
        settings: NodeSettings,
        *,
        artifact_senders: Sequence[str] = ("+",),
        will: Will | None = None,
    ) -> None:
        self.key, self.trust = key, trust
        self.topics = Topics(settings.plant)
        settings.state_dir.mkdir(parents=True, exist_ok=True)
        self._events: queue.SimpleQueue[InboundEvent] = queue.SimpleQueue()
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
            self._events.put,
            key=key,
            trust=trust,
            topics=self.topics,
            settings=settings.transfer,
            state_dir=settings.state_dir / "transfers",
            senders=artifact_senders,
        )
        for artifact in self.receiver.unacknowledged():  # the one redelivery
            self._events.put(artifact)

    def start(self) -> None:
        """Connect (in the background; reconnects on its own)."""
        self.client.start()

    def stop(self) -> None:
        """Disconnect and close the stores. Acknowledgements made before are carried out
        first; events not taken are lost here and come again at the next start."""
        self.client.stop()
        self.receiver.close()
        self.outbox.close()

    # ------------------------------------------------------------ inbound
    def next_event(self, timeout_s: float = 0.0) -> InboundEvent | None:
        """The next inbound event, waiting up to `timeout_s` (0: do not wait); None if none.

        Safe from any thread; meant for the service's main loop.
        """
        try:
            if timeout_s > 0:
                return self._events.get(timeout=timeout_s)
            return self._events.get_nowait()
        except queue.Empty:
            return None

    def acknowledge(self, event: InboundEvent) -> None:
        """The service holds what it needs of `event`: let the transport forget it.

        A message is acknowledged to the broker, which until then keeps it and re-sends it
        after a restart. For an artifact, the receiver records it delivered (a replay is
        refused), deletes the file and acks the sender. That work is handed to the worker
        thread (`call_soon`), which owns the receiver's SQLite connection, so no lock is
        added to every chunk's path and the acknowledgement is ordered with the messages
        around it. The call returns at once; if the process dies before the worker ran it,
        the event is simply offered again after the restart. Repeating it, or acknowledging
        an artifact of an earlier run, is harmless. Acknowledge every event, also one the
        service discards: until then an artifact's file stays in the inbox and its sender
        keeps it in the outbox, and a message takes a place in the broker's in-flight window.
        """
        if isinstance(event, MessageArrived):
            if event.receipt is not None:
                event.receipt()
            return
        self.client.call_soon(partial(self.receiver.acknowledge, event))

    def subscribe(self, sender: str, kind: str, schema: type[M]) -> None:
        """Queue each verified `kind` message from `sender` as a `MessageArrived` (`+`: any
        trusted node), acknowledged to the broker only by `acknowledge`. Refusals are logged,
        counted and acknowledged at once, as by `on_message`. Call before `start()`."""

        def queue_event(inbound: Inbound, message: M, signer: str) -> None:
            self._events.put(MessageArrived(kind, message, signer, inbound.ack))

        self._receive(sender, kind, schema, queue_event, ack_later=True)

    def on_message(
        self, sender: str, kind: str, schema: type[M], handler: Callable[[M, str], None]
    ) -> None:
        """Call `handler(message, signer)` on the worker thread for each verified `kind`
        message from `sender` (`+`: any trusted node; the signer is the topic's writer,
        checked by signature). For protocol code that answers there; services `subscribe`."""
        self._receive(
            sender, kind, schema, lambda _inbound, message, signer: handler(message, signer)
        )

    def _receive(
        self,
        sender: str,
        kind: str,
        schema: type[M],
        handler: Callable[[Inbound, M, str], None],
        *,
        ack_later: bool = False,
    ) -> None:
        """Verify each `kind` message from `sender`, then pass it on; a refused one is
        acknowledged at once (it would only come back)."""

        def refuse(inbound: Inbound, exc: RejectedError) -> None:
            record_rejection(log, self.client.counters, kind, inbound.topic, exc)
            if inbound.ack is not None:
                inbound.ack()

        def receive(inbound: Inbound) -> None:
            try:
                writer = self.topics.parse(inbound.topic).writer
                message = open_envelope(inbound.payload, writer, self.trust, schema)
            except TopicError as exc:
                refuse(inbound, RejectedError("bad_topic", str(exc)))
                return
            except RejectedError as exc:
                refuse(inbound, exc)
                return
            handler(inbound, message, writer)

        topic_filter = self.topics.messages_from(sender, kind)
        self.client.subscribe(topic_filter, receive, ack_later=ack_later)

    # ------------------------------------------------------------ outbound
    def publish(self, kind: str, message: WireModel, priority: int = Priority.NORMAL) -> None:
        """Sign `message` and queue it durably on `msg/<this node>/<kind>`."""
        self.sender.send_message(
            self.topics.message(self.key.node_id, kind), seal(message, self.key), priority
        )
