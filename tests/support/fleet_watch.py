"""Watch a demo fleet (appliance.demo.fleet layout) from a test: audit, stores, logs, state.

Everything here reads files the daemons write (the audit log, SQLite stores opened read-only,
daemon.log, edge-state.json), so a test can check what the product did without mocks.
`Daemons.wait` polls a condition and fails early, with the daemons' log tails, when a daemon died.
"""

import json
import sqlite3
import subprocess
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from appliance.aggregator.service import AggregatorService
from appliance.config import load_config
from appliance.data.synthetic import line_for, maintenance_records, write_jsonl
from appliance.demo.fleet import AGGREGATOR, FleetLayout
from appliance.demo.run import spawn_node, stop_processes

POLL_S = 0.1
LOG_TAIL = 2500


def read_audit(path: Path, kind: str) -> list[dict[str, Any]]:
    """The `data` of every audit line of one kind, in order (a line the aggregator is
    writing right now is skipped)."""
    if not path.exists():
        return []
    records = []
    for line in path.read_text().splitlines():
        try:
            record = json.loads(line) if line else None
        except json.JSONDecodeError:
            continue
        if record is not None and record["kind"] == kind:
            records.append(record["data"])
    return records


def aggregator_service(layout: FleetLayout) -> AggregatorService:
    """The aggregator of a laid-out fleet in this process, stepped by the test (no broker:
    its transport connects in the background and nothing it checks needs one)."""
    return AggregatorService(load_config(layout.config(AGGREGATOR)))  # type: ignore[arg-type]


def audit_records(layout: FleetLayout, kind: str) -> list[dict[str, Any]]:
    """The `data` of every audit line of one kind, in order."""
    return read_audit(layout.audit_log, kind)


def aggregated(layout: FleetLayout, round_id: str) -> dict[str, Any] | None:
    """The round_aggregated record of a round, if it is in the audit yet."""
    done = [d for d in audit_records(layout, "round_aggregated") if d["round_id"] == round_id]
    assert len(done) <= 1, f"round {round_id} aggregated {len(done)} times: {done}"
    return done[0] if done else None


def evaluations(layout: FleetLayout, box: str, version: int) -> list[dict[str, Any]]:
    """The audit's evaluation records of global adapter `version` by `box`."""
    return [
        e
        for e in audit_records(layout, "evaluation")
        if e["node_id"] == box and e["global_version"] == version
    ]


def _read_only(db: Path, query: str, args: Sequence[object] = ()) -> list[tuple[Any, ...]]:
    """Rows of a query on a daemon's SQLite file; [] while it does not exist or is being made."""
    if not db.exists():
        return []
    try:
        with sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=10) as conn:
            return conn.execute(query, tuple(args)).fetchall()
    except sqlite3.OperationalError:  # the daemon is still creating its tables
        return []


def stored_updates(layout: FleetLayout, round_id: str) -> list[str]:
    """The boxes whose update the aggregator's round store holds for a round (sorted)."""
    db = layout.state_dir(AGGREGATOR) / "rounds.sqlite"
    rows = _read_only(db, "SELECT node_id FROM updates WHERE round_id = ?", (round_id,))
    return sorted(node for (node,) in rows)


def round_state(layout: FleetLayout, round_id: str) -> str | None:
    """The round's state in the aggregator's store (open, closed, aggregated, abandoned)."""
    db = layout.state_dir(AGGREGATOR) / "rounds.sqlite"
    rows = _read_only(db, "SELECT state FROM rounds WHERE round_id = ?", (round_id,))
    return str(rows[0][0]) if rows else None


def outbox_depth(layout: FleetLayout, node: str) -> int:
    """Entries still in a node's durable outbox (messages not PUBACKed, artifacts not acked)."""
    db = layout.state_dir(node) / "transport" / "outbox.sqlite"
    rows = _read_only(db, "SELECT COUNT(*) FROM entries")
    return int(rows[0][0]) if rows else 0


def edge_state(layout: FleetLayout, box: str) -> dict[str, Any]:
    """A box's durable state (edge-state.json): what it serves, the rounds it did."""
    path = layout.state_dir(box) / "edge-state.json"
    try:
        return json.loads(path.read_text()) if path.exists() else {}
    except json.JSONDecodeError:  # replaced atomically, but be safe against a torn read
        return {}


def serving(layout: FleetLayout, box: str) -> int | None:
    """The global adapter version a box serves (None: the base model)."""
    return edge_state(layout, box).get("active_version")


def daemon_log(layout: FleetLayout, node: str) -> str:
    """Everything a daemon logged (all its runs)."""
    path = layout.root / node / "daemon.log"
    return path.read_text(errors="replace") if path.exists() else ""


def log_count(layout: FleetLayout, node: str, text: str) -> int:
    """How many lines of a daemon's log contain `text`."""
    return sum(text in line for line in daemon_log(layout, node).splitlines())


def resize_spool(layout: FleetLayout, box: str, records: int) -> None:
    """Give a box another amount of plant data (more data: longer training), before it starts."""
    index = layout.boxes.index(box)
    path = layout.root / box / "spool" / "plant-data.jsonl"
    write_jsonl(path, maintenance_records(line_for(index), records, seed=index))


def log_tails(layout: FleetLayout) -> str:
    """The end of every daemon's log, for an assertion message."""
    return "\n".join(
        f"--- {node} ---\n{daemon_log(layout, node)[-LOG_TAIL:]}"
        for node in (AGGREGATOR, *layout.boxes)
    )


@dataclass
class Daemons:
    """The daemons of one fleet as a test started them, by node name."""

    layout: FleetLayout
    processes: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)

    def spawn(self, node: str, *, prefix: tuple[str, ...] = ()) -> None:
        """Start a node's daemon (`prefix` wraps its command, e.g. `ip netns exec NS`)."""
        self.processes[node] = spawn_node(self.layout, node, prefix=prefix)

    def stop(self) -> None:
        """SIGTERM to all at once; killed when they do not stop in time."""
        stop_processes(list(self.processes.values()))

    def assert_running(self) -> None:
        """Every daemon is still running."""
        dead = {n: p.returncode for n, p in self.processes.items() if p.poll() is not None}
        assert not dead, f"daemons exited: {dead}\n{log_tails(self.layout)}"

    def wait(
        self,
        condition: Callable[[], object],
        what: str,
        timeout_s: float,
        *,
        poll_s: float = POLL_S,
    ) -> None:
        """Poll `condition` until it holds; fail when a daemon exits or time runs out."""
        deadline = time.monotonic() + timeout_s
        while not condition():
            self.assert_running()
            assert time.monotonic() < deadline, (
                f"timed out after {timeout_s:.0f} s waiting for {what}\n{log_tails(self.layout)}"
            )
            time.sleep(poll_s)
