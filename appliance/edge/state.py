"""What a box remembers across restarts: its adapters, the rounds it did, its local results.

One small JSON file, replaced atomically. The error-feedback residual lives beside it
(`residual.npz`), the adapter files in `adapters/`.

A file the box cannot use (torn by hand, edited into nonsense, written by a version that
disagrees about its shape) is moved aside with a log line and the box starts fresh: a daemon
that raised on its own state at every start would be a crash loop under systemd's
`Restart=`. Disk errors (`OSError`) are not set aside: they are not the file's fault, and a
restart may well succeed.
"""

import json
import logging
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from appliance.system.files import quarantine, write_durably

log = logging.getLogger(__name__)


OBEYED_KEPT = 100
"""Operator commands remembered as carried out (a redelivery comes within seconds)."""


@dataclass
class EdgeState:
    """The box's durable state."""

    active_version: int | None = None
    active_path: str | None = None
    previous_version: int | None = None
    previous_path: str | None = None
    pinned_version: int | None = None
    done_rounds: list[str] = field(default_factory=list)
    """Rounds this box is finished with: trained and its update prepared, or given up."""
    local_nll: dict[str, float] = field(default_factory=dict)
    local_task: dict[str, float] = field(default_factory=dict)
    """Per round: the exact-match rate of the round's local adapter on the held-out data."""
    plant_local_nll: dict[str, float] = field(default_factory=dict)
    """Per round: the local adapter's NLL on the plant evaluation set..."""
    plant_local_task: dict[str, float] = field(default_factory=dict)
    """...its exact-match rate there..."""
    plant_local_sha256: dict[str, str] = field(default_factory=dict)
    """...and which content of the set both were measured on."""
    plant_set_published_at: float | None = None
    """When the aggregator published the plant evaluation set held (an older one is
    refused)."""
    solo_round: str | None = None
    """The round whose local-only ("solo") baseline is training now: a restart finds it set
    and sends that round's held evaluations without solo numbers."""
    solo_nll: dict[str, float] = field(default_factory=dict)
    """Per round: the solo baseline's NLL on the held-out data..."""
    solo_task: dict[str, float] = field(default_factory=dict)
    """...its exact-match rate there..."""
    plant_solo_nll: dict[str, float] = field(default_factory=dict)
    """...its NLL on the plant evaluation set..."""
    plant_solo_task: dict[str, float] = field(default_factory=dict)
    """...its exact-match rate there..."""
    plant_solo_sha256: dict[str, str] = field(default_factory=dict)
    """...and which content of the set the plant numbers were measured on."""
    held_evaluations: list[dict[str, Any]] = field(default_factory=list)
    """Evaluations of a round whose solo baseline is still training: they wait for its
    numbers (or for its failure), then move to `unsent_evaluations`."""
    train_seconds: dict[str, float] = field(default_factory=dict)
    sending: list[str] = field(default_factory=list)
    """Done rounds whose prepared update (`rounds/<id>/update.bin`) may not be in the outbox
    yet: a restart queues it (unless the outbox has it) instead of training again."""
    evaluated_versions: list[int] = field(default_factory=list)
    """Global versions installed and evaluated: a second delivery of one is a no-op."""
    unsent_evaluations: list[dict[str, Any]] = field(default_factory=list)
    """Evaluation messages decided with their activation, not yet in the outbox."""
    obeyed_commands: list[int] = field(default_factory=list)
    """Ids of the operator commands carried out (the last `OBEYED_KEPT`): one delivered
    again is not carried out twice."""

    @classmethod
    def load(cls, path: Path) -> "EdgeState":
        """Read the state; a missing file is a fresh box, a bad one is moved aside."""
        if not path.exists():
            return cls()
        try:
            return cls.from_json(json.loads(path.read_bytes()))
        except ValueError as exc:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
            quarantine(path, exc)
            return cls()

    @classmethod
    def from_json(cls, data: object) -> "EdgeState":
        """Check every field's type (`ValueError` naming the first bad one); keys this
        version does not know are ignored with a warning (a newer version wrote them)."""
        if not isinstance(data, dict):
            raise ValueError(f"expected a JSON object, not {type(data).__name__}")
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            log.warning("edge state: ignoring unknown fields %s", ", ".join(unknown))
        for name, check in _CHECKS.items():
            if name in data and not check(data[name]):
                raise ValueError(f"field {name!r} has a bad value: {data[name]!r:.80}")
        return cls(**{k: v for k, v in data.items() if k in known})

    def save(self, path: Path) -> None:
        """Write atomically (a crash leaves the old or the new file, never half of one)."""
        write_durably(path, json.dumps(asdict(self), indent=1).encode())


def _int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _number(value: object) -> bool:
    return _int(value) or isinstance(value, float)


def _optional(check: Callable[[object], bool]) -> Callable[[object], bool]:
    return lambda value: value is None or check(value)


def _list_of(check: Callable[[object], bool]) -> Callable[[object], bool]:
    return lambda value: isinstance(value, list) and all(check(v) for v in value)


def _str_to_number(value: object) -> bool:
    return isinstance(value, dict) and all(
        isinstance(k, str) and _number(v) for k, v in value.items()
    )


def _str_to_str(value: object) -> bool:
    return isinstance(value, dict) and all(
        isinstance(k, str) and isinstance(v, str) for k, v in value.items()
    )


def _str(value: object) -> bool:
    return isinstance(value, str)


def _object(value: object) -> bool:
    return isinstance(value, dict)


_CHECKS: dict[str, Callable[[object], bool]] = {
    "active_version": _optional(_int),
    "active_path": _optional(_str),
    "previous_version": _optional(_int),
    "previous_path": _optional(_str),
    "pinned_version": _optional(_int),
    "done_rounds": _list_of(_str),
    "obeyed_commands": _list_of(_int),
    "local_nll": _str_to_number,
    "local_task": _str_to_number,
    "plant_local_nll": _str_to_number,
    "plant_local_task": _str_to_number,
    "plant_local_sha256": _str_to_str,
    "plant_set_published_at": _optional(_number),
    "solo_round": _optional(_str),
    "solo_nll": _str_to_number,
    "solo_task": _str_to_number,
    "plant_solo_nll": _str_to_number,
    "plant_solo_task": _str_to_number,
    "plant_solo_sha256": _str_to_str,
    "held_evaluations": _list_of(_object),
    "train_seconds": _str_to_number,
    "sending": _list_of(_str),
    "evaluated_versions": _list_of(_int),
    "unsent_evaluations": _list_of(_object),
}
