"""What federating buys, per box, for `appliance fleet status`: the latest evaluations.

Each box scores every global adapter it gets on its own held-out data and, when the plant
publishes an evaluation set, on the plant's shared questions too (appliance/edge/plant_set.py).
The aggregator audits each evaluation as the box signed it; this reads the latest one of each
box from the audit log (read-only, while the aggregator writes it) and shows base model,
solo adapter (its own data alone, when the box trains one: `[evaluation] solo_baseline`),
local adapter and global adapter side by side on both. The own-data numbers say how well an
adapter knows the box's line, the plant numbers how well it knows the plant.
"""

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from appliance.federation.audit import read_events
from appliance.federation.audit_events import EvaluationReceived


@dataclass(frozen=True)
class BoxScores:
    """A box's latest evaluation (the newest global version it scored)."""

    box: str
    evaluation: EvaluationReceived

    def as_json(self) -> dict[str, Any]:
        e = self.evaluation
        return {
            "box": self.box,
            "round_id": e.round_id,
            "global_version": e.global_version,
            "nll_base": e.nll_base,
            "nll_solo": e.nll_solo,
            "nll_local": e.nll_local,
            "nll_global": e.nll_global,
            "task_base": e.task_base,
            "task_solo": e.task_solo,
            "task_local": e.task_local,
            "task_global": e.task_global,
            "plant_set_sha256": e.plant_set_sha256,
            "plant_nll_base": e.plant_nll_base,
            "plant_nll_solo": e.plant_nll_solo,
            "plant_nll_local": e.plant_nll_local,
            "plant_nll_global": e.plant_nll_global,
            "plant_task_base": e.plant_task_base,
            "plant_task_solo": e.plant_task_solo,
            "plant_task_local": e.plant_task_local,
            "plant_task_global": e.plant_task_global,
        }


def latest_scores(audit_log: Path) -> list[BoxScores]:
    """Each box's evaluation of the highest global version it reported, by box name (empty
    when the aggregator has not written a log yet)."""
    if not audit_log.exists():
        return []
    latest: dict[str, EvaluationReceived] = {}
    for event in read_events(audit_log):
        if isinstance(event, EvaluationReceived):
            held = latest.get(event.node_id)
            if held is None or event.global_version >= held.global_version:
                latest[event.node_id] = event
    return [BoxScores(box, latest[box]) for box in sorted(latest)]


def render_scores(scores: list[BoxScores]) -> str:
    """The table under the health table: NLL (nats/token, lower is better) of base, solo,
    local and global, on the box's own data and on the plant set ('-': not measured)."""
    if not scores:
        return ""
    rows = [
        (
            "SCORES",
            "GLOBAL",
            "OWN BASE",
            "SOLO",
            "LOCAL",
            "GLOBAL",
            "PLANT BASE",
            "SOLO",
            "LOCAL",
            "GLOBAL",
        ),
        *(
            (
                s.box,
                f"v{s.evaluation.global_version}",
                *(
                    _nll(value)
                    for value in (
                        s.evaluation.nll_base,
                        s.evaluation.nll_solo,
                        s.evaluation.nll_local,
                        s.evaluation.nll_global,
                        s.evaluation.plant_nll_base,
                        s.evaluation.plant_nll_solo,
                        s.evaluation.plant_nll_local,
                        s.evaluation.plant_nll_global,
                    )
                ),
            )
            for s in scores
        ),
    ]
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return "\n".join(
        "  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)) for row in rows
    )


def _nll(value: float | None) -> str:
    return "-" if value is None else f"{value:.4f}"
