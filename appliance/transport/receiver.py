"""Receive artifacts: verify the manifest, reassemble chunks on disk, verify, hand over, ack.

A transfer starts with a manifest that passes every check (trusted signer who is also the
topic's writer, addressed to us, size within the limit, not stale, not already received).
Chunks are written straight into a pre-sized partial file at their offset, in any order;
each chunk's own hash is checked first, so a corrupted one is dropped and asked for again.
What has arrived is recorded in SQLite, so a restarted receiver continues where it stopped.

When no chunk arrived for `request_after_s`, the receiver asks the sender for the missing
ranges (again with back-off); a transfer silent for `stall_timeout_s` is dropped. When all
chunks are in, the whole file's sha256 must match the signed manifest; only then is the file
moved to the inbox, recorded as 'complete' and handed over (`on_verified`, an
`ArtifactArrived`). The file stays in the inbox until the service has stored what it needs
and calls `acknowledge`: then the transfer is recorded as 'delivered' (so a replay is
refused), the file is deleted and the sender gets its Ack. Every refusal is one log line plus
a `rejected.<reason>` counter.

Redelivery is one mechanism: the 'complete' rows. An artifact verified but not acknowledged
before the process ended is offered again by `unacknowledged()`, which the node queues when
it is created. A sender that re-announces such an artifact meanwhile is not refused (it has
no Ack yet, rightly): its manifest is ignored until the service acknowledges.

Durability of `transfers.sqlite`: `Durability.NORMAL` (WAL, no fsync per commit). None of
its rows is a promise to a peer. The Ack is the only promise the receiver makes (the sender
deletes its copy), and it is sent after `acknowledge`, i.e. after the service's own store
(FULL) holds the artifact: that store, not this file, backs it. A 'complete' row comes before
any Ack, so while it exists the sender still holds the artifact. What a power cut can do
here is lose the last commits, which only repeats work the protocol already repeats: a lost
'delivered' turns back into 'complete' (the service is offered an artifact it already stored
and counts it once, as after a crash between its store and `acknowledge`) or into a missing
row (the sender's re-announce is received again, likewise a duplicate); a lost 'complete'
restarts the transfer; a lost chunk row is asked for again. A 'complete' row whose inbox
file is gone at start (its 'delivered' was lost after the file was deleted) is forgotten, so
a re-announce is received again rather than ignored forever. FULL would instead fsync the
WAL for every chunk row, up to thousands per artifact, for no guarantee anyone relies on.
"""

import hashlib
import logging
import os
import sqlite3
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from paho.mqtt.packettypes import PacketTypes

from appliance.config.transfer import TransferSettings
from appliance.errors import ApplianceError
from appliance.identity import NodeKey, TrustStore
from appliance.system.sqlite import Durability, StoreOpenError, open_db
from appliance.transport.client import Inbound, MqttClient, packet_properties
from appliance.transport.events import ArtifactArrived
from appliance.transport.outbox import MIB
from appliance.transport.rejects import RejectedError, record_rejection
from appliance.transport.topics import CHUNK, ParsedTopic, TopicError, Topics
from appliance.transport.wire import (
    MAX_WANT_RANGES,
    Ack,
    Manifest,
    Want,
    decode_chunk,
    open_envelope,
    read_sealed,
    seal,
)

log = logging.getLogger(__name__)

MAX_REQUEST_INTERVAL_S = 60.0
PURGE_EVERY_S = 3600.0
_READ_BYTES = 4 * MIB

_SCHEMA = """
CREATE TABLE IF NOT EXISTS transfers (
    sender TEXT NOT NULL,
    artifact_id TEXT NOT NULL,
    envelope BLOB NOT NULL,
    created REAL NOT NULL,
    state TEXT NOT NULL CHECK (state IN ('receiving', 'complete', 'delivered', 'rejected')),
    PRIMARY KEY (sender, artifact_id)
);
CREATE TABLE IF NOT EXISTS chunks (
    sender TEXT NOT NULL,
    artifact_id TEXT NOT NULL,
    idx INTEGER NOT NULL,
    sha256 BLOB NOT NULL,
    PRIMARY KEY (sender, artifact_id, idx)
);
"""


