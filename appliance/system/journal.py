"""Structured journal fields on every log record: `journalctl BOX_ID=box-07 ROUND=r12-...`.

The daemon sets process-wide fields once (`NODE_ID`, `BOX_ID` on a box, `PLANT_ID`, `ROLE`)
and the services set `ROUND` while they work on a round. A single call site may add its own
fields with `extra={"FIELD": value}`. Under systemd, with systemd-python installed and stderr
connected to the journal (`$JOURNAL_STREAM` names stderr's device and inode), records go to
journald natively and carry these fields; otherwise they stay plain lines on stderr, and the
fields are simply not shown.
"""

import logging
import os
import re
import sys
import threading
from collections.abc import Callable
from typing import Any

_FIELD_RE = re.compile(r"[A-Z0-9][A-Z0-9_]{0,63}")
_lock = threading.Lock()
_fields: dict[str, str] = {}


def set_fields(**fields: object) -> None:
    """Set process-wide fields (`set_fields(ROUND="r3-ab12cd")`); None removes one."""
    for name in fields:
        if not _FIELD_RE.fullmatch(name):
            raise ValueError(f"invalid journal field name {name!r}: use A-Z, 0-9 and _")
    with _lock:
        for name, value in fields.items():
            if value is None:
                _fields.pop(name, None)
            else:
                _fields[name] = str(value)


def clear_fields(*names: str) -> None:
    """Remove fields (all of them when no name is given)."""
    with _lock:
        if names:
            for name in names:
                _fields.pop(name, None)
        else:
            _fields.clear()


def current_fields() -> dict[str, str]:
    """A copy of the process-wide fields."""
    with _lock:
        return dict(_fields)


class FieldsFilter(logging.Filter):
    """Puts the process-wide fields on each record (a record's own `extra` wins)."""

    def filter(self, record: logging.LogRecord) -> bool:
        for name, value in current_fields().items():
            if not hasattr(record, name):
                setattr(record, name, value)
        return True


def stderr_is_journal() -> bool:
    """True when systemd connected our stderr to journald (`$JOURNAL_STREAM` = dev:inode)."""
    stream = os.environ.get("JOURNAL_STREAM", "")
    device, _, inode = stream.partition(":")
    try:
        stat = os.fstat(sys.stderr.fileno())
        return (stat.st_dev, stat.st_ino) == (int(device), int(inode))
    except (ValueError, OSError, AttributeError):
        return False


def journal_handler(
    identifier: str = "appliance", sender: Callable[..., Any] | None = None
) -> logging.Handler | None:
    """systemd-python's JournalHandler carrying our fields, or None without systemd-python.

    `sender` replaces `systemd.journal.send` (the tests capture what would reach journald).
    """
    try:
        from systemd.journal import JournalHandler, send  # noqa: PLC0415 (optional dependency)
    except ImportError:
        return None
    handler: logging.Handler = JournalHandler(
        SYSLOG_IDENTIFIER=identifier, sender_function=_uppercase_only(sender or send)
    )
    handler.addFilter(FieldsFilter())
    return handler


def _uppercase_only(send: Callable[..., Any]) -> Callable[..., Any]:
    """JournalHandler passes every attribute of the record; journald wants only valid
    (upper-case) field names, so pass those and drop the rest (msg, args, levelname...)."""

    def sender(message: str, /, **fields: Any) -> Any:
        valid = {k: v for k, v in fields.items() if _FIELD_RE.fullmatch(k) and v is not None}
        return send(message, **valid)

    return sender
