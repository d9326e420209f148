"""Read plant data records from JSON Lines: `{"text": ...}` or `{"prompt": ..., "completion": ...}`.

Plant data is written by other programs and people; one bad line must never stop training on
the good ones. Every line is checked on its own, bad ones are reported with their line number
and reason and skipped; only a file with no usable record at all is an error.
"""

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from appliance.errors import DataError

MAX_LINE_BYTES = 1_000_000
"""A longer line is refused: one record should be a document, not a dump."""

_TEXT_KEYS = frozenset({"text"})
_PAIR_KEYS = frozenset({"prompt", "completion"})


@dataclass(frozen=True)
class Record:
    """One training example: plain text, or a prompt with its completion."""

    line: int
    text: str | None = None
    prompt: str | None = None
    completion: str | None = None


@dataclass(frozen=True)
class BadLine:
    """A line that was skipped, and why."""

    line: int
    reason: str

    def __str__(self) -> str:
        return f"line {self.line}: {self.reason}"


@dataclass(frozen=True)
class RecordSet:
    """The usable records of a file and the lines that were skipped."""

    path: Path
    records: list[Record]
    bad_lines: list[BadLine]


def read_records(path: Path, max_line_bytes: int = MAX_LINE_BYTES) -> RecordSet:
    """Read every valid record of `path`; raise `DataError` when none is usable."""
    records: list[Record] = []
    bad: list[BadLine] = []
    for number, raw in _lines(path):
        if not raw.strip():
            continue
        if len(raw) > max_line_bytes:
            bad.append(BadLine(number, f"line is {len(raw)} bytes, more than {max_line_bytes}"))
            continue
        try:
            records.append(parse_record(raw, number))
        except ValueError as exc:
            bad.append(BadLine(number, str(exc)))
    if not records:
        detail = "; ".join(str(b) for b in bad[:5]) or "the file is empty"
        raise DataError(f"{path}: no usable record ({detail})")
    return RecordSet(path, records, bad)


def _lines(path: Path) -> Iterator[tuple[int, bytes]]:
    try:
        with path.open("rb") as handle:
            yield from enumerate(handle, start=1)
    except FileNotFoundError:
        raise DataError(f"{path}: file does not exist") from None
    except IsADirectoryError:
        raise DataError(f"{path}: is a directory, not a JSON Lines file") from None
    except OSError as exc:
        raise DataError(f"{path}: cannot be read: {exc.strerror}") from None


def _refuse_constant(name: str) -> float:
    raise ValueError(f"{name} is not a number JSON allows")


def parse_record(raw: bytes, line: int) -> Record:
    """Parse one line; `ValueError` says what is wrong with it."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ValueError(f"not valid UTF-8 (byte {exc.start})") from None
    try:
        value = json.loads(text, parse_constant=_refuse_constant)
    except json.JSONDecodeError as exc:
        raise ValueError(f"not valid JSON ({exc.msg} at column {exc.colno})") from None
    if not isinstance(value, dict):
        raise ValueError(f"expected a JSON object, got {type(value).__name__}")
    keys = frozenset(value)
    if keys == _TEXT_KEYS:
        return Record(line, text=_string(value, "text"))
    if keys == _PAIR_KEYS:
        return Record(
            line, prompt=_string(value, "prompt"), completion=_string(value, "completion")
        )
    raise ValueError(
        'expected the keys {"text"} or {"prompt", "completion"}, got '
        + ("{" + ", ".join(f'"{k}"' for k in sorted(keys)) + "}" if keys else "an empty object")
    )


def _string(value: dict[str, object], key: str) -> str:
    item = value[key]
    if not isinstance(item, str):
        raise ValueError(f'"{key}" must be a string, got {type(item).__name__}')
    if not item.strip():
        raise ValueError(f'"{key}" is empty')
    return item
