"""Synthetic maintenance records for demos and tests: one production line per box.

Every line of the plant shares the same maintenance language (log format, common failure
causes, standard actions), but each has its own machines and alarm codes: the boxes' data
are related and not identically distributed, which is the situation federated learning is
for. Within a line, an alarm code determines its cause and action, so the records are
learnable; the seed makes every run identical.
"""

import json
import random
from dataclasses import dataclass
from pathlib import Path

CAUSES = (
    ("worn bearing", "replace the bearing and check shaft alignment"),
    ("loose drive belt", "re-tension the belt to specification"),
    ("clogged air filter", "replace the filter and clean the housing"),
    ("low hydraulic pressure", "top up hydraulic oil and inspect for leaks"),
    ("misaligned sensor", "realign the proximity sensor and recalibrate"),
    ("overheated motor", "clean the cooling fan and check motor current"),
    ("worn cutting blade", "replace the blade and reset the cut counter"),
    ("blocked coolant line", "flush the coolant line and refill"),
)
SYMPTOMS = (
    "runs hot",
    "makes a grinding noise",
    "vibrates",
    "stops intermittently",
    "loses speed",
    "shows pressure drops",
    "trips the breaker",
    "produces rejects",
)


@dataclass(frozen=True)
class ProductionLine:
    """A line's own vocabulary: name, machines and alarm-code prefix."""

    name: str
    machines: tuple[str, ...]
    alarm_prefix: str


LINES = (
    ProductionLine("packaging", ("wrapper W1", "labeller L2", "case packer C3"), "PK"),
    ProductionLine("stamping", ("press P4", "coil feeder F5", "die changer D6"), "ST"),
    ProductionLine("moulding", ("injection unit M7", "mould heater H8", "robot arm R9"), "MO"),
    ProductionLine("assembly", ("screw station S1", "conveyor K2", "vision cell V3"), "AS"),
    ProductionLine("painting", ("spray booth B5", "oven O6", "mixer X7"), "PT"),
)


def line_for(box_index: int) -> ProductionLine:
    """The production line of the n-th box (cycling through the plant's lines)."""
    return LINES[box_index % len(LINES)]


def maintenance_records(line: ProductionLine, count: int, seed: int = 0) -> list[dict[str, str]]:
    """`count` records of one line: prompt/completion pairs and free-text log entries."""
    rng = random.Random(f"{seed}:{line.name}")
    alarms = _alarm_table(line, rng)
    records = []
    for i in range(count):
        code, machine, cause, action = alarms[rng.randrange(len(alarms))]
        symptom = rng.choice(SYMPTOMS)
        if i % 2 == 0:
            records.append(
                {
                    "prompt": f"Line {line.name}, {machine}: alarm {code}, the machine {symptom}. "
                    "Likely cause and action?",
                    "completion": f"Alarm {code} on the {machine} means {cause}. Action: {action}.",
                }
            )
        else:
            records.append(
                {
                    "text": f"Maintenance log {_date(rng)}, shift {rng.randint(1, 3)}, line "
                    f"{line.name}. The {machine} {symptom} "
                    f"with alarm {code}. Cause found: {cause}. Action taken: {action}. "
                    "Machine returned to service.",
                }
            )
    return records


def _date(rng: random.Random) -> str:
    return f"2026-{rng.randint(1, 12):02d}-{rng.randint(1, 28):02d}"


def _alarm_table(line: ProductionLine, rng: random.Random) -> list[tuple[str, str, str, str]]:
    """Each line maps its alarm codes to machines and causes in its own way."""
    table = []
    for number, (cause, action) in enumerate(CAUSES):
        code = f"{line.alarm_prefix}-{100 + 7 * number + rng.randrange(7)}"
        table.append((code, rng.choice(line.machines), cause, action))
    return table


def write_jsonl(path: Path, records: list[dict[str, str]]) -> Path:
    """Write records as JSON Lines."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8") as handle:
        for record in records:
            handle.write(json.dumps(record) + "\n")
    return path
