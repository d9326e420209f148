"""Synthetic maintenance records for demos and tests: one production line per box.

Every line of the plant shares the same maintenance language (log format, common failure
causes, standard actions), but each has its own machines and alarm codes: the boxes' data
are related and not identically distributed, which is the situation federated learning is
for. Within a line, an alarm code determines its cause and action, so the records are
learnable; the seed makes every run identical.

The plant also has equipment every line depends on (utilities, conveyors, compressed air)
with one alarm table for the whole plant. Each line sits next to one of these groups and
sees its alarms often; the other groups' alarms reach it only rarely, while another line
sees them every week. That is the honest case for federating: each box alone knows its own
codes and its group's well, and only the plant as a whole knows every shared alarm. A box
scored on a plant-wide question set (see appliance/edge/plant_set.py) shows what the global
adapter knows that its local one cannot.
"""

import json
import random
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

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
class SharedGroup:
    """Plant equipment every line depends on, with its own failure causes."""

    name: str
    machines: tuple[str, ...]
    alarm_prefix: str
    causes: tuple[tuple[str, str], ...]


SHARED_GROUPS = (
    SharedGroup(
        "utilities",
        ("main switchboard E1", "chiller E2"),
        "UT",
        (
            ("phase loss on the supply", "reset the feeder breaker and check the supply phases"),
            ("chilled water too warm", "clean the chiller condenser and check the refrigerant"),
            ("tripped earth-leakage relay", "find the leaking circuit with an insulation test"),
            ("low supply voltage", "check the transformer tap and the supply contactor"),
        ),
    ),
    SharedGroup(
        "conveyors",
        ("transfer conveyor T1", "accumulation table T2"),
        "CV",
        (
            ("jammed transfer roller", "clear the jam and check the roller bearings"),
            ("slipping conveyor belt", "clean the drive drum and re-tension the belt"),
            ("dirty photo-eye", "clean the photo-eye and test the zone"),
            ("worn gearbox seal", "replace the gearbox seal and refill the oil"),
        ),
    ),
    SharedGroup(
        "compressed air",
        ("air compressor A1", "air dryer A2"),
        "CA",
        (
            ("air leak at a fitting", "replace the fitting and leak-test the header"),
            ("wet compressed air", "drain the separator and check the dryer"),
            ("blocked intake filter", "replace the compressor intake filter"),
            ("stuck relief valve", "free the relief valve and check its set point"),
        ),
    ),
)


@dataclass(frozen=True)
class ProductionLine:
    """A line's own vocabulary: name, machines, alarm-code prefix, and the plant-wide group
    (a `SHARED_GROUPS` name) whose alarms it sees often."""

    name: str
    machines: tuple[str, ...]
    alarm_prefix: str
    shared_group: str


LINES = (
    ProductionLine("packaging", ("wrapper W1", "labeller L2", "case packer C3"), "PK", "conveyors"),
    ProductionLine(
        "stamping", ("press P4", "coil feeder F5", "die changer D6"), "ST", "compressed air"
    ),
    ProductionLine(
        "moulding", ("injection unit M7", "mould heater H8", "robot arm R9"), "MO", "utilities"
    ),
    ProductionLine(
        "assembly", ("screw station S1", "conveyor K2", "vision cell V3"), "AS", "conveyors"
    ),
    ProductionLine("painting", ("spray booth B5", "oven O6", "mixer X7"), "PT", "compressed air"),
)

OWN_SHARE = 0.6
"""Share of a line's records about its own machines' alarms."""
GROUP_SHARE = 0.32
"""Share about its plant-wide group's alarms; the rest (8 %) about the other groups' (rare)."""


class Alarm(NamedTuple):
    """What an alarm code means: on which machine, the cause, and the action."""

    code: str
    machine: str
    cause: str
    action: str


@dataclass(frozen=True)
class LineAlarms:
    """The alarms one line sees: its own, its group's (common) and the others' (rare)."""

    own: tuple[Alarm, ...]
    common: tuple[Alarm, ...]
    rare: tuple[Alarm, ...]


def line_for(box_index: int) -> ProductionLine:
    """The production line of the n-th box (cycling through the plant's lines)."""
    return LINES[box_index % len(LINES)]


def plant_alarms(plant_seed: int = 0) -> dict[str, tuple[Alarm, ...]]:
    """The plant-wide alarm table, per shared group: the same codes and meanings on every
    line (it depends on the plant, never on a line or a record seed)."""
    table = {}
    for number, group in enumerate(SHARED_GROUPS):
        rng = random.Random(f"plant{plant_seed}:{group.name}")
        table[group.name] = tuple(
            Alarm(
                f"{group.alarm_prefix}-{200 + 40 * number + 7 * n + rng.randrange(7)}",
                rng.choice(group.machines),
                cause,
                action,
            )
            for n, (cause, action) in enumerate(group.causes)
        )
    return table


def line_alarms(line: ProductionLine, plant_seed: int = 0) -> LineAlarms:
    """A line's alarm codes: its own table (each line maps codes to machines and causes in
    its own way) and the plant's shared tables split into its group and the others."""
    rng = random.Random(f"plant{plant_seed}:{line.name}")
    own = tuple(
        Alarm(
            f"{line.alarm_prefix}-{100 + 7 * number + rng.randrange(7)}",
            rng.choice(line.machines),
            cause,
            action,
        )
        for number, (cause, action) in enumerate(CAUSES)
    )
    shared = plant_alarms(plant_seed)
    rare = tuple(a for name, alarms in shared.items() if name != line.shared_group for a in alarms)
    return LineAlarms(own, shared[line.shared_group], rare)


def maintenance_records(
    line: ProductionLine, count: int, seed: int = 0, *, plant_seed: int = 0
) -> list[dict[str, str]]:
    """`count` records of one line: prompt/completion pairs and free-text log entries.

    `seed` picks the records; the alarm tables come from `plant_seed` only, so records of
    the same line drawn with other seeds (held-out or evaluation data) mean the same."""
    rng = random.Random(f"{seed}:{line.name}")
    alarms = line_alarms(line, plant_seed)
    records = []
    for i in range(count):
        code, machine, cause, action = _pick(alarms, rng)
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


def _pick(alarms: LineAlarms, rng: random.Random) -> Alarm:
    """One alarm: own codes most often, the line's group next, the other groups rarely."""
    draw = rng.random()
    if draw < OWN_SHARE:
        return rng.choice(alarms.own)
    if draw < OWN_SHARE + GROUP_SHARE:
        return rng.choice(alarms.common)
    return rng.choice(alarms.rare)


def _date(rng: random.Random) -> str:
    return f"2026-{rng.randint(1, 12):02d}-{rng.randint(1, 28):02d}"


def write_jsonl(path: Path, records: list[dict[str, str]]) -> Path:
    """Write records as JSON Lines."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8") as handle:
        for record in records:
            handle.write(json.dumps(record) + "\n")
    return path
