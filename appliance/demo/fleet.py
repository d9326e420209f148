"""Lay out a demo plant in a directory: keys, trust, configs and each box's plant data.

Besides each box's spool the demo writes a plant evaluation set: questions from every line
that no box trains on (records drawn past the end of each spool). The aggregator publishes
it to every box, and each box scores the base model, its local adapter and the global one on
it, which shows what federating buys: a local adapter knows its own line, the global one
the plant. With `solo_baseline` each box also trains a local-only adapter, round after
round from its own data alone, and scores it beside the global one: the counterfactual of a
box that never federated (the round's local adapter starts from the previous global one).
"""

import json
from dataclasses import dataclass
from pathlib import Path

from appliance.data.synthetic import LINES, line_for, maintenance_records, write_jsonl
from appliance.identity import generate_key_pair

AGGREGATOR = "aggregator"
PLANT = "demo-plant"
PLANT_SET_PER_LINE = 8
"""Records of each line in the plant evaluation set (half of them prompt/completion)."""


@dataclass(frozen=True)
class FleetLayout:
    """Where everything of one demo run lives."""

    root: Path
    boxes: tuple[str, ...]

    def config(self, node: str) -> Path:
        return self.root / node / ("aggregator.toml" if node == AGGREGATOR else "edge.toml")

    def state_dir(self, node: str) -> Path:
        return self.root / node / "state"

    @property
    def audit_log(self) -> Path:
        return self.state_dir(AGGREGATOR) / "audit.jsonl"

    @property
    def plant_set(self) -> Path:
        """The plant evaluation set the aggregator publishes."""
        return self.root / AGGREGATOR / "plant-set.jsonl"


@dataclass(frozen=True)
class FleetOptions:
    """What the demo varies."""

    boxes: int
    rounds: int
    model: str
    port: int
    records_per_box: int
    training: dict[str, object]
    codec: tuple[tuple[str, object], ...] = (("values", "int8"),)
    plant_set_per_line: int = PLANT_SET_PER_LINE
    """Records of each line in the plant evaluation set (0: no set, boxes score their own
    data only)."""
    solo_baseline: bool = False
    """Boxes also train a local-only adapter each round (`[evaluation] solo_baseline`): what
    each would know alone, beside the global adapter. The demo turns it on."""


def lay_out(root: Path, options: FleetOptions) -> FleetLayout:
    """Write keys, trust directory, configs and spool data for the aggregator and boxes."""
    boxes = tuple(f"box-{i + 1}" for i in range(options.boxes))
    layout = FleetLayout(root, boxes)
    trust = root / "trust"
    for node in (AGGREGATOR, *boxes):
        private, public = generate_key_pair(root / node / "keys", node)
        trust.mkdir(parents=True, exist_ok=True)
        (trust / public.name).write_bytes(public.read_bytes())
        layout.config(node).write_text(_config(layout, node, private, trust, options))
    for index, box in enumerate(boxes):
        records = box_records(index, options.records_per_box)
        write_jsonl(layout.root / box / "spool" / "plant-data.jsonl", records)
    if options.plant_set_per_line > 0:
        records = plant_set_records(
            options.boxes, options.records_per_box, options.plant_set_per_line
        )
        write_jsonl(layout.plant_set, records)
    return layout


def box_records(index: int, count: int) -> list[dict[str, str]]:
    """The n-th box's plant data: its line's records, drawn with its index as seed."""
    return maintenance_records(line_for(index), count, seed=index)


def plant_set_records(
    boxes: int, spool_records: int, per_line: int = PLANT_SET_PER_LINE
) -> list[dict[str, str]]:
    """`per_line` held-out records of every line the boxes run: drawn after the end of the
    line's first spool (the same seed goes on), skipping any record a spool holds verbatim,
    so no box has trained on a question of the set."""
    spooled = {
        json.dumps(record, sort_keys=True)
        for index in range(boxes)
        for record in box_records(index, spool_records)
    }
    chosen: list[dict[str, str]] = []
    for index in range(min(boxes, len(LINES))):
        beyond = box_records(index, spool_records + 4 * per_line)[spool_records:]
        fresh = [r for r in beyond if json.dumps(r, sort_keys=True) not in spooled]
        chosen += fresh[:per_line]
    return chosen


def _config(layout: FleetLayout, node: str, key: Path, trust: Path, options: FleetOptions) -> str:
    role = "aggregator" if node == AGGREGATOR else "edge"
    lines = [
        f'role = "{role}"',
        "[identity]",
        f'plant_id = "{PLANT}"',
        f'node_id = "{node}"',
        f'private_key_file = "{key}"',
        f'trust_dir = "{trust}"',
        "[model]",
        f'path = "{options.model}"',
        "context_tokens = 512",
        "threads = 1",
        "[mqtt]",
        'host = "127.0.0.1"',
        f"port = {options.port}",
        "reconnect_max_delay_s = 2",
        "[paths]",
        f'state_dir = "{layout.state_dir(node)}"',
        f'spool_dir = "{layout.root / node / "spool"}"',
        f'cache_dir = "{layout.root / "cache"}"',
        "[training]",
        *(f"{key} = {_toml(value)}" for key, value in options.training.items()),
    ]
    if role == "aggregator":
        lines += [
            "[rounds]",
            f"min_updates = {options.boxes}",
            "min_updates_at_deadline = 1",
            "deadline_s = 3600",
            "reannounce_s = 2.0",
            "[fleet]",
            f"max_rounds = {options.rounds}",
            "[fleet.codec]",
            *(f"{key} = {_toml(value)}" for key, value in options.codec),
            "[health]",
            "metrics_port = 0",
        ]
        if options.plant_set_per_line > 0:
            # the set goes out as the first round opens, before the boxes have connected: a
            # re-announce after a second (not the default minute) lets them take it while
            # they train, so they score it in round 1 already
            lines += ["[transfer]", "resend_after_s = 1"]
            lines += ["[evaluation_set]", f'path = "{layout.plant_set}"']
    else:
        lines += ["[federation]", f'aggregator_id = "{AGGREGATOR}"', "spool_scan_s = 1.0"]
        if options.solo_baseline:
            lines += ["[evaluation]", "solo_baseline = true"]
    return "\n".join(lines) + "\n"


def _toml(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return f'"{value}"'
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_toml(v) for v in value) + "]"
    return repr(value)
