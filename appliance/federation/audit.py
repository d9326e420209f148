"""The aggregator's audit log: one hash-chained, signed JSON line per event, append-only.

Each line holds its sequence number, the hash of the previous line and its own hash over its
canonical JSON, so editing, removing or reordering any line breaks the chain at that line.
The aggregator signs each line's hash with its Ed25519 identity key (`signer` names it and is
inside the hash; `sig` is the only field outside it), so whoever holds the aggregator's public
key can tell the log apart from one rewritten wholesale with recomputed hashes.

Older logs, written before lines were signed, still verify: without a key `verify` checks the
chain only (and says so); with a key, unsigned lines are accepted only as a prefix followed by
at least one signed line, because a signature covers `prev` and so anchors every line before
it. An unsigned line after a signed one, or a log with no signed line at all, fails with a
key. Removing lines from the end cannot be seen from the file alone: `verify` prints the head
hash, which the aggregator also publishes.

A line's `kind` and `data` are an event of appliance/federation/audit_events.py: written with
`AuditLog.append_event`, read back as models with `read_events`, so writer and readers share
one schema.
"""

import base64
import binascii
import hashlib
import json
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from appliance.errors import ApplianceError
from appliance.federation.audit_events import (
    AuditEvent,
    EventError,
    EventT,
    parse_as,
    parse_event,
)
from appliance.identity import NodeKey

GENESIS = "0" * 64


class AuditError(ApplianceError):
    """The audit log is broken at a line; the message names it."""


def canonical(record: dict[str, Any]) -> bytes:
    """The bytes a line's hash covers: sorted keys, no spaces, no NaN."""
    return json.dumps(record, sort_keys=True, separators=(",", ":"), allow_nan=False).encode()


def line_hash(record: dict[str, Any]) -> str:
    """sha256 of a record without its own `hash` and `sig` fields."""
    body = {k: v for k, v in record.items() if k not in ("hash", "sig")}
    return hashlib.sha256(canonical(body)).hexdigest()


@dataclass(frozen=True)
class ChainHead:
    """Where the chain ends: the last sequence number and hash."""

    seq: int
    hash: str


class AuditLog:
    """Appends events to a hash-chained JSON Lines file (fsync'd per line), each line signed
    with `signer`'s key when one is given (the aggregator always gives its own)."""

    def __init__(self, path: Path, signer: NodeKey | None = None) -> None:
        self.path = path
        self.signer = signer
        self.head = self._recover()

    def _recover(self) -> ChainHead:
        """Read the current head; drop a torn last line left by a crash mid-write."""
        if not self.path.exists():
            return ChainHead(0, GENESIS)
        data = self.path.read_bytes()
        if data and not data.endswith(b"\n"):
            keep = data.rfind(b"\n") + 1
            with self.path.open("r+b") as handle:
                handle.truncate(keep)
            data = data[:keep]
        if not data:
            return ChainHead(0, GENESIS)
        last = json.loads(data.splitlines()[-1])
        return ChainHead(int(last["seq"]), str(last["hash"]))

    def append_event(self, event: AuditEvent) -> ChainHead:
        """Add one event under its kind, its data the model's JSON form; returns the new
        head."""
        return self._write(event.kind, event.model_dump(mode="json"))

    def append_event_once(self, event: AuditEvent, *keys: str) -> bool:
        """Append unless an event of the same kind with the same `keys` fields is already
        there (a restart repeating a step the crash came just after, a message delivered
        twice); whether it was appended."""
        data = event.model_dump(mode="json")
        if self._find(event.kind, {key: data[key] for key in keys}) is not None:
            return False
        self._write(event.kind, data)
        return True

    def find_event(self, model: type[EventT], key: str, value: object) -> EventT | None:
        """The first `model` event whose `key` field is `value`, or None. A restart asks this
        before redoing a step the crash may have come just after."""
        data = self._find(model.kind, {key: value})
        if data is None:
            return None
        try:
            return parse_as(model, data)
        except EventError as exc:
            raise AuditError(f"{self.path}: {exc}") from None

    def append(self, kind: str, data: dict[str, Any]) -> ChainHead:
        """Add one raw record; returns the new head. The services write typed events
        (`append_event`); this is the chain's primitive, for tools and tests that write
        records of their own."""
        return self._write(kind, data)

    def _find(self, kind: str, fields: dict[str, object]) -> dict[str, Any] | None:
        """The first `kind` line's data with these `fields` values (JSON values compared)."""
        if not self.path.exists():
            return None
        needle = f'"kind":"{kind}"'.encode()
        with self.path.open("rb") as handle:
            for raw in handle:
                if needle not in raw:
                    continue
                data = json.loads(raw)["data"]
                if isinstance(data, dict) and all(data.get(k) == v for k, v in fields.items()):
                    return data
        return None

    def _write(self, kind: str, data: dict[str, Any]) -> ChainHead:
        """One chained (and signed) line, fsync'd before the head moves."""
        record: dict[str, Any] = {
            "seq": self.head.seq + 1,
            "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "kind": kind,
            "data": data,
            "prev": self.head.hash,
        }
        if self.signer is not None:
            record["signer"] = self.signer.node_id
        record["hash"] = line_hash(record)
        if self.signer is not None:
            record["sig"] = base64.b64encode(self.signer.sign(record["hash"].encode())).decode()
        line = canonical(record) + b"\n"
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o640)
        try:
            os.write(fd, line)
            os.fsync(fd)
        finally:
            os.close(fd)
        self.head = ChainHead(record["seq"], record["hash"])
        return self.head


