"""Drain the outbox: small messages until the broker acks them, artifacts until receivers do.

Application threads call `send_message` / `send_artifact`, which only commit to the outbox
and wake the client's worker thread; everything else runs in that one thread.

An artifact is sent as a signed manifest followed by its chunks, at most `chunk_window`
chunks awaiting a PUBACK at a time (memory stays bounded whatever the artifact's size). The
manifest is built when the artifact is first sent, from the packet limit of the broker we
are connected to, and stored with the entry; if a later broker allows less, the manifest is
rebuilt with smaller chunks. After the chunks, the sender only answers: a receiver's `want`
re-sends the chunks it names, its `ack` removes it from the outbox once every recipient
acked. An artifact nobody answered about for `resend_after_s` is re-announced (manifest
only), which is also how transfers resume after this process restarts.
"""

import logging
import math
import time
import uuid
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import TypeVar

from appliance.config.transfer import TransferSettings
from appliance.identity import NodeKey, TrustStore
from appliance.identity.keys import check_node_id
from appliance.system.failpoints import failpoint
from appliance.transport.client import Inbound, MqttClient, PacketTooLargeError, PublishResult
from appliance.transport.outbox import ArtifactEntry, Outbox, Priority
from appliance.transport.rejects import RejectedError, record_rejection
from appliance.transport.topics import TopicError, Topics
from appliance.transport.wire import (
    CHUNK_HEADER_BYTES,
    Ack,
    Manifest,
    Want,
    encode_chunk,
    open_envelope,
    read_sealed,
    seal,
)

log = logging.getLogger(__name__)

MESSAGE_WINDOW = 32
"""Outbox messages published but not yet acknowledged by the broker."""
EXPIRY_CHECK_S = 30.0
MIN_CHUNK_BYTES = 1024
"""Below this, chunk headers and topics would outweigh the data: refuse to send instead."""
Reply = TypeVar("Reply", Want, Ack)


@dataclass
class _Outgoing:
    """An artifact being sent (worker-thread state; the outbox holds the durable part)."""

    entry: ArtifactEntry
    manifest: Manifest | None = None
    envelope: bytes = b""
    next_index: int = 0
    resend: deque[int] = field(default_factory=deque)
    queued: set[int] = field(default_factory=set)
    in_flight: int = 0
    last_heard: float = field(default_factory=time.monotonic)
    too_small_logged: bool = False

    @property
    def streaming(self) -> bool:
        return self.manifest is not None and (
            self.next_index < self.manifest.chunk_count or bool(self.resend)
        )


