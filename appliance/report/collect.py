"""Read what the aggregator recorded into the report's two tables: rounds and (round, box).

Everything comes from the aggregator's state directory and nothing is estimated: the round
store gives when rounds opened and closed and which updates arrived (with their sizes), the
audit log gives each new global adapter and every box's evaluation (held-out NLL and exact
match for the base model, the box's own local adapter and the global one; the box's training
time), the rollout store whether a candidate was promoted, and the fleet health store the
energy counters. A number a box did not report stays empty.

The stores are read through their own read-only queries and the audit log as typed events
(appliance/federation/audit_events.py), so the report holds no copy of their schemas; only
the energy window (appliance/report/energy.py) still queries the fleet health store itself.
"""

import sqlite3
from contextlib import closing
from dataclasses import dataclass, field
from pathlib import Path

from appliance.config.layouts import AggregatorLayout
from appliance.errors import ApplianceError
from appliance.federation.audit import AuditError, read_events
from appliance.federation.audit_events import EvaluationReceived, GlobalSent, RoundAggregated
from appliance.federation.rounds import RoundStore
from appliance.report.energy import window_energy
from appliance.rollout.store import RolloutStore
from appliance.system.sqlite import StoreOpenError, open_db


class ReportError(ApplianceError):
    """The aggregator's records cannot be read; the message says which and where."""


@dataclass
class Cell:
    """One box in one round."""

    round_seq: int
    round_id: str
    box: str
    invited: bool = False
    participated: bool = False
    bytes_up: int | None = None
    bytes_down: int | None = None
    train_seconds: float | None = None
    energy_j: float | None = None
    energy_source: str | None = None
    nll_base: float | None = None
    nll_local: float | None = None
    nll_global: float | None = None
    task_base: float | None = None
    task_local: float | None = None
    task_global: float | None = None
    task_records: int | None = None
    activated: bool | None = None
    plant_set_sha256: str | None = None
    plant_tokens: int | None = None
    plant_nll_base: float | None = None
    plant_nll_local: float | None = None
    plant_nll_global: float | None = None
    plant_task_records: int | None = None
    plant_task_base: float | None = None
    plant_task_local: float | None = None
    plant_task_global: float | None = None
    nll_solo: float | None = None
    """The box's solo baseline (its own data alone, never a global adapter), when it
    trains one: held-out NLL..."""
    task_solo: float | None = None
    plant_nll_solo: float | None = None
    plant_task_solo: float | None = None

    @property
    def nll_gain(self) -> float | None:
        """Held-out NLL the global adapter saves against the base model (nats per token)."""
        if self.nll_base is None or self.nll_global is None:
            return None
        return self.nll_base - self.nll_global

    @property
    def task_gain(self) -> float | None:
        """Exact-match rate the global adapter adds to the base model's."""
        if self.task_base is None or self.task_global is None:
            return None
        return self.task_global - self.task_base

    @property
    def plant_nll_gain(self) -> float | None:
        """Held-out NLL the global adapter saves on the plant-wide evaluation set."""
        if self.plant_nll_base is None or self.plant_nll_global is None:
            return None
        return self.plant_nll_base - self.plant_nll_global

    @property
    def plant_nll_gain_over_solo(self) -> float | None:
        """Plant-wide NLL the global adapter saves against the box's solo baseline: what
        federating buys over training alone (None: no solo baseline reported)."""
        if self.plant_nll_solo is None or self.plant_nll_global is None:
            return None
        return self.plant_nll_solo - self.plant_nll_global

    @property
    def plant_task_gain(self) -> float | None:
        """Exact-match rate the global adapter adds on the plant-wide evaluation set."""
        if self.plant_task_base is None or self.plant_task_global is None:
            return None
        return self.plant_task_global - self.plant_task_base


@dataclass
class RoundRow:
    """One round, fleet-wide."""

    seq: int
    round_id: str
    state: str
    opened_at: float
    closed_at: float | None
    invited: list[str]
    participants: list[str] = field(default_factory=list)
    global_version: int | None = None
    global_bytes: int | None = None
    rollout: str | None = None
    rollout_reason: str | None = None

    @property
    def seconds(self) -> float | None:
        """Wall time from opening to closing."""
        return None if self.closed_at is None else self.closed_at - self.opened_at


@dataclass
class ReportData:
    """Everything the report shows."""

    plant: str
    boxes: list[str]
    rounds: list[RoundRow]
    cells: list[Cell]

    def cell(self, round_id: str, box: str) -> Cell:
        """The cell of a box in a round."""
        return next(c for c in self.cells if c.round_id == round_id and c.box == box)


