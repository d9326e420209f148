"""Read the demo's results from the aggregator's audit log and print them per round.

Each box's numbers come twice: on its own held-out data (how well an adapter knows the
box's line) and on the plant evaluation set (questions from every line, the same for every
box: how well it knows the plant). The local adapter tends to win the first, the global one
the second, which is the point of federating.

The round's local adapter starts from the previous global one, so after the first round it
already holds what the other lines taught; a box with `[evaluation] solo_baseline` also
reports a solo adapter (its own data alone, every round, never a global one): the column
that says whether the box would be better off alone.
"""

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from appliance.federation.audit import read_events
from appliance.federation.audit_events import EvaluationReceived, GlobalSent, RoundAggregated


@dataclass
class RoundSummary:
    """One round as the demo reports it."""

    round_id: str
    global_version: int = 0
    seconds: float | None = None
    bytes_up: dict[str, int] = field(default_factory=dict)
    dense_fp32_bytes: dict[str, int] = field(default_factory=dict)
    """What each update would weigh as dense fp32; empty for a secure round (masked)."""
    bytes_down: int = 0
    strategy: dict[str, Any] = field(default_factory=dict)
    boxes: dict[str, EvaluationReceived] = field(default_factory=dict)

    def ratio(self, box: str) -> float | None:
        """How much smaller the box's update was than dense fp32 (None: not known)."""
        up, dense = self.bytes_up.get(box), self.dense_fp32_bytes.get(box)
        return dense / up if up and dense is not None else None

    def as_json(self) -> dict[str, Any]:
        """The round in the demo's JSON summary."""
        ratios = {box: self.ratio(box) for box in self.bytes_up}
        return {
            "round_id": self.round_id,
            "global_version": self.global_version,
            "seconds": self.seconds,
            "bytes_up": self.bytes_up,
            "bytes_down": self.bytes_down,
            "compression_ratio": {box: r for box, r in ratios.items() if r is not None},
            "strategy": self.strategy,
            "boxes": {box: _box_json(e) for box, e in self.boxes.items()},
        }


def _box_json(evaluation: EvaluationReceived) -> dict[str, float | None]:
    """One box's numbers in the summary: own held-out data, then the plant set."""
    return {
        "nll_base": evaluation.nll_base,
        "nll_solo": evaluation.nll_solo,
        "nll_local": evaluation.nll_local,
        "nll_global": evaluation.nll_global,
        "plant_nll_base": evaluation.plant_nll_base,
        "plant_nll_solo": evaluation.plant_nll_solo,
        "plant_nll_local": evaluation.plant_nll_local,
        "plant_nll_global": evaluation.plant_nll_global,
    }


def read_rounds(
    audit_log: Path, opened_at: dict[str, float], done_at: dict[str, float]
) -> list[RoundSummary]:
    """Rounds found in the audit log so far, with the evaluations boxes reported (a line the
    aggregator is writing right now waits for the next call)."""
    rounds: dict[str, RoundSummary] = {}
    if not audit_log.exists():
        return []
    sent: dict[str, int] = {}
    for event in read_events(audit_log):
        if isinstance(event, RoundAggregated):
            rounds[event.round_id] = _summary(event, opened_at, done_at)
        elif isinstance(event, EvaluationReceived) and event.round_id in rounds:
            rounds[event.round_id].boxes[event.node_id] = event
        elif isinstance(event, GlobalSent):
            sent[event.round_id] = sent.get(event.round_id, 0) + event.bytes_down
    for round_id, down in sent.items():  # else (older logs): the whole file to every box
        if round_id in rounds:
            rounds[round_id].bytes_down = down
    return list(rounds.values())


def _summary(
    event: RoundAggregated, opened_at: dict[str, float], done_at: dict[str, float]
) -> RoundSummary:
    round_id = event.round_id
    seconds = (
        done_at[round_id] - opened_at[round_id]
        if round_id in opened_at and round_id in done_at
        else None
    )
    return RoundSummary(
        round_id,
        global_version=event.global_version,
        seconds=seconds,
        bytes_up=dict(event.update_bytes),
        dense_fp32_bytes=dict(event.update_dense_fp32_bytes or {}),
        bytes_down=event.global_bytes * len(event.participants),
        strategy=dict(event.strategy),
    )


def round_table(summary: RoundSummary, boxes: tuple[str, ...]) -> str:
    """The per-round table the demo prints."""
    seconds = f"{summary.seconds:.1f} s" if summary.seconds is not None else "?"
    lines = [
        f"round {summary.round_id}: global adapter v{summary.global_version}, {seconds}, "
        f"strategy {summary.strategy.get('strategy')}",
        f"  {'':<8} {'own held-out data (NLL)':^39} {'plant evaluation set (NLL)':^39}",
        f"  {'box':<8} {' '.join(f'{c:>9}' for c in _HEADS)} {'bytes up':>10} {'ratio':>7}",
    ]
    for box in boxes:
        evaluation = summary.boxes.get(box)
        up, ratio = summary.bytes_up.get(box), summary.ratio(box)
        numbers = _box_json(evaluation) if evaluation is not None else {}
        cells = " ".join(_f(numbers.get(key)) for key in _COLUMNS)
        lines.append(
            f"  {box:<8} {cells} "
            f"{up if up is not None else '-':>10} {f'{ratio:.1f}x' if ratio else '-':>7}"
        )
    lines.append(f"  bytes down (global adapter to all boxes): {summary.bytes_down}")
    if (verdict := plant_verdict(summary, boxes)) is not None:
        lines.append(f"  {verdict}")
    return "\n".join(lines)


_COLUMNS = (
    "nll_base",
    "nll_solo",
    "nll_local",
    "nll_global",
    "plant_nll_base",
    "plant_nll_solo",
    "plant_nll_local",
    "plant_nll_global",
)
_HEADS = ("base", "solo", "local", "global") * 2


def plant_verdict(summary: RoundSummary, boxes: tuple[str, ...]) -> str | None:
    """One line: on how many boxes the global adapter beats the solo one plant-wide (the
    local one where no box reported a solo adapter), and by how much on average (None: no
    box scored both on the plant set)."""
    evaluations = [e for box in boxes if (e := summary.boxes.get(box)) is not None]
    solo = [(e.plant_nll_solo, e.plant_nll_global) for e in evaluations]
    local = [(e.plant_nll_local, e.plant_nll_global) for e in evaluations]
    for name, pairs in (("solo (local-only)", solo), ("local", local)):
        gains = [
            other - global_ for other, global_ in pairs if other is not None and global_ is not None
        ]
        if gains:
            better = sum(gain > 0 for gain in gains)
            return (
                f"plant-wide: the global adapter beats the {name} one on {better} of "
                f"{len(gains)} boxes, by {sum(gains) / len(gains):+.4f} nats/token on average"
            )
    return None


def _f(value: float | None) -> str:
    return f"{value:9.4f}" if value is not None else f"{'-':>9}"