OnVerified = Callable[[ArtifactArrived], None]


@dataclass
class _Incoming:
    manifest: Manifest
    envelope: bytes
    partial: Path
    have: set[int]
    last_progress: float = field(default_factory=time.monotonic)
    next_request: float = 0.0
    request_interval: float = 0.0

    @property
    def key(self) -> tuple[str, str]:
        return self.manifest.sender, self.manifest.artifact_id

    def missing_ranges(self) -> list[tuple[int, int]]:
        ranges: list[tuple[int, int]] = []
        start: int | None = None
        for index in range(self.manifest.chunk_count + 1):
            absent = index < self.manifest.chunk_count and index not in self.have
            if absent and start is None:
                start = index
            elif not absent and start is not None:
                ranges.append((start, index))
                start = None
                if len(ranges) == MAX_WANT_RANGES:
                    break
        return ranges


class Receiver:
    """The receiving half of the artifact protocol, for one node.

    `senders` limits the subscription: a box listens to its aggregator only (otherwise the
    broker, unless its ACL forbids it, sends it every other box's chunks too); the
    aggregator listens to `+`. `on_verified` runs in the client's worker thread for each
    newly verified artifact. Like every method here but `progress` and `unacknowledged` (see
    there), it belongs to that one thread, so the SQLite connection needs no lock.
    """

    def __init__(
        self,
        client: MqttClient,
        on_verified: OnVerified,
        *,
        key: NodeKey,
        trust: TrustStore,
        topics: Topics,
        settings: TransferSettings,
        state_dir: Path,
        senders: Sequence[str] = ("+",),
    ) -> None:
        self.client = client
        self.on_verified = on_verified
        self.key = key
        self.trust = trust
        self.topics = topics
        self.settings = settings
        self.counters = client.counters
        self._partial_dir = state_dir / "partial"
        self._inbox_dir = state_dir / "inbox"
        self._partial_dir.mkdir(parents=True, exist_ok=True)
        self._inbox_dir.mkdir(parents=True, exist_ok=True)
        self._db = _open_state(state_dir / "transfers.sqlite")
        self._incoming: dict[tuple[str, str], _Incoming] = {}
        self._next_purge = 0.0
        self._load()
        for sender in senders:
            client.subscribe(topics.artifacts_from(sender), self._on_message)
        client.every_tick(self._tick)

    def progress(self) -> dict[str, tuple[int, int]]:
        """Unfinished transfers: `"<sender>/<artifact_id>": (chunks on disk, chunk count)`."""
        return {
            f"{sender}/{aid}": (len(incoming.have), incoming.manifest.chunk_count)
            for (sender, aid), incoming in list(self._incoming.items())
        }

    @property
    def max_artifact_bytes(self) -> int:
        return self.settings.max_artifact_mb * MIB

    def unacknowledged(self) -> list[ArtifactArrived]:
        """Artifacts verified but not yet acknowledged, oldest first: the redelivery.

        It reads the connection from the caller's thread, so call it before the client
        starts (or from the worker thread).
        """
        rows = self._db.execute(
            "SELECT envelope FROM transfers WHERE state = 'complete' ORDER BY created"
        ).fetchall()
        manifests = [read_sealed(bytes(envelope), Manifest) for (envelope,) in rows]
        arrived = [ArtifactArrived(m, self._inbox_path(m)) for m in manifests]
        return [artifact for artifact in arrived if artifact.path.exists()]

    def acknowledge(self, artifact: ArtifactArrived) -> None:
        """The service stored `artifact`: record it delivered, delete its file, ack the sender.

        Harmless when repeated, or for an artifact a previous run acknowledged: only a
        'complete' transfer is acknowledged. The file deleted is the inbox file the
        manifest names, never a path taken from the caller.
        """
        manifest = artifact.manifest
        key = (manifest.sender, manifest.artifact_id)
        row = self._db.execute(
            "SELECT state FROM transfers WHERE sender = ? AND artifact_id = ?", key
        ).fetchone()
        if row is None or row[0] != "complete":
            self.counters.inc("ignored.already_acknowledged")
            log.debug("artifact %s acknowledged again; nothing to do", manifest.artifact_id)
            return
        self._db.execute(
            "UPDATE transfers SET state = 'delivered' WHERE sender = ? AND artifact_id = ?", key
        )
        self._inbox_path(manifest).unlink(missing_ok=True)
        self.counters.inc("artifacts_received")
        log.info("received %s %s from %s", manifest.kind, manifest.artifact_id, manifest.sender)
        self._send_ack(manifest)

    def _inbox_path(self, manifest: Manifest) -> Path:
        return self._inbox_dir / f"{manifest.sender}.{manifest.artifact_id}.{manifest.kind}"

    # ------------------------------------------------------------ start-up
    def _load(self) -> None:
        """Continue the transfers a previous run left unfinished; delete stray files."""
        self._remove_strays()
        self._forget_vanished()
        rows = self._db.execute(
            "SELECT envelope FROM transfers WHERE state = 'receiving'"
        ).fetchall()
        for (envelope,) in rows:
            manifest = read_sealed(bytes(envelope), Manifest)
            have = {
                idx
                for (idx,) in self._db.execute(
                    "SELECT idx FROM chunks WHERE sender = ? AND artifact_id = ?",
                    (manifest.sender, manifest.artifact_id),
                )
            }
            incoming = self._open(manifest, bytes(envelope), have)
            log.info(
                "resuming artifact %s from %s: %d of %d chunks on disk",
                manifest.artifact_id,
                manifest.sender,
                len(have),
                manifest.chunk_count,
            )
            self._incoming[incoming.key] = incoming

    def _remove_strays(self) -> None:
        """Files a crash left between a rename and its commit; their transfer restarts."""
        keep: set[str] = set()
        for state, envelope in self._db.execute(
            "SELECT state, envelope FROM transfers WHERE state IN ('receiving', 'complete')"
        ):
            manifest = read_sealed(bytes(envelope), Manifest)
            name = f"{manifest.sender}.{manifest.artifact_id}"
            keep.add(f"{name}.part" if state == "receiving" else f"{name}.{manifest.kind}")
        for directory in (self._partial_dir, self._inbox_dir):
            for path in directory.iterdir():
                if path.name not in keep:
                    log.info("removing stray transfer file %s", path)
                    path.unlink(missing_ok=True)

    def _forget_vanished(self) -> None:
        """Forget 'complete' transfers whose inbox file is gone (see the module docstring):
        if the sender still waits for an Ack, its re-announce is then received again."""
        rows = self._db.execute("SELECT envelope FROM transfers WHERE state = 'complete'")
        for (envelope,) in rows.fetchall():
            manifest = read_sealed(bytes(envelope), Manifest)
            if not self._inbox_path(manifest).exists():
                log.info(
                    "artifact %s from %s: inbox file gone, its delivery not recorded; forgotten",
                    manifest.artifact_id,
                    manifest.sender,
                )
                self._db.execute(
                    "DELETE FROM transfers WHERE sender = ? AND artifact_id = ?",
                    (manifest.sender, manifest.artifact_id),
                )

    def _open(self, manifest: Manifest, envelope: bytes, have: set[int]) -> _Incoming:
        partial = self._partial_dir / f"{manifest.sender}.{manifest.artifact_id}.part"
        if not partial.exists():
            have = set()
            self._db.execute(
                "DELETE FROM chunks WHERE sender = ? AND artifact_id = ?",
                (manifest.sender, manifest.artifact_id),
            )
        with partial.open("ab") as handle:
            handle.truncate(manifest.size_bytes)
        return _Incoming(manifest, envelope, partial, have)

    # -------------------------------------------------------------- inbound
    def _on_message(self, message: Inbound) -> None:
        try:
            parsed = self.topics.parse(message.topic)
        except TopicError as exc:
            self._reject("message", message.topic, RejectedError("bad_topic", str(exc)))
            return
        try:
            if parsed.part == CHUNK:
                self._on_chunk(parsed, message.payload)
            else:
                self._on_manifest(parsed, message.payload)
        except RejectedError as exc:
            self._reject(parsed.part or "message", message.topic, exc)

    def _on_manifest(self, topic: ParsedTopic, payload: bytes) -> None:
        manifest = open_envelope(payload, topic.writer, self.trust, Manifest)
        if manifest.sender != topic.writer or manifest.artifact_id != topic.artifact_id:
            raise RejectedError(
                "sender_mismatch",
                f"manifest of {manifest.sender}/{manifest.artifact_id} published on "
                f"{topic.writer}/{topic.artifact_id}",
            )
        if self.key.node_id not in manifest.recipients:
            self.counters.inc("ignored.not_recipient")
            return
        if manifest.size_bytes > self.max_artifact_bytes:
            raise RejectedError(
                "oversize",
                f"artifact {manifest.artifact_id} has {manifest.size_bytes} bytes; the limit "
                f"is {self.max_artifact_bytes} (transfer.max_artifact_mb)",
            )
        now = time.time()
        if manifest.created < now - self.settings.replay_window_s:
            raise RejectedError(
                "stale", f"created {now - manifest.created:.0f} s ago (outside the replay window)"
            )
        if manifest.created > now + self.settings.max_clock_skew_s:
            raise RejectedError("future", f"created {manifest.created - now:.0f} s in the future")
        row = self._db.execute(
            "SELECT state, envelope FROM transfers WHERE sender = ? AND artifact_id = ?",
            (manifest.sender, manifest.artifact_id),
        ).fetchone()
        if row is not None and row[0] == "complete":
            # Verified, waiting for the service: the sender rightly has no Ack yet.
            self.counters.inc("ignored.awaiting_acknowledge")
            return
        if row is not None and row[0] != "receiving":
            if row[0] == "delivered":
                self._send_ack(manifest)  # harmless; the sender may have missed our ack
            raise RejectedError(
                "replay",
                f"artifact {manifest.artifact_id} from {manifest.sender} was already "
                f"{row[0]}; not passed on again",
            )
        incoming = self._incoming.get((manifest.sender, manifest.artifact_id))
        if incoming is not None and incoming.envelope == payload:
            # Re-announced (sender restarted or waited long): tell it what we miss now.
            incoming.next_request = 0.0
            self._request_missing(incoming, time.monotonic())
            return
        if incoming is not None:
            log.info("artifact %s was re-chunked by its sender; restarting", manifest.artifact_id)
            self._discard(incoming)
        self._db.execute(
            "INSERT OR REPLACE INTO transfers (sender, artifact_id, envelope, created, state)"
            " VALUES (?, ?, ?, ?, 'receiving')",
            (manifest.sender, manifest.artifact_id, payload, manifest.created),
        )
        incoming = self._open(manifest, payload, set())
        self._incoming[incoming.key] = incoming
        self.counters.inc("manifests_accepted")
        log.info(
            "receiving %s %s from %s: %d bytes in %d chunks",
            manifest.kind,
            manifest.artifact_id,
            manifest.sender,
            manifest.size_bytes,
            manifest.chunk_count,
        )

    def _on_chunk(self, topic: ParsedTopic, payload: bytes) -> None:
        incoming = self._incoming.get((topic.writer, topic.artifact_id or ""))
        if incoming is None:
            self.counters.inc("ignored.unknown_transfer")
            return
        artifact_id, index, digest, data = decode_chunk(payload)
        manifest = incoming.manifest
        if artifact_id != manifest.artifact_id:
            raise RejectedError("malformed_chunk", f"header names artifact {artifact_id}")
        if index >= manifest.chunk_count:
            raise RejectedError(
                "bad_chunk_index", f"index {index} of {manifest.chunk_count} chunks"
            )
        if len(data) != manifest.chunk_size(index):
            raise RejectedError(
                "bad_chunk_size",
                f"chunk {index} has {len(data)} bytes, expected {manifest.chunk_size(index)}",
            )
        if hashlib.sha256(data).digest() != digest:
            raise RejectedError("corrupt_chunk", f"chunk {index} does not match its hash")
        if index in incoming.have:
            self.counters.inc("duplicate_chunks")
            return
        with incoming.partial.open("r+b") as handle:
            handle.seek(index * manifest.chunk_bytes)
            handle.write(data)
        self._db.execute(
            "INSERT OR REPLACE INTO chunks (sender, artifact_id, idx, sha256) VALUES (?, ?, ?, ?)",
            (manifest.sender, manifest.artifact_id, index, digest),
        )
        incoming.have.add(index)
        incoming.last_progress = time.monotonic()
        incoming.request_interval = 0.0
        incoming.next_request = 0.0
        self.counters.inc("chunks_received")
        if len(incoming.have) == manifest.chunk_count:
            self._complete(incoming)

    # ----------------------------------------------------------- completion
    def _complete(self, incoming: _Incoming) -> None:
        manifest = incoming.manifest
        digest = hashlib.sha256()
        with incoming.partial.open("rb") as handle:
            os.fsync(handle.fileno())
            while block := handle.read(_READ_BYTES):
                digest.update(block)
        if digest.hexdigest() != manifest.sha256:
            if self._drop_damaged_chunks(incoming):
                return  # a chunk rotted on disk: it is asked for again
            self._db.execute(
                "UPDATE transfers SET state = 'rejected' WHERE sender = ? AND artifact_id = ?",
                incoming.key,
            )
            self._discard(incoming, keep_row=True)
            raise RejectedError(
                "hash_mismatch",
                f"artifact {manifest.artifact_id} from {manifest.sender}: sha256 of the "
                "reassembled chunks differs from the signed manifest",
            )
        final = self._inbox_path(manifest)
        os.replace(incoming.partial, final)
        self._db.execute("BEGIN")
        self._db.execute(
            "UPDATE transfers SET state = 'complete' WHERE sender = ? AND artifact_id = ?",
            incoming.key,
        )
        self._db.execute("DELETE FROM chunks WHERE sender = ? AND artifact_id = ?", incoming.key)
        self._db.execute("COMMIT")
        del self._incoming[incoming.key]
        self.counters.inc("artifacts_verified")
        log.info(
            "verified %s %s from %s; handed over",
            manifest.kind,
            manifest.artifact_id,
            manifest.sender,
        )
        self.on_verified(ArtifactArrived(manifest, final))

    def _drop_damaged_chunks(self, incoming: _Incoming) -> bool:
        """Re-check every chunk on disk against the hash it arrived with; forget bad ones."""
        manifest = incoming.manifest
        stored = dict(
            self._db.execute(
                "SELECT idx, sha256 FROM chunks WHERE sender = ? AND artifact_id = ?",
                incoming.key,
            ).fetchall()
        )
        damaged: list[int] = []
        with incoming.partial.open("rb") as handle:
            for index in range(manifest.chunk_count):
                handle.seek(index * manifest.chunk_bytes)
                data = handle.read(manifest.chunk_size(index))
                if hashlib.sha256(data).digest() != stored.get(index):
                    damaged.append(index)
        for index in damaged:
            incoming.have.discard(index)
            self._db.execute(
                "DELETE FROM chunks WHERE sender = ? AND artifact_id = ? AND idx = ?",
                (*incoming.key, index),
            )
        if damaged:
            log.warning(
                "artifact %s: %d chunk(s) damaged on disk; asking again",
                manifest.artifact_id,
                len(damaged),
            )
        return bool(damaged)

    # ---------------------------------------------------------- timers, wants
    def _tick(self) -> None:
        now = time.monotonic()
        for incoming in list(self._incoming.values()):
            quiet = now - incoming.last_progress
            if quiet > self.settings.stall_timeout_s:
                log.warning(
                    "dropped transfer %s from %s: no progress for %.0f s (%d of %d chunks)",
                    incoming.manifest.artifact_id,
                    incoming.manifest.sender,
                    quiet,
                    len(incoming.have),
                    incoming.manifest.chunk_count,
                )
                self._discard(incoming)
                self.counters.inc("stalled")  # last: once counted, the clean-up is done
            elif quiet >= self.settings.request_after_s:
                self._request_missing(incoming, now)
        if now >= self._next_purge:
            self._next_purge = now + PURGE_EVERY_S
            self._purge_old()

    def _request_missing(self, incoming: _Incoming, now: float) -> None:
        if now < incoming.next_request or not self.client.connected:
            return
        interval = incoming.request_interval or float(self.settings.request_after_s)
        incoming.request_interval = min(interval * 2, MAX_REQUEST_INTERVAL_S)
        incoming.next_request = now + interval
        manifest = incoming.manifest
        want = Want(
            artifact_id=manifest.artifact_id,
            sender=manifest.sender,
            receiver=self.key.node_id,
            ranges=tuple(incoming.missing_ranges()),
        )
        properties = packet_properties(PacketTypes.PUBLISH)
        properties.MessageExpiryInterval = max(1, round(interval))  # stale wants expire
        self.client.publish(
            self.topics.want(self.key.node_id, manifest.sender, manifest.artifact_id),
            seal(want, self.key),
            properties=properties,
        )
        self.counters.inc("wants_sent")

    def _send_ack(self, manifest: Manifest) -> None:
        ack = Ack(
            artifact_id=manifest.artifact_id,
            sender=manifest.sender,
            receiver=self.key.node_id,
            sha256=manifest.sha256,
        )
        self.client.publish(
            self.topics.ack(self.key.node_id, manifest.sender, manifest.artifact_id),
            seal(ack, self.key),
        )
        self.counters.inc("acks_sent")

    def _discard(self, incoming: _Incoming, *, keep_row: bool = False) -> None:
        self._incoming.pop(incoming.key, None)
        incoming.partial.unlink(missing_ok=True)
        self._db.execute("DELETE FROM chunks WHERE sender = ? AND artifact_id = ?", incoming.key)
        if not keep_row:
            self._db.execute(
                "DELETE FROM transfers WHERE sender = ? AND artifact_id = ?", incoming.key
            )

    def _purge_old(self) -> None:
        """Forget finished ids older than the replay window: their manifests are stale now."""
        cutoff = time.time() - self.settings.replay_window_s
        self._db.execute(
            "DELETE FROM transfers WHERE state IN ('delivered', 'rejected') AND created < ?",
            (cutoff,),
        )

    def _reject(self, what: str, topic: str, exc: RejectedError) -> None:
        record_rejection(log, self.counters, what, topic, exc)

    def close(self) -> None:
        self._db.close()


def _open_state(path: Path) -> sqlite3.Connection:
    """The transfer state, NORMAL durability (see the module docstring). Shared between
    threads: opened by the node's constructor, then used by the worker thread alone."""
    try:
        return open_db(
            path, durability=Durability.NORMAL, shared_between_threads=True, schema=_SCHEMA
        )
    except StoreOpenError as exc:
        raise ApplianceError(f"transfer state unreadable: {exc}") from None
