"""Training data and settings shared by the training tests."""

import json
from pathlib import Path

import pytest

from appliance.config.training import TrainingSettings

SENTENCES = [
    "the quick brown fox jumps over the lazy dog",
    "the cat sat on the mat and the dog sat on the rug",
    "pump one runs hot when the filter is blocked",
    "clear the magazine and reset the sensor",
]


def write_corpus(path: Path, records: int = 24, extra_lines: list[str] | None = None) -> Path:
    """A learnable synthetic corpus: a few sentences, repeated in a fixed order."""
    lines = [
        json.dumps({"text": ". ".join(SENTENCES[(i + k) % len(SENTENCES)] for k in range(4))})
        for i in range(records)
    ]
    lines[3:3] = extra_lines or []
    path.write_text("\n".join(lines) + "\n")
    return path


def tiny_settings(**changes: object) -> TrainingSettings:
    """Fast settings for the tiny model (validated like a config file would be)."""
    values: dict[str, object] = {
        "rank": 8,
        "alpha": 16.0,
        "learning_rate": 2e-2,
        "epochs": 4,
        "freeze_a": False,
        "base_precision": "same",
        "threads": 2,
        "nice": 0,
        "validation_fraction": 0.1,
    }
    values.update(changes)
    return TrainingSettings.model_validate(values)


@pytest.fixture(scope="session")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The shared training corpus (with two bad lines the trainer must skip)."""
    return write_corpus(
        tmp_path_factory.mktemp("corpus") / "plant.jsonl",
        extra_lines=['{"text": 42}', "{not json"],
    )
