"""Read the demo's results from the aggregator's audit log and print them per round."""

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


@dataclass
class RoundSummary:
    """One round as the demo reports it."""

    round_id: str
    global_version: int = 0
    seconds: float | None = None
    bytes_up: dict[str, int] = field(default_factory=dict)
    dense_fp32_bytes: dict[str, int] = field(default_factory=dict)
    bytes_down: int = 0
    strategy: dict[str, Any] = field(default_factory=dict)
    boxes: dict[str, dict[str, float | None]] = field(default_factory=dict)

    def as_json(self) -> dict[str, Any]:
        ratio = {b: self.dense_fp32_bytes[b] / n for b, n in self.bytes_up.items() if n}
        return {
            "round_id": self.round_id,
            "global_version": self.global_version,
            "seconds": self.seconds,
            "bytes_up": self.bytes_up,
            "bytes_down": self.bytes_down,
            "compression_ratio": ratio,
            "strategy": self.strategy,
            "boxes": self.boxes,
        }


def read_rounds(
    audit_log: Path, opened_at: dict[str, float], done_at: dict[str, float]
) -> list[RoundSummary]:
    """Rounds found in the audit log so far, with the evaluations boxes reported."""
    rounds: dict[str, RoundSummary] = {}
    if not audit_log.exists():
        return []
    for line in audit_log.read_text().splitlines():
        record = json.loads(line)
        data = record["data"]
        kind = record["kind"]
        if kind == "round_aggregated":
            summary = rounds.setdefault(data["round_id"], RoundSummary(data["round_id"]))
            summary.global_version = data["global_version"]
            summary.bytes_up = data["update_bytes"]
            summary.dense_fp32_bytes = data["update_dense_fp32_bytes"]
            summary.bytes_down = data["global_bytes"] * len(data["participants"])
            summary.strategy = data["strategy"]
            if data["round_id"] in opened_at and data["round_id"] in done_at:
                summary.seconds = done_at[data["round_id"]] - opened_at[data["round_id"]]
        elif kind == "evaluation" and data["round_id"] in rounds:
            rounds[data["round_id"]].boxes[data["node_id"]] = {
                "nll_base": data["nll_base"],
                "nll_local": data["nll_local"],
                "nll_global": data["nll_global"],
            }
    return list(rounds.values())


def round_table(summary: RoundSummary, boxes: tuple[str, ...]) -> str:
    """The per-round table the demo prints."""
    seconds = f"{summary.seconds:.1f} s" if summary.seconds is not None else "?"
    lines = [
        f"round {summary.round_id}: global adapter v{summary.global_version}, {seconds}, "
        f"strategy {summary.strategy.get('strategy')}",
        f"  {'box':<8} {'NLL base':>9} {'local':>9} {'global':>9} {'bytes up':>10} {'ratio':>7}",
    ]
    for box in boxes:
        numbers = summary.boxes.get(box, {})
        up = summary.bytes_up.get(box)
        ratio = summary.dense_fp32_bytes.get(box, 0) / up if up else None
        lines.append(
            f"  {box:<8} {_f(numbers.get('nll_base'))} {_f(numbers.get('nll_local'))} "
            f"{_f(numbers.get('nll_global'))} {up if up is not None else '-':>10} "
            f"{f'{ratio:.1f}x' if ratio else '-':>7}"
        )
    lines.append(f"  bytes down (global adapter to every box): {summary.bytes_down}")
    return "\n".join(lines)


def _f(value: float | None) -> str:
    return f"{value:9.4f}" if value is not None else f"{'-':>9}"
