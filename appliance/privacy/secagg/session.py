"""Secure aggregation over the transport: a box's and the aggregator's message handling.

This is the only part of the package that touches MQTT, and only through `TransportNode`
(signed small messages by kind, artifacts for the masked update). Handlers run on the
transport's worker thread; each refusal is logged and counted like any transport rejection
(`rejected.<reason>`), and the node carries on.

    box        publish secagg_key -> (secagg_keys) -> send masked_update -> (secagg_commit)
               -> publish secagg_reveal
    aggregator (secagg_key...) -> publish secagg_keys -> (masked_update...) -> publish
               secagg_commit -> (secagg_reveal...) -> unmask
"""

import logging
import threading
from collections.abc import Callable
from typing import TypeVar

from appliance.privacy.secagg.collector import Collector, UnmaskedSum
from appliance.privacy.secagg.encoding import Encoded, Layout
from appliance.privacy.secagg.errors import SecAggError
from appliance.privacy.secagg.messages import KeySet, MaskKey, ReportingSet, SeedReveal
from appliance.privacy.secagg.participant import Participant
from appliance.transport.events import ArtifactArrived
from appliance.transport.node import TransportNode
from appliance.transport.rejects import RejectedError, record_rejection

log = logging.getLogger(__name__)
M = TypeVar("M")

KEY = "secagg_key"
KEYS = "secagg_keys"
COMMIT = "secagg_commit"
REVEAL = "secagg_reveal"
MASKED_UPDATE = "masked_update"
"""Artifact kind of a masked update (4 bytes per coordinate; too large for a message)."""


def _refuse(transport: TransportNode, writer: str, kind: str, exc: SecAggError) -> None:
    topic = transport.topics.message(writer, kind)
    record_rejection(
        log, transport.client.counters, kind, topic, RejectedError(exc.reason, exc.detail)
    )


class BoxSession:
    """A box's side: one `Participant` at a time, messages only from `aggregator_id`."""

    def __init__(self, transport: TransportNode, aggregator_id: str) -> None:
        self.transport = transport
        self.aggregator_id = aggregator_id
        self.participant: Participant | None = None
        self.keys_ready = threading.Event()
        self.revealed = threading.Event()
        transport.on_message(aggregator_id, KEYS, KeySet, self._on_keyset)
        transport.on_message(aggregator_id, COMMIT, ReportingSet, self._on_commit)

    def join(self, participant: Participant) -> None:
        """Take part in a round: publish the signed mask key."""
        self.participant = participant
        self.keys_ready.clear()
        self.revealed.clear()
        self.transport.publish(KEY, participant.key_message())

    def send(self, encoded: Encoded, layout: Layout) -> bytes:
        """Mask the encoded update and queue it (durably) for the aggregator; the blob sent."""
        participant = self._current()
        blob = participant.mask(encoded, layout)
        meta: dict[str, str | int | float | bool] = {"round_id": participant.round_id}
        self.transport.sender.send_artifact(MASKED_UPDATE, blob, [self.aggregator_id], meta=meta)
        return blob

    def _on_keyset(self, keyset: KeySet, signer: str) -> None:
        try:
            self._current().accept_key_set(keyset, signer)
        except SecAggError as exc:
            _refuse(self.transport, signer, KEYS, exc)
            return
        self.keys_ready.set()

    def _on_commit(self, commit: ReportingSet, signer: str) -> None:
        try:
            reveal = self._current().reveal(commit, signer)
        except SecAggError as exc:
            _refuse(self.transport, signer, COMMIT, exc)
            return
        if reveal.seeds:
            self.transport.publish(REVEAL, reveal)
        self.revealed.set()

    def _current(self) -> Participant:
        if self.participant is None:
            raise SecAggError("wrong_phase", "this box is in no secure-aggregation round")
        return self.participant


class AggregatorSession:
    """The aggregator's side: feeds a `Collector` from the transport and publishes its steps.

    The owner's artifact handler passes artifacts of kind `masked_update` to `on_artifact`.
    """

    def __init__(self, transport: TransportNode) -> None:
        self.transport = transport
        self.collector: Collector | None = None
        self._lock = threading.Lock()
        self.changed = threading.Condition(self._lock)
        transport.on_message("+", KEY, MaskKey, self._guard(KEY, self._add_key))
        transport.on_message("+", REVEAL, SeedReveal, self._guard(REVEAL, self._add_reveal))

    def begin(self, collector: Collector) -> None:
        with self._lock:
            self.collector = collector

    def publish_keys(self) -> KeySet:
        """Close the key set and relay it to the boxes."""
        with self._lock:
            keyset = self._current().close_keys()
        self.transport.publish(KEYS, keyset)
        return keyset

    def publish_commit(self) -> ReportingSet:
        """Commit the reporting set and publish it (signed); late updates are refused after."""
        with self._lock:
            commit = self._current().commit()
        self.transport.publish(COMMIT, commit)
        return commit

    def add_masked(self, blob: bytes, sender: str) -> None:
        """Check and hold a masked update (for an owner that reads artifacts itself)."""
        with self.changed:
            self._current().add_masked(blob, sender)
            self.changed.notify_all()

    def unmask(self) -> UnmaskedSum:
        with self._lock:
            return self._current().unmask()

    def wait(self, condition: Callable[[Collector], bool], timeout_s: float) -> bool:
        """Block until `condition(collector)` holds (a handler changed it) or the timeout."""
        with self.changed:
            return self.changed.wait_for(
                lambda: self.collector is not None and condition(self.collector), timeout_s
            )

    def on_artifact(self, artifact: ArtifactArrived) -> None:
        sender = artifact.manifest.sender
        blob = artifact.path.read_bytes()
        self._guard(MASKED_UPDATE, self._add_masked)(blob, sender)

    def _add_masked(self, blob: bytes, signer: str) -> None:
        self._current().add_masked(blob, signer)

    def _add_key(self, key: MaskKey, signer: str) -> None:
        self._current().add_key(key, signer)

    def _add_reveal(self, reveal: SeedReveal, signer: str) -> None:
        self._current().add_reveal(reveal, signer)

    def _guard(self, kind: str, handler: Callable[[M, str], None]) -> Callable[[M, str], None]:
        def run(message: M, signer: str) -> None:
            with self.changed:
                try:
                    handler(message, signer)
                except SecAggError as exc:
                    _refuse(self.transport, signer, kind, exc)
                self.changed.notify_all()

        return run

    def _current(self) -> Collector:
        if self.collector is None:
            raise SecAggError("wrong_phase", "no secure-aggregation round is open")
        return self.collector
