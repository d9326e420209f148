"""A plant evaluation set's content, checked the same way where it is sent and where it lands.

The spool skips a bad line and trains on the rest; an evaluation set is all or nothing. Its
numbers are compared across boxes and rounds by its sha256, so a box must score exactly the
file the plant published: one bad line, a cut-off end, too many bytes or records, and the
whole set is refused with the reason (the box keeps the set it had).
"""

import hashlib
from dataclasses import dataclass

from appliance.data.records import Record, parse_record
from appliance.errors import DataError


class EvaluationSetError(DataError):
    """The content is not a usable evaluation set; the message says why."""


@dataclass(frozen=True)
class EvaluationSet:
    """A checked evaluation set: its bytes, their sha256 and the records they hold."""

    data: bytes
    sha256: str
    records: tuple[Record, ...]


def check_evaluation_set(data: bytes, *, max_records: int, max_bytes: int) -> EvaluationSet:
    """Every non-blank line must be a record (spool format), the last one ended by a newline
    (else the file may have been cut off mid-record); `EvaluationSetError` names the first
    problem."""
    if len(data) > max_bytes:
        raise EvaluationSetError(f"{len(data)} bytes, more than the {max_bytes} allowed")
    if data and not data.endswith(b"\n"):
        raise EvaluationSetError("the last line has no newline: the file may be cut off")
    records: list[Record] = []
    for number, raw in enumerate(data.split(b"\n")[:-1], start=1):
        if not raw.strip():
            continue
        try:
            records.append(parse_record(raw, number))
        except ValueError as exc:
            raise EvaluationSetError(f"line {number}: {exc}") from None
        if len(records) > max_records:
            raise EvaluationSetError(f"more than the {max_records} records allowed")
    if not records:
        raise EvaluationSetError("no record in it")
    return EvaluationSet(data, hashlib.sha256(data).hexdigest(), tuple(records))
