"""The aggregator's audit log: one hash-chained JSON line per event, append-only.

Each line holds its sequence number, the hash of the previous line and its own hash over its
canonical JSON, so editing, removing or reordering any line breaks the chain at that line.
Removing lines from the end cannot be seen from the file alone: `verify` prints the head
hash, which the aggregator also publishes (and, with signed lines, signs).
"""

import hashlib
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from appliance.errors import ApplianceError

GENESIS = "0" * 64


class AuditError(ApplianceError):
    """The audit log is broken at a line; the message names it."""


def canonical(record: dict[str, Any]) -> bytes:
    """The bytes a line's hash covers: sorted keys, no spaces, no NaN."""
    return json.dumps(record, sort_keys=True, separators=(",", ":"), allow_nan=False).encode()


def line_hash(record: dict[str, Any]) -> str:
    """sha256 of a record without its own `hash` field."""
    body = {k: v for k, v in record.items() if k != "hash"}
    return hashlib.sha256(canonical(body)).hexdigest()


@dataclass(frozen=True)
class ChainHead:
    """Where the chain ends: the last sequence number and hash."""

    seq: int
    hash: str


class AuditLog:
    """Appends events to a hash-chained JSON Lines file (fsync'd per line)."""

    def __init__(self, path: Path) -> None:
        self.path = path
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

    def append(self, kind: str, data: dict[str, Any]) -> ChainHead:
        """Add one event; returns the new head."""
        record: dict[str, Any] = {
            "seq": self.head.seq + 1,
            "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "kind": kind,
            "data": data,
            "prev": self.head.hash,
        }
        record["hash"] = line_hash(record)
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


def verify(path: Path) -> ChainHead:
    """Check every line of an audit log; raise `AuditError` at the first bad one."""
    try:
        lines = path.read_bytes().split(b"\n")
    except OSError as exc:
        raise AuditError(f"{path}: cannot be read: {exc.strerror}") from None
    if lines and lines[-1] == b"":
        lines.pop()
    else:
        raise AuditError(f"{path}:{len(lines)}: last line is incomplete (no newline)")
    head = ChainHead(0, GENESIS)
    for number, raw in enumerate(lines, start=1):
        head = _check_line(path, number, raw, head)
    return head


def _check_line(path: Path, number: int, raw: bytes, head: ChainHead) -> ChainHead:
    where = f"{path}:{number}"
    try:
        record = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise AuditError(f"{where}: not valid JSON") from None
    if not isinstance(record, dict) or not {"seq", "prev", "hash", "kind", "data"} <= set(record):
        raise AuditError(f"{where}: not an audit record")
    if record["hash"] != line_hash(record):
        raise AuditError(f"{where}: line was edited (its hash does not match its content)")
    if record["seq"] != head.seq + 1:
        raise AuditError(
            f"{where}: sequence {record['seq']} follows {head.seq} (line removed or moved)"
        )
    if record["prev"] != head.hash:
        raise AuditError(f"{where}: does not chain to the previous line (line removed or moved)")
    return ChainHead(record["seq"], record["hash"])
