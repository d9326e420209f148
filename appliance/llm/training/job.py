"""What the supervisor hands the trainer worker, and what it gets back.

The job travels as one JSON document on the worker's stdin; results and progress come back
as JSON lines on its stdout. Everything in a job was checked by the supervisor already:
the worker trusts it and does only what can abort.
"""

import json
from dataclasses import asdict, dataclass, field
from typing import Any

from appliance.config.training import TrainingSettings
from appliance.data.records import Record
from appliance.llm.adapters import MetadataValue


@dataclass(frozen=True)
class TrainingJob:
    """One training run, ready to execute."""

    model: str
    train_model: str
    start_adapter: str
    out: str
    alpha: float
    architecture: str
    settings: dict[str, Any]
    train_records: list[dict[str, Any]]
    heldout_records: list[dict[str, Any]]
    metadata: dict[str, MetadataValue] = field(default_factory=dict)
    evaluate: bool = True

    def to_json(self) -> str:
        """Serialise for the worker's stdin."""
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, text: str) -> "TrainingJob":
        """Inverse of `to_json`."""
        return cls(**json.loads(text))

    def training_settings(self) -> TrainingSettings:
        """The settings as the supervisor validated them (not validated again here)."""
        return TrainingSettings.model_construct(**self.settings)

    @staticmethod
    def records(rows: list[dict[str, Any]]) -> list[Record]:
        """Records back from their JSON form."""
        return [Record(**row) for row in rows]


@dataclass(frozen=True)
class TrainingResult:
    """What a finished (or stopped) run produced and measured."""

    adapter: str | None
    adapter_bytes: int
    stopped: bool
    steps: int
    epochs: int
    tokens: int
    seconds: float
    tokens_per_s: float
    peak_rss_mb: float
    train_loss: float | None
    val_loss: float | None
    nll_before: float | None
    nll_after: float | None
    nll_after_on_training_copy: float | None
    heldout_tokens: int
    records: int
    heldout_records: int
    bad_lines: list[str]
    train_model: str
    memory_estimate_mb: float

    @property
    def nll_gap(self) -> float | None:
        """NLL served on the original model minus NLL on the training copy (None if no copy)."""
        if self.nll_after is None or self.nll_after_on_training_copy is None:
            return None
        return self.nll_after - self.nll_after_on_training_copy

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready, with the derived `nll_gap`."""
        return {**asdict(self), "nll_gap": self.nll_gap}