class _NotFiniteError(ValueError):
    """A NaN or Infinity constant in a line (Python's JSON reads them; JSON has none)."""


def _refuse_constant(name: str) -> object:
    raise _NotFiniteError(name)


def read_events(path: Path) -> Iterator[AuditEvent]:
    """Every event of a log, in order, each checked against its kind's model (the chain and
    signatures are `verify`'s part). Made for a log the aggregator is writing: a last line
    without its newline is a write in progress and is left for the next read. Any other bad
    line is an `AuditError` naming the file, the line and what is wrong."""
    try:
        handle = path.open("rb")
    except OSError as exc:
        raise AuditError(f"{path}: cannot be read: {exc.strerror}") from None
    with handle:
        for number, raw in enumerate(handle, start=1):
            if not raw.endswith(b"\n"):
                return
            yield _event(f"{path}:{number}", raw)


def _event(where: str, raw: bytes) -> AuditEvent:
    try:
        record = json.loads(raw, parse_constant=_refuse_constant)
    except _NotFiniteError as exc:
        raise AuditError(f"{where}: {exc} is not a number JSON allows") from None
    except (ValueError, RecursionError):  # JSONDecodeError and UnicodeDecodeError included
        raise AuditError(f"{where}: not valid JSON") from None
    if not isinstance(record, dict) or not isinstance(record.get("kind"), str):
        raise AuditError(f"{where}: not an audit record (no kind)")
    if "data" not in record:
        raise AuditError(f"{where}: not an audit record (no data)")
    try:
        return parse_event(record["kind"], record["data"])
    except EventError as exc:
        raise AuditError(f"{where}: {exc}") from None


@dataclass(frozen=True)
class Verified:
    """A log that passed: its head, and how many lines were signed (and checked)."""

    head: ChainHead
    signed: int
    unsigned: int
    key_checked: bool


def verify(path: Path, key: Ed25519PublicKey | None = None) -> ChainHead:
    """Check every line of an audit log; raise `AuditError` at the first bad one."""
    return check(path, key).head


def check(path: Path, key: Ed25519PublicKey | None = None) -> Verified:
    """Chain (and, with `key`, signatures) of every line; `AuditError` at the first bad one."""
    try:
        lines = path.read_bytes().split(b"\n")
    except OSError as exc:
        raise AuditError(f"{path}: cannot be read: {exc.strerror}") from None
    if lines and lines[-1] == b"":
        lines.pop()
    else:
        raise AuditError(f"{path}:{len(lines)}: last line is incomplete (no newline)")
    head, signed, unsigned = ChainHead(0, GENESIS), 0, 0
    for number, raw in enumerate(lines, start=1):
        head, record = _check_line(path, number, raw, head)
        where = f"{path}:{number}"
        if "sig" in record or "signer" in record:
            if key is not None:
                _check_signature(where, record, key)
            signed += 1
        elif key is not None and signed:
            raise AuditError(
                f"{where}: line is not signed, after signed lines (inserted, or its "
                "signature was stripped)"
            )
        else:
            unsigned += 1
    if key is not None and lines and not signed:
        raise AuditError(
            f"{path}: no line is signed, so nothing ties this log to the aggregator's key "
            "(a log from before signing verifies without --key, chain only)"
        )
    return Verified(head, signed, unsigned, key is not None)


def _check_signature(where: str, record: dict[str, Any], key: Ed25519PublicKey) -> None:
    sig, signer = record.get("sig"), record.get("signer")
    if not isinstance(sig, str) or not isinstance(signer, str):
        raise AuditError(f"{where}: signer or signature missing or not a string")
    try:
        raw = base64.b64decode(sig, validate=True)
    except (binascii.Error, ValueError):
        raise AuditError(f"{where}: signature is not base64") from None
    try:
        key.verify(raw, str(record["hash"]).encode())
    except InvalidSignature:
        raise AuditError(
            f"{where}: signature does not match the aggregator's key (signer {signer!r:.70})"
        ) from None


def _check_line(
    path: Path, number: int, raw: bytes, head: ChainHead
) -> tuple[ChainHead, dict[str, Any]]:
    where = f"{path}:{number}"
    try:
        record = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError, RecursionError):
        raise AuditError(f"{where}: not valid JSON") from None
    if not isinstance(record, dict) or not {"seq", "prev", "hash", "kind", "data"} <= set(record):
        raise AuditError(f"{where}: not an audit record")
    try:
        expected = line_hash(record)
    except ValueError:  # NaN or Infinity smuggled into a line
        raise AuditError(f"{where}: not canonical JSON (NaN or infinite number)") from None
    if record["hash"] != expected:
        raise AuditError(f"{where}: line was edited (its hash does not match its content)")
    if record["seq"] != head.seq + 1 or isinstance(record["seq"], bool):
        raise AuditError(
            f"{where}: sequence {record['seq']!r:.30} follows {head.seq} (line removed or moved)"
        )
    if record["prev"] != head.hash:
        raise AuditError(f"{where}: does not chain to the previous line (line removed or moved)")
    return ChainHead(record["seq"], record["hash"]), record
