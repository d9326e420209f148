"""What a box remembers across restarts: its adapters, the rounds it did, its local results.

One small JSON file, replaced atomically. The error-feedback residual lives beside it
(`residual.npz`), the adapter files in `adapters/`.
"""

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path


@dataclass
class EdgeState:
    """The box's durable state."""

    active_version: int | None = None
    active_path: str | None = None
    previous_version: int | None = None
    previous_path: str | None = None
    pinned_version: int | None = None
    done_rounds: list[str] = field(default_factory=list)
    local_nll: dict[str, float] = field(default_factory=dict)
    train_seconds: dict[str, float] = field(default_factory=dict)

    @classmethod
    def load(cls, path: Path) -> "EdgeState":
        """Read the state; a missing file is a fresh box."""
        if not path.exists():
            return cls()
        return cls(**json.loads(path.read_text()))

    def save(self, path: Path) -> None:
        """Write atomically (a crash leaves the old or the new file, never half of one)."""
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(asdict(self), indent=1))
        with tmp.open("rb") as handle:
            os.fsync(handle.fileno())
        tmp.replace(path)
