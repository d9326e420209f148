"""Receive artifacts: verify the manifest, reassemble chunks on disk, verify, hand over, ack.

A transfer starts with a manifest that passes every check (trusted signer who is also the
topic's writer, addressed to us, size within the limit, not stale, not already received).
Chunks are written straight into a pre-sized partial file at their offset, in any order;
each chunk's own hash is checked first, so a corrupted one is dropped and asked for again.
What has arrived is recorded in SQLite, so a restarted receiver continues where it stopped.

When no chunk arrived for `request_after_s`, the receiver asks the sender for the missing
ranges (again with back-off); a transfer silent for `stall_timeout_s` is dropped. When all
chunks are in, the whole file's sha256 must match the signed manifest; only then is the
artifact handed to the application, recorded as delivered (so a replay is refused) and
acknowledged to the sender. Every refusal is one log line plus a `rejected.<reason>` counter.
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
from paho.mqtt.properties import Properties

from appliance.config.transfer import TransferSettings
from appliance.identity import NodeKey, TrustStore
from appliance.transport.client import Inbound, MqttClient
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


@dataclass(frozen=True)
class ReceivedArtifact:
    """A verified artifact. `path` is removed after the handler returns: move or copy it."""

    manifest: Manifest
    path: Path


ArtifactHandler = Callable[[ReceivedArtifact], None]


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
    aggregator listens to `+`. The handler runs in the client's worker thread: it should
    move the file and return.
    """

    def __init__(
        self,
        client: MqttClient,
        handler: ArtifactHandler,
        *,
        key: NodeKey,
        trust: TrustStore,
        topics: Topics,
        settings: TransferSettings,
        state_dir: Path,
        senders: Sequence[str] = ("+",),
    ) -> None:
        self.client = client
        self.handler = handler
        self.key = key
        self.trust = trust
        self.topics = topics
        self.settings = settings
        self.counters = client.counters
        self._partial_dir = state_dir / "partial"
        self._inbox_dir = state_dir / "inbox"
        self._partial_dir.mkdir(parents=True, exist_ok=True)
        self._inbox_dir.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(
            state_dir / "transfers.sqlite", check_same_thread=False, isolation_level=None
        )
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.executescript(_SCHEMA)
        self._incoming: dict[tuple[str, str], _Incoming] = {}
        self._next_purge = 0.0
        self._load()
        for sender in senders:
            client.subscribe(topics.artifacts_from(sender), self._on_message)
        client.on_connected(self._deliver_completed)
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

    # ------------------------------------------------------------ start-up
    def _load(self) -> None:
        """Continue the transfers a previous run left unfinished; delete stray files."""
        self._remove_strays()
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
        final = self._inbox_dir / f"{manifest.sender}.{manifest.artifact_id}.{manifest.kind}"
        os.replace(incoming.partial, final)
        self._db.execute("BEGIN")
        self._db.execute(
            "UPDATE transfers SET state = 'complete' WHERE sender = ? AND artifact_id = ?",
            incoming.key,
        )
        self._db.execute("DELETE FROM chunks WHERE sender = ? AND artifact_id = ?", incoming.key)
        self._db.execute("COMMIT")
        del self._incoming[incoming.key]
        self._deliver(manifest, final)

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

    def _deliver(self, manifest: Manifest, path: Path) -> None:
        try:
            self.handler(ReceivedArtifact(manifest, path))
        except Exception:
            self.counters.inc("handler_failed")
            log.exception(
                "handler failed for artifact %s; kept at %s, retried after reconnect",
                manifest.artifact_id,
                path,
            )
            return
        self._db.execute(
            "UPDATE transfers SET state = 'delivered' WHERE sender = ? AND artifact_id = ?",
            (manifest.sender, manifest.artifact_id),
        )
        path.unlink(missing_ok=True)
        self.counters.inc("artifacts_received")
        log.info("received %s %s from %s", manifest.kind, manifest.artifact_id, manifest.sender)
        self._send_ack(manifest)

    def _deliver_completed(self) -> None:
        """Hand over artifacts verified before a crash but not yet taken by the handler."""
        rows = self._db.execute("SELECT envelope FROM transfers WHERE state = 'complete'")
        for (envelope,) in rows.fetchall():
            manifest = read_sealed(bytes(envelope), Manifest)
            path = self._inbox_dir / f"{manifest.sender}.{manifest.artifact_id}.{manifest.kind}"
            if path.exists():
                self._deliver(manifest, path)

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
        properties = Properties(PacketTypes.PUBLISH)
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