def collect(state_dir: Path, plant: str) -> ReportData:
    """Read the aggregator's records in `state_dir`."""
    layout = AggregatorLayout(state_dir)
    rounds_db = layout.rounds_db
    if not rounds_db.exists():
        raise ReportError(f"no round store at {rounds_db}; has the aggregator run yet?")
    rounds, updates = _read_round_store(rounds_db)
    aggregated, evaluations, sent = _read_audit(layout.audit_log)
    stages = _read_rollouts(layout.rollout_db)
    boxes = sorted(
        {b for r in rounds for b in r.invited} | {e.node_id for e in evaluations.values()}
    )
    cells = []
    for row in rounds:
        made = aggregated.get(row.round_id)
        if made is not None:
            row.global_version = made.global_version
            row.global_bytes = made.global_bytes
            row.participants = sorted(made.participants)
            row.rollout, row.rollout_reason = stages.get(made.global_version, (None, None))
        for box in boxes:
            cell = Cell(row.seq, row.round_id, box, invited=box in row.invited)
            size, _received = updates.get((row.round_id, box), (None, None))
            cell.participated = size is not None
            cell.bytes_up = size
            evaluation = evaluations.get((row.round_id, box))
            if evaluation is not None:
                _add_evaluation(cell, evaluation)
                cell.bytes_down = sent.get((row.round_id, box), row.global_bytes)
            cells.append(cell)
    _add_energy(layout.fleet_health_db, rounds, updates, cells)
    return ReportData(plant, boxes, rounds, cells)


_EVALUATION_FIELDS = (
    "nll_base", "nll_local", "nll_global", "train_seconds", "task_base", "task_local",
    "task_global", "task_records", "activated", "plant_set_sha256", "plant_tokens",
    "plant_nll_base", "plant_nll_local", "plant_nll_global", "plant_task_records",
    "plant_task_base", "plant_task_local", "plant_task_global", "nll_solo", "task_solo",
    "plant_nll_solo", "plant_task_solo",
)  # fmt: skip
"""The evaluation's numbers a cell carries, under the same names."""


def _add_evaluation(cell: Cell, evaluation: EvaluationReceived) -> None:
    """Copy a box's evaluation into its cell (a field an older box does not send is None
    in the event, so it stays empty here)."""
    for name in _EVALUATION_FIELDS:
        setattr(cell, name, getattr(evaluation, name))


def _read_round_store(
    path: Path,
) -> tuple[list[RoundRow], dict[tuple[str, str], tuple[int, float]]]:
    """Rounds oldest first, and each accepted update's size and arrival by (round, box)."""
    try:
        with closing(RoundStore(path, read_only=True)) as store:
            history, arrivals = store.history(), store.arrivals()
    except (StoreOpenError, sqlite3.DatabaseError, ValueError) as exc:
        raise ReportError(f"{path}: cannot be read as a round store: {exc}") from None
    rounds = [
        RoundRow(r.seq, r.round_id, r.state.value, r.opened_at, closed_at, list(r.participants))
        for r, closed_at in history
    ]
    return rounds, arrivals


Sent = dict[tuple[str, str], int]
"""Bytes of global adapter queued for each (round, box): a delta or the whole file."""


def _read_audit(
    path: Path,
) -> tuple[dict[str, RoundAggregated], dict[tuple[str, str], EvaluationReceived], Sent]:
    """New global adapters by round, each box's first evaluation per round, and what each
    box was sent down (older logs have no `global_sent`: the whole file is assumed)."""
    aggregated: dict[str, RoundAggregated] = {}
    evaluations: dict[tuple[str, str], EvaluationReceived] = {}
    sent: Sent = {}
    if not path.exists():
        raise ReportError(f"no audit log at {path}; has the aggregator run yet?")
    try:
        for event in read_events(path):
            if isinstance(event, RoundAggregated):
                aggregated[event.round_id] = event
            elif isinstance(event, EvaluationReceived):
                evaluations.setdefault((event.round_id, event.node_id), event)
            elif isinstance(event, GlobalSent):
                _add_sent(sent, event)
    except AuditError as exc:
        raise ReportError(
            f"not a readable audit record: {exc}; check the file with `appliance audit verify`"
        ) from None
    return aggregated, evaluations, sent


def _add_sent(sent: Sent, event: GlobalSent) -> None:
    for box in event.delta_to:
        key = (event.round_id, box)
        sent[key] = sent.get(key, 0) + (event.delta_bytes or 0)
    for box in event.full_to:
        key = (event.round_id, box)
        sent[key] = sent.get(key, 0) + event.full_bytes


def _read_rollouts(path: Path) -> dict[int, tuple[str, str | None]]:
    """Each candidate's stage and the reason of its decision, by version."""
    if not path.exists():
        return {}
    try:
        with closing(RolloutStore(path, read_only=True)) as store:
            rows = store.all()
    except (StoreOpenError, sqlite3.DatabaseError, ValueError) as exc:
        raise ReportError(f"{path}: cannot be read as a rollout store: {exc}") from None
    return {row.version: (row.stage.value, row.reason) for row in rows}


def _add_energy(
    path: Path,
    rounds: list[RoundRow],
    updates: dict[tuple[str, str], tuple[int, float]],
    cells: list[Cell],
) -> None:
    """Energy from the round's opening to the box's update: what its training cost."""
    if not path.exists():
        return
    opened = {r.round_id: r.opened_at for r in rounds}
    try:
        with closing(open_db(path, read_only=True)) as db:
            for cell in cells:
                arrival = updates.get((cell.round_id, cell.box))
                if arrival is None:
                    continue
                start, end = int(opened[cell.round_id] * 1000), int(arrival[1] * 1000)
                energy = window_energy(db, cell.box, start, end)
                if energy is not None:
                    cell.energy_j, cell.energy_source = energy.joules, energy.source
    except (StoreOpenError, sqlite3.DatabaseError) as exc:
        raise ReportError(f"{path}: cannot be read as a fleet health store: {exc}") from None