class Sender:
    """Publishes what the outbox holds; the sending half of the artifact protocol."""

    def __init__(
        self,
        client: MqttClient,
        outbox: Outbox,
        *,
        key: NodeKey,
        trust: TrustStore,
        topics: Topics,
        settings: TransferSettings,
    ) -> None:
        self.client = client
        self.outbox = outbox
        self.key = key
        self.trust = trust
        self.topics = topics
        self.settings = settings
        self.counters = client.counters
        self._messages_in_flight: set[int] = set()
        self._outgoing: dict[str, _Outgoing] = {}
        self._loaded = False
        self._next_expiry = 0.0
        want_filter, ack_filter = topics.replies_to(key.node_id)
        client.subscribe(want_filter, self._on_want)
        client.subscribe(ack_filter, self._on_ack)
        client.on_connected(self._on_connected)
        client.every_tick(self._tick)

    # ------------------------------------------------- application threads
    def send_message(
        self, topic: str, payload: bytes, priority: int = Priority.NORMAL
    ) -> int | None:
        """Queue a small message durably; None if the full outbox dropped it."""
        if len(payload) > self.client.max_payload_bytes(topic):
            raise PacketTooLargeError(
                f"message on {topic} has {len(payload)} bytes; send it as an artifact instead"
            )
        seq = self.outbox.put_message(topic, payload, priority)
        self.client.call_soon(self._pump)
        return seq

    def send_artifact(
        self,
        kind: str,
        data: bytes | Path,
        recipients: Sequence[str],
        *,
        priority: int = Priority.NORMAL,
        meta: dict[str, str | int | float | bool] | None = None,
    ) -> str | None:
        """Queue an artifact durably for `recipients`; its id, or None if dropped (full)."""
        for name in (kind, *recipients):
            check_node_id(name)  # refuse here, not later in the worker thread
        if not recipients:
            raise ValueError("an artifact needs at least one recipient")
        artifact_id = uuid.uuid4().hex
        entry = self.outbox.put_artifact(
            artifact_id, kind, data, recipients, priority=priority, meta=meta
        )
        if entry is None:
            return None
        self.client.call_soon(lambda: self._adopt(entry))
        return artifact_id

    # ----------------------------------------------------- worker thread
    def _on_connected(self) -> None:
        # paho re-sends what was in flight; re-announce unfinished artifacts that are idle.
        for outgoing in self._outgoing.values():
            if not outgoing.streaming and outgoing.manifest is not None:
                self._announce(outgoing)
        self._pump()

    def _tick(self) -> None:
        now = time.monotonic()
        if now >= self._next_expiry:
            self._next_expiry = now + EXPIRY_CHECK_S
            self.outbox.expire()
        for outgoing in list(self._outgoing.values()):
            if not self.outbox.contains(outgoing.entry.seq):
                self._forget(outgoing, "dropped from the outbox")
                continue
            quiet = now - outgoing.last_heard
            if not outgoing.streaming and quiet > self.settings.resend_after_s:
                log.info(
                    "no answer about %s for %.0f s; re-announcing",
                    outgoing.entry.artifact_id,
                    quiet,
                )
                self._announce(outgoing)
        self._pump()

    def _pump(self) -> None:
        if not self.client.connected:
            return
        self._pump_messages()
        self._load_artifacts()
        for outgoing in list(self._outgoing.values()):
            if self._chunks_in_flight() >= self.settings.chunk_window:
                break
            self._pump_artifact(outgoing)

    def _chunks_in_flight(self) -> int:
        return sum(outgoing.in_flight for outgoing in self._outgoing.values())

    def _pump_messages(self) -> None:
        room = MESSAGE_WINDOW - len(self._messages_in_flight)
        if room <= 0:
            return
        for message in self.outbox.messages(self._messages_in_flight, room):
            try:
                self.client.publish(
                    message.topic,
                    message.payload,
                    on_done=partial(self._message_done, message.seq),
                )
            except PacketTooLargeError as exc:
                log.error("dropping queued message: %s", exc)
                self.counters.inc("dropped.too_large")
                self.outbox.remove(message.seq)
                continue
            self._messages_in_flight.add(message.seq)

    def _message_done(self, seq: int, result: PublishResult) -> None:
        self._messages_in_flight.discard(seq)
        if result.ok:
            self.counters.inc("messages_delivered")
        else:
            # A refusal (e.g. not authorized) is final: retrying cannot change the ACL.
            self.counters.inc("dropped.refused")
        self.outbox.remove(seq)
        self._pump()

    def _load_artifacts(self) -> None:
        """Once per process: take over the artifacts a previous run left in the outbox."""
        if self._loaded:
            return
        self._loaded = True
        for entry in self.outbox.artifacts():
            if entry.manifest is None:
                self._adopt(entry)
            else:
                self._resume(entry, entry.manifest)

    def _adopt(self, entry: ArtifactEntry) -> None:
        self._outgoing.setdefault(entry.artifact_id, _Outgoing(entry))
        self._pump()

    def _resume(self, entry: ArtifactEntry, envelope: bytes) -> None:
        """An artifact announced before a restart: re-announce; receivers ask for the rest."""
        manifest = read_sealed(envelope, Manifest)
        outgoing = _Outgoing(entry, manifest, envelope, next_index=manifest.chunk_count)
        self._outgoing[entry.artifact_id] = outgoing
        log.info(
            "resuming artifact %s (%s, %d bytes)",
            manifest.artifact_id,
            manifest.kind,
            manifest.size_bytes,
        )
        if self.client.connected:
            self._announce(outgoing)

    def _pump_artifact(self, outgoing: _Outgoing) -> None:
        entry = outgoing.entry
        chunk_topic = self.topics.chunk(self.key.node_id, entry.artifact_id)
        chunk_room = self.client.max_payload_bytes(chunk_topic) - CHUNK_HEADER_BYTES
        if chunk_room < MIN_CHUNK_BYTES:
            if not outgoing.too_small_logged:
                outgoing.too_small_logged = True
                log.error(
                    "cannot send artifact %s: the packet limit (%d bytes) leaves no room for "
                    "chunks; raise the broker's max_packet_size or mqtt.max_packet_bytes",
                    entry.artifact_id,
                    self.client.max_packet_bytes,
                )
            return
        manifest = outgoing.manifest
        if manifest is None or manifest.chunk_bytes > chunk_room:
            if manifest is not None:
                log.warning(
                    "broker packet limit is below the chunks of %s; re-chunking", entry.artifact_id
                )
            self._build_manifest(outgoing, chunk_room)
            self._announce(outgoing)
        manifest = outgoing.manifest
        assert manifest is not None
        while self._chunks_in_flight() < self.settings.chunk_window and outgoing.streaming:
            if outgoing.resend:
                index = outgoing.resend.popleft()
                outgoing.queued.discard(index)
            else:
                index = outgoing.next_index
                outgoing.next_index += 1
            offset = index * manifest.chunk_bytes
            data = self.outbox.read(entry.artifact_id, offset, manifest.chunk_size(index))
            if data is None:
                self._forget(outgoing, "dropped from the outbox")
                return
            self.client.publish(
                chunk_topic,
                encode_chunk(entry.artifact_id, index, data),
                on_done=partial(self._chunk_done, outgoing),
            )
            outgoing.in_flight += 1

    def _build_manifest(self, outgoing: _Outgoing, chunk_room: int) -> None:
        entry = outgoing.entry
        chunk_count = math.ceil(entry.size / chunk_room)
        chunk_bytes = math.ceil(entry.size / chunk_count)  # even chunks, none tiny
        manifest = Manifest(
            artifact_id=entry.artifact_id,
            kind=entry.kind,
            sender=self.key.node_id,
            recipients=entry.recipients,
            size_bytes=entry.size,
            sha256=entry.sha256,
            chunk_bytes=chunk_bytes,
            chunk_count=math.ceil(entry.size / chunk_bytes),
            created=entry.created,
            meta=entry.meta,
        )
        envelope = seal(manifest, self.key)
        self.outbox.set_manifest(entry.seq, envelope)
        outgoing.manifest, outgoing.envelope = manifest, envelope
        outgoing.next_index = 0
        outgoing.resend.clear()
        outgoing.queued.clear()

    def _announce(self, outgoing: _Outgoing) -> None:
        assert outgoing.manifest is not None
        self.client.publish(
            self.topics.manifest(self.key.node_id, outgoing.entry.artifact_id), outgoing.envelope
        )
        outgoing.last_heard = time.monotonic()
        self.counters.inc("manifests_sent")

    def _chunk_done(self, outgoing: _Outgoing, result: PublishResult) -> None:
        outgoing.in_flight -= 1
        if result.ok:
            self.counters.inc("chunks_sent")
        outgoing.last_heard = time.monotonic()
        self._pump()

    def _forget(self, outgoing: _Outgoing, why: str) -> None:
        self._outgoing.pop(outgoing.entry.artifact_id, None)
        log.info("stopped sending artifact %s: %s", outgoing.entry.artifact_id, why)

    # ------------------------------------------------ receivers' answers
    def _reply(self, message: Inbound, schema: type[Reply]) -> tuple[_Outgoing, Reply] | None:
        what = schema.__name__.lower()
        try:
            parsed = self.topics.parse(message.topic)
            reply = open_envelope(message.payload, parsed.writer, self.trust, schema)
            if reply.receiver != parsed.writer or reply.sender != self.key.node_id:
                raise RejectedError(
                    "sender_mismatch", f"{what} signed by {reply.receiver} for {reply.sender}"
                )
            if reply.artifact_id != parsed.artifact_id:
                raise RejectedError("invalid", "artifact id differs from the topic's")
        except TopicError as exc:
            rejected = RejectedError("bad_topic", str(exc))
            record_rejection(log, self.counters, what, message.topic, rejected)
            return None
        except RejectedError as exc:
            record_rejection(log, self.counters, what, message.topic, exc)
            return None
        outgoing = self._outgoing.get(reply.artifact_id)
        if outgoing is None or outgoing.manifest is None:
            self.counters.inc(f"{what}.unknown_artifact")
            log.debug("%s for artifact %s that is no longer queued", what, reply.artifact_id)
            return None
        if reply.receiver not in outgoing.manifest.recipients:
            outsider = RejectedError("not_recipient", f"{reply.receiver} is not a recipient")
            record_rejection(log, self.counters, what, message.topic, outsider)
            return None
        outgoing.last_heard = time.monotonic()
        return outgoing, reply

    def _on_want(self, message: Inbound) -> None:
        got = self._reply(message, Want)
        if got is None:
            return
        outgoing, want = got
        assert outgoing.manifest is not None
        self.counters.inc("wants_received")
        if not want.ranges:
            self._announce(outgoing)
        count = outgoing.manifest.chunk_count
        for start, end in want.ranges:
            for index in range(start, min(end, count)):
                if index not in outgoing.queued:
                    outgoing.queued.add(index)
                    outgoing.resend.append(index)
        self._pump()

    def _on_ack(self, message: Inbound) -> None:
        got = self._reply(message, Ack)
        if got is None:
            return
        outgoing, ack = got
        assert outgoing.manifest is not None
        if ack.sha256 != outgoing.manifest.sha256:
            exc = RejectedError("ack_mismatch", f"ack names sha256 {ack.sha256[:12]}...")
            record_rejection(log, self.counters, "ack", message.topic, exc)
            return
        delivered = self.outbox.record_ack(outgoing.entry.seq, ack.receiver)
        if outgoing.manifest.kind in ("global", "global_delta"):
            failpoint("aggregator.global_acked")
        if delivered:
            self.counters.inc("artifacts_delivered")
            log.info(
                "artifact %s (%s) acknowledged by all recipients",
                ack.artifact_id,
                outgoing.manifest.kind,
            )
            self._forget(outgoing, "acknowledged")
