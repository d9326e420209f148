"""The report's numbers as CSV files and as a short summary for the terminal.

The CSV files carry exactly the numbers the charts show (one row per round, one per round and
box); an empty field means the box did not report that number.
"""

import csv
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from appliance.report.collect import Cell, ReportData

BOX_COLUMNS = (
    "round", "round_id", "box", "invited", "participated", "bytes_up", "bytes_down",
    "train_seconds", "energy_j", "energy_source", "nll_base", "nll_local", "nll_global",
    "nll_gain", "task_base", "task_global", "task_gain", "task_records", "activated",
    "task_local", "plant_set_sha256", "plant_tokens", "plant_nll_base", "plant_nll_local",
    "plant_nll_global", "plant_nll_gain", "plant_task_records", "plant_task_base",
    "plant_task_local", "plant_task_global", "plant_task_gain",
)  # fmt: skip
ROUND_COLUMNS = (
    "round", "round_id", "state", "opened_utc", "seconds", "invited", "participants",
    "global_version", "global_bytes", "bytes_up_total", "bytes_down_total", "rollout",
    "rollout_reason",
)  # fmt: skip


def _field(value: object) -> object:
    return "" if value is None else value


def box_rows(data: ReportData) -> list[dict[str, object]]:
    """One row per round and box."""
    rows = []
    for cell in sorted(data.cells, key=lambda c: (c.round_seq, c.box)):
        values: dict[str, object] = {
            "round": cell.round_seq,
            "round_id": cell.round_id,
            "box": cell.box,
            "invited": cell.invited,
            "participated": cell.participated,
            "nll_gain": cell.nll_gain,
            "task_gain": cell.task_gain,
        }
        for name in BOX_COLUMNS:
            if name not in values:
                values[name] = getattr(cell, name)
        rows.append({k: _field(values[k]) for k in BOX_COLUMNS})
    return rows


def round_rows(data: ReportData) -> list[dict[str, object]]:
    """One row per round."""
    rows = []
    for row in data.rounds:
        cells = [c for c in data.cells if c.round_id == row.round_id]
        values = {
            "round": row.seq,
            "round_id": row.round_id,
            "state": row.state,
            "opened_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(row.opened_at)),
            "seconds": None if row.seconds is None else round(row.seconds, 3),
            "invited": " ".join(row.invited),
            "participants": " ".join(row.participants),
            "global_version": row.global_version,
            "global_bytes": row.global_bytes,
            "bytes_up_total": sum(c.bytes_up or 0 for c in cells),
            "bytes_down_total": sum(c.bytes_down or 0 for c in cells),
            "rollout": row.rollout,
            "rollout_reason": row.rollout_reason,
        }
        rows.append({k: _field(values[k]) for k in ROUND_COLUMNS})
    return rows


def write_csv(path: Path, columns: tuple[str, ...], rows: list[dict[str, object]]) -> Path:
    """Write rows with a header line."""
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)
    return path


def _total(cells: list[Cell], name: str) -> float | None:
    values = [getattr(c, name) for c in cells if getattr(c, name) is not None]
    return sum(values) if values else None


def summary(data: ReportData) -> dict[str, Any]:
    """The headline numbers, per box and for the fleet."""
    boxes = {}
    for box in data.boxes:
        cells = sorted((c for c in data.cells if c.box == box), key=lambda c: c.round_seq)
        gains = [c for c in cells if c.nll_gain is not None]
        boxes[box] = {
            "rounds_participated": sum(c.participated for c in cells),
            "first_nll_gain": gains[0].nll_gain if gains else None,
            "last_nll_gain": gains[-1].nll_gain if gains else None,
            "last_task_gain": next(
                (c.task_gain for c in reversed(cells) if c.task_gain is not None), None
            ),
            "bytes_up": sum(c.bytes_up or 0 for c in cells),
            "bytes_down": sum(c.bytes_down or 0 for c in cells),
            "train_seconds": _total(cells, "train_seconds"),
            "energy_j": _total(cells, "energy_j"),
        }
    last = [b["last_nll_gain"] for b in boxes.values() if b["last_nll_gain"] is not None]
    versions = [r.global_version for r in data.rounds if r.global_version is not None]
    return {
        "plant": data.plant,
        "rounds": len(data.rounds),
        "rounds_aggregated": len(versions),
        "latest_global_version": max(versions, default=None),
        "rejected_versions": [
            r.global_version for r in data.rounds if r.rollout in ("rejected", "rolled_back")
        ],
        "fleet_mean_last_nll_gain": sum(last) / len(last) if last else None,
        "bytes_up": sum(b["bytes_up"] for b in boxes.values()),
        "bytes_down": sum(b["bytes_down"] for b in boxes.values()),
        "boxes": boxes,
    }


def _num(value: float | None, spec: str, unit: str = "") -> str:
    return "not reported" if value is None else f"{value:{spec}}{unit}"


def summary_text(result: dict[str, Any], files: list[Path], roi: Sequence[str] = ()) -> str:
    """A few lines for the terminal (`roi`: the return-on-investment lines)."""
    lines = [
        f"plant {result['plant']}: {result['rounds']} rounds, {result['rounds_aggregated']} "
        f"global adapters (latest v{result['latest_global_version']}), "
        f"{len(result['boxes'])} boxes",
        f"{'box':<12} {'rounds':>6} {'NLL gain first->last':>22} {'exact match':>12} "
        f"{'train s':>9} {'energy':>13} {'bytes up':>10}",
    ]
    for box, b in result["boxes"].items():
        gain = f"{_num(b['first_nll_gain'], '.3f')} -> {_num(b['last_nll_gain'], '.3f')}"
        if b["first_nll_gain"] is None:
            gain = "not reported"
        lines.append(
            f"{box:<12} {b['rounds_participated']:>6} {gain:>22} "
            f"{_num(b['last_task_gain'], '+.1%'):>12} {_num(b['train_seconds'], '.1f'):>9} "
            f"{_num(b['energy_j'], '.0f', ' J'):>13} {b['bytes_up']:>10}"
        )
    mean = result["fleet_mean_last_nll_gain"]
    lines.append(
        f"fleet: mean held-out NLL gain against the base model {_num(mean, '.3f')} nats/token; "
        f"{result['bytes_up']} bytes up, {result['bytes_down']} bytes down"
    )
    if result["rejected_versions"]:
        rejected = ", ".join(f"v{v}" for v in result["rejected_versions"])
        lines.append(f"stopped before reaching the fleet: {rejected}")
    lines.extend(roi)
    lines.append("wrote " + ", ".join(str(f) for f in files))
    return "\n".join(lines)
